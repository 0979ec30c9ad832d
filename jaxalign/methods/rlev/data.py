"""RLEV's data: the train/eval splits of a config's dataset and the values training uses (ground truth,
the weak difficulty buckets, or a model's predicted points)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, MutableMapping, Sequence

import numpy as np

from jaxalign.data import load_rows, parse_rows, weak_value
from jaxalign.methods.rlev.config import HUB_DATASETS, RLEVConfig
from jaxalign.methods.rlev.exam import make_exam_set
from jaxalign.methods.rlev.prompts import SCORE_PREDICTOR_SYSTEM_PROMPT
from jaxalign.train.samples import Example

# Value prediction


def score_predictor_messages(question: str, total: float) -> list[dict[str, str]]:
    """Chat messages asking a model for a question's points out of an exam's `total`."""
    total_text = f"{total:g}"
    return [
        {"role": "system", "content": SCORE_PREDICTOR_SYSTEM_PROMPT.format(total=total_text)},
        {"role": "user", "content": question},
    ]


_FIRST_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
MIN_SCORE_FRACTION = 1e-3
"""Predicted scores are clipped to [MIN_SCORE_FRACTION * total, total], i.e. into (0, total]."""


def parse_predicted_score(reply: str, total: float) -> float | None:
    """The first number of the predictor's reply clipped into (0, total], or None if it has none."""
    match = _FIRST_NUMBER_RE.search(reply)
    if match is None:
        return None
    return float(np.clip(float(match.group()), MIN_SCORE_FRACTION * total, total))


class ScorePredictor:
    """Predicts question values with a model through the sampler (`generate_text(prompts, sp, key, chat)`)."""

    def __init__(self, sampler: Any, sampling_params: Any, key: Any):
        if not hasattr(sampler, "generate_text"):
            raise TypeError(f"sampler {type(sampler).__name__} has no generate_text method")
        self.sampler, self.sampling_params, self.key = sampler, sampling_params, key

    def predict(self, questions: Sequence[str], totals: Sequence[float]) -> list[float | None]:
        """Predicted scores (not yet divided by the total); None where the reply had no number."""
        prompts = [score_predictor_messages(q, t) for q, t in zip(questions, totals)]
        replies = self.sampler.generate_text(prompts, self.sampling_params, self.key, chat=True)
        return [parse_predicted_score(r[0] if r else "", t) for r, t in zip(replies, totals)]


PREDICTOR_MAX_NEW_TOKENS = 12
"""Reply length of the value predictor (greedy): a number needs a few tokens."""


def build_score_predictor(spec: str, *, mesh: Any = None, max_prompt_len: int = 1024, key: Any = None,
                          dtype: str = "bfloat16") -> ScorePredictor:
    """A `ScorePredictor` over a model of its own (`rlev.predictor_model`): `load_model(spec, mesh=mesh,
    role="sample")` run by its own `jaxalign.rollout.Sampler`, greedy, `PREDICTOR_MAX_NEW_TOKENS` new tokens.
    jax is imported here, not at module import."""
    import jax

    from jaxalign.models import load_model
    from jaxalign.rollout import Sampler, SamplingParams

    model, tokenizer = load_model(spec, mesh=mesh, role="sample", param_dtype=dtype, dtype=dtype)
    if tokenizer is None:
        raise ValueError(f"rlev.predictor_model {spec!r} has no tokenizer, and the predictor reads text: use an "
                         "HF model directory with tokenizer files, a .gguf file or smollm2-135m-instruct")
    max_prompt_len = min(max_prompt_len, model.cfg.max_position_embeddings - PREDICTOR_MAX_NEW_TOKENS)
    sampler = Sampler(model, tokenizer, mesh=mesh, max_prompt_len=max_prompt_len, cache_dtype=dtype)
    del model  # the sampler holds its own copy of the weights
    sampling_params = SamplingParams(max_new_tokens=PREDICTOR_MAX_NEW_TOKENS, greedy=True, n=1)
    return ScorePredictor(sampler, sampling_params, jax.random.key(0) if key is None else key)


# Splits


def _take(examples: list[Example], count: int) -> list[Example]:
    return examples if count == 0 else examples[:count]


def load_splits(cfg: RLEVConfig, report: MutableMapping[str, Any]) -> tuple[list[Example], list[Example]]:
    """(train, held_out) examples of `cfg.dataset`, cut to `num_train`/`num_eval`; for a loaded dataset,
    each split's parse report goes to `report["rows"]`."""
    if cfg.dataset == "embedded":
        return make_exam_set(cfg.seed, cfg.num_train, cfg.num_eval)
    source, schema = HUB_DATASETS.get(cfg.dataset, (cfg.dataset, cfg.schema))
    rows_report: dict[str, Any] = {}

    def parse(rows, split):
        examples, parse_report = parse_rows(rows, schema, skip_invalid=cfg.skip_invalid,
                                            source=cfg.dataset if cfg.dataset in HUB_DATASETS else None)
        rows_report[split] = dataclasses.asdict(parse_report)
        return examples

    if cfg.eval_dataset is not None:
        train = parse(load_rows(source, split=cfg.train_split, name=cfg.hub_config), "train")
        held_out = parse(load_rows(cfg.eval_dataset, split=cfg.eval_split, name=cfg.hub_config), "eval")
    elif os.path.isfile(source):
        examples = parse(load_rows(source), "file")
        order = np.random.default_rng(cfg.seed).permutation(len(examples))
        num_eval = cfg.num_eval or max(1, len(examples) // 10)
        if num_eval >= len(examples):
            raise ValueError(f"rlev: {source!r} has {len(examples)} valid rows, too few to hold out {num_eval}")
        held_out = [examples[i] for i in order[:num_eval]]
        train = [examples[i] for i in order[num_eval:]]
    else:
        train = parse(load_rows(source, split=cfg.train_split, name=cfg.hub_config), "train")
        held_out = parse(load_rows(source, split=cfg.eval_split, name=cfg.hub_config), "eval")
    report["rows"] = rows_report
    return _take(train, cfg.num_train), _take(held_out, cfg.num_eval)


# Training values


def training_values(cfg: RLEVConfig, train: Sequence[Example], score_predictor: ScorePredictor | None,
                    report: MutableMapping[str, Any]) -> np.ndarray:
    """float64 [len(train)]: the value of each training example under `cfg.value_source`. Predicted values
    need `score_predictor`; a reply without a number gets the median of the parsed ones, and
    `report["predicted_values"]` counts those failures."""
    source = cfg.value_source
    if source == "ground_truth":
        return np.array([example["value"] for example in train], np.float64)
    if source == "weak":
        missing = [i for i, example in enumerate(train) if "difficulty" not in example]
        if missing:
            raise ValueError(
                f"rlev.value_source='weak' needs a 'difficulty' label on every example; training example "
                f"{missing[0]} (and {len(missing) - 1} more) has none")
        return np.array([weak_value(example["difficulty"]) for example in train], np.float64)
    if score_predictor is None:
        raise ValueError(
            "rlev.value_source='predicted' needs a model: set rlev.predictor_model, or the method takes the "
            "policy's sampler in setup(agents) (or method.use_sampler(sampler), or pass score_predictor=...) "
            "before load_data")
    totals = [float(example["total"]) for example in train]
    scores = score_predictor.predict([example["prompt"] for example in train], totals)
    failed = sum(score is None for score in scores)
    parsed = [s / t for s, t in zip(scores, totals) if s is not None]
    fallback = float(np.median(parsed)) if parsed else 1.0 / len(train)
    report["predicted_values"] = {"failed": failed, "fallback_value": fallback}
    return np.array([fallback if s is None else s / t for s, t in zip(scores, totals)], np.float64)
