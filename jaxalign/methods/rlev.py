"""RLEV: reinforcement learning with explicit human values (Yu et al., 2025).

Each prompt x carries a human value v(x) in (0, 1]: its points' share of its exam's total. The reward of a
response y is

    r(x, y) = s(x) * 1[y correct],     s(x) = 1 + min(alpha * v(x), 1),     alpha = 10 by default,

so correct answers earn between 1 and 2, more for questions that matter more. Ablations (config `reward`):
"correctness" (s = 1, the RLVR baseline), "uniform" (every correct answer gets the training set's mean s),
"random" (values shuffled across the training set with a fixed seed) and "multiplicative" (s = 1 + alpha*v,
unclipped). Value sources (config `value_source`): "ground_truth" (score / total), "weak" (the paper's
difficulty buckets) and "predicted" (a model asked for the question's points, see `ScorePredictor`).

Verification (config `verifier`): "rule" (answer extraction + math equivalence in the reward pool), "model"
(a judge model says YES/NO on the response's final step against the reference, as in the paper) or
"rule_or_model" (the rules first; the judge only for samples they cannot decide: no extractable answer, or
a mismatch against a non-numeric reference). The judge is `rlev.judge_model`, loaded on the policy's mesh
with its own sampler when the loop calls `attach_sampler`; the policy's weights never judge.

Choice of estimator. s(x) is constant within a prompt's group of samples, so GRPO with per-group std
normalisation cancels it exactly: (s*c_i - mean(s*c)) / std(s*c) = (c_i - mean(c)) / std(c). With that
estimator RLEV is the correctness baseline. The RLEV configs therefore use REINFORCE++ (advantages whitened
over the whole batch, so prompts keep their relative scale), RLOO (leave-one-out baseline, no division)
or GRPO without the std division (Dr.GRPO-style).

Evaluation metrics (percentages, as in the paper): Acc; H-Acc = sum of v over correct responses / sum of v
over all responses; mean response length in tokens; value density = H-Acc% / mean length; accuracy on the
top-20% and bottom-20% value prompts. `eos_probability_by_value` supports the paper's EOS analysis.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.data import load_rows, make_exam_set, parse_rows, weak_value
from jaxalign.methods.base import Example, FeatureFn, Method, config_section, register
from jaxalign.methods.rlev_prompts import POLICY_SYSTEM_PROMPT, SCORE_PREDICTOR_SYSTEM_PROMPT
from jaxalign.rewards.judges import EquivalenceJudge, build_model_judge, judge_correctness, rule_features
from jaxalign.rewards.verifiers import correctness_features

REWARD_MODES = ("human", "correctness", "uniform", "random", "multiplicative")
VALUE_SOURCES = ("ground_truth", "weak", "predicted")
VERIFIERS = ("rule", "model", "rule_or_model")
JUDGE_DTYPES = ("bfloat16", "float16", "float32")
HUB_DATASETS = {"rlev": ("sarosavo/RLEV", "rlev"), "webinstruct": ("TIGER-Lab/WebInstruct-verified", "webinstruct")}
_REWARD_ALIASES = {"human_aligned": "human", "baseline": "correctness"}
_DATASET_ALIASES = {"embedded": "embedded_exam"}


# ---------------------------------------------------------------------------------------------------------
# Reward maths (pure, jittable)


def value_scale(value_n: jax.Array, *, mode: str, alpha: float, uniform_scale: float = 1.0) -> jax.Array:
    """The scale s(x) per sample for a reward mode (see the module docstring)."""
    value_n = jnp.asarray(value_n, jnp.float32)
    if mode in ("human", "random"):  # "random" differs only in which values the examples carry
        return 1.0 + jnp.minimum(alpha * value_n, 1.0)
    if mode == "multiplicative":
        return 1.0 + alpha * value_n
    if mode == "correctness":
        return jnp.ones_like(value_n)
    if mode == "uniform":
        return jnp.full_like(value_n, uniform_scale)
    raise ValueError(f"unknown RLEV reward mode {mode!r}; known: {', '.join(REWARD_MODES)}")


@functools.partial(jax.jit, static_argnames=("mode",))
def rlev_rewards(
    correct_n: jax.Array, value_n: jax.Array, alpha: float, uniform_scale: float, *, mode: str
) -> tuple[jax.Array, jax.Array]:
    """(rewards_n, scale_n) with rewards_n = s(x) * correct; a NaN `correct` (failed verifier) counts as 0."""
    correct_n = jnp.nan_to_num(jnp.asarray(correct_n, jnp.float32), nan=0.0)
    scale_n = value_scale(value_n, mode=mode, alpha=alpha, uniform_scale=uniform_scale)
    return scale_n * correct_n, scale_n


# ---------------------------------------------------------------------------------------------------------
# Metrics (NumPy, host side)


def value_extreme_masks(value_n: np.ndarray, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the `fraction` highest- and lowest-value samples (at least one each; stable on ties)."""
    value_n = np.asarray(value_n, np.float64)
    count = max(1, int(round(fraction * len(value_n))))
    order = np.argsort(value_n, kind="stable")
    top, bottom = np.zeros(len(value_n), bool), np.zeros(len(value_n), bool)
    top[order[-count:]] = True
    bottom[order[:count]] = True
    return top, bottom


def rlev_metrics(correct_n: np.ndarray, value_n: np.ndarray, lengths_n: np.ndarray) -> dict[str, float]:
    """Acc, H-Acc, response length, value density and top/bottom-20%-value accuracy (percentages)."""
    correct_n = np.nan_to_num(np.asarray(correct_n, np.float64), nan=0.0)
    value_n = np.asarray(value_n, np.float64)
    lengths_n = np.asarray(lengths_n, np.float64)
    if not len(correct_n) == len(value_n) == len(lengths_n) or len(correct_n) == 0:
        raise ValueError(
            f"metrics need equal, non-zero numbers of samples; got correct {len(correct_n)}, values "
            f"{len(value_n)}, lengths {len(lengths_n)}"
        )
    acc = 100.0 * correct_n.mean()
    h_acc = 100.0 * float((value_n * correct_n).sum() / value_n.sum())
    mean_length = float(lengths_n.mean())
    top, bottom = value_extreme_masks(value_n)
    return {
        "acc": float(acc),
        "h_acc": h_acc,
        "resp_length": mean_length,
        "value_density": h_acc / mean_length if mean_length > 0 else float("nan"),
        "acc_top20_value": float(100.0 * correct_n[top].mean()),
        "acc_bottom20_value": float(100.0 * correct_n[bottom].mean()),
    }


@dataclasses.dataclass(frozen=True)
class EOSByValue:
    """Mean EOS probability per value bucket (rows: lowest to highest value), overall and per position bin."""

    bucket_edges: np.ndarray  # [num_buckets + 1] value quantiles
    mean_eos_prob_b: np.ndarray  # [num_buckets]
    mean_eos_prob_bp: np.ndarray  # [num_buckets, num_position_bins]; position = token index / response length
    num_samples_b: np.ndarray


def eos_probability_by_value(
    eos_prob_nt: np.ndarray, mask_nt: np.ndarray, value_n: np.ndarray, *, num_buckets: int = 5,
    num_position_bins: int = 10,
) -> EOSByValue:
    """The paper's EOS analysis: how likely stopping is, by prompt value and by relative position.

    `eos_prob_nt` is the policy's probability of EOS at each response position and `mask_nt` the response
    mask. Samples are bucketed by value quantile; NaN marks an empty cell.
    """
    eos_prob_nt, mask_nt = np.asarray(eos_prob_nt, np.float64), np.asarray(mask_nt, bool)
    value_n = np.asarray(value_n, np.float64)
    if eos_prob_nt.shape != mask_nt.shape or eos_prob_nt.shape[0] != len(value_n):
        raise ValueError(f"shapes disagree: eos {eos_prob_nt.shape}, mask {mask_nt.shape}, values {value_n.shape}")
    edges = np.quantile(value_n, np.linspace(0.0, 1.0, num_buckets + 1))
    bucket_n = np.clip(np.searchsorted(edges, value_n, side="right") - 1, 0, num_buckets - 1)
    lengths_n = mask_nt.sum(axis=1)
    position_nt = np.arange(mask_nt.shape[1])[None, :] / np.maximum(lengths_n, 1)[:, None]
    position_bin_nt = np.minimum((position_nt * num_position_bins).astype(int), num_position_bins - 1)
    sums = np.zeros((num_buckets, num_position_bins))
    counts = np.zeros((num_buckets, num_position_bins))
    rows, cols = np.nonzero(mask_nt)
    np.add.at(sums, (bucket_n[rows], position_bin_nt[rows, cols]), eos_prob_nt[rows, cols])
    np.add.at(counts, (bucket_n[rows], position_bin_nt[rows, cols]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_position = sums / counts
        overall = sums.sum(axis=1) / counts.sum(axis=1)
    return EOSByValue(edges, overall, per_position, np.bincount(bucket_n, minlength=num_buckets))


# ---------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class RLEVConfig:
    """The `rlev` config section.

    Attributes:
      reward: reward mode, one of REWARD_MODES ("human_aligned" is accepted for "human").
      alpha: value scale in s(x) = 1 + min(alpha * v, 1).
      value_source: where training values come from, one of VALUE_SOURCES.
      dataset: "embedded_exam" (alias "embedded"), "rlev" or "webinstruct" (hub names, read from the local
        cache), a local data file or dataset folder, or `tfds:<name>` (TensorFlow Datasets).
      schema: row schema of a local dataset: "auto", "rlev" or "webinstruct".
      hub_config: dataset configuration (subset) name, e.g. a language.
      train_split, eval_split: split names of hub datasets and folders.
      eval_dataset: a separate local file for evaluation; without it a single local file is split.
      num_train, num_eval: examples per split (0 = every row; the embedded set needs both > 0).
      seed: data generation, local-file split, and the "random" mode's shuffle.
      skip_invalid: skip (and count) malformed rows instead of failing.
      system_prompt: overrides the policy's system prompt.
      verifier: one of VERIFIERS: "rule", "model" (every sample judged by `judge_model`) or
        "rule_or_model" (the judge only where the rules cannot decide).
      judge_model: the judge's model spec (an HF directory, a .gguf file or smollm2-135m-instruct);
        required unless verifier is "rule" (the policy is never its own judge by default).
      judge_max_new_tokens: the judge's reply length (a YES/NO needs a few tokens).
      judge_greedy: greedy judge replies (else sampled at `judge_temperature`).
      judge_temperature: the judge's temperature when not greedy.
      judge_max_prompt_len: longest judge prompt in tokens; longer ones are failed verdicts.
      judge_batch_size: prompts per judge generation chunk.
      judge_dtype: the judge's parameter/compute/cache dtype, one of JUDGE_DTYPES.
    """

    reward: str = "human"
    alpha: float = 10.0
    value_source: str = "ground_truth"
    dataset: str = "embedded_exam"
    schema: str = "auto"
    hub_config: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    eval_dataset: str | None = None
    num_train: int = 512
    num_eval: int = 128
    seed: int = 0
    skip_invalid: bool = False
    system_prompt: str | None = None
    verifier: str = "rule"
    judge_model: str | None = None
    judge_max_new_tokens: int = 8
    judge_greedy: bool = True
    judge_temperature: float = 1.0
    judge_max_prompt_len: int = 1024
    judge_batch_size: int = 64
    judge_dtype: str = "bfloat16"

    def __post_init__(self):
        object.__setattr__(self, "reward", _REWARD_ALIASES.get(self.reward, self.reward))
        object.__setattr__(self, "dataset", _DATASET_ALIASES.get(self.dataset, self.dataset))
        if self.reward not in REWARD_MODES:
            raise ValueError(f"rlev.reward: unknown mode {self.reward!r}; known: {', '.join(REWARD_MODES)}")
        if self.value_source not in VALUE_SOURCES:
            raise ValueError(
                f"rlev.value_source: unknown source {self.value_source!r}; known: {', '.join(VALUE_SOURCES)}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"rlev.alpha must be a finite number > 0, got {self.alpha!r}")
        for name in ("num_train", "num_eval"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"rlev.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.dataset == "embedded_exam" and (self.num_train == 0 or self.num_eval == 0):
            raise ValueError("rlev.num_train and rlev.num_eval must be > 0 for the generated embedded_exam set")
        if self.schema not in ("auto", "rlev", "webinstruct"):
            raise ValueError(f"rlev.schema must be 'auto', 'rlev' or 'webinstruct', got {self.schema!r}")
        self._check_judge()

    def _check_judge(self) -> None:
        if self.verifier not in VERIFIERS:
            raise ValueError(f"rlev.verifier: unknown verifier {self.verifier!r}; known: {', '.join(VERIFIERS)}")
        if self.verifier == "rule":
            if self.judge_model:
                raise ValueError(f"rlev.judge_model is set ({self.judge_model!r}) but rlev.verifier='rule' never "
                                 "uses it; set rlev.verifier to 'model' or 'rule_or_model', or drop judge_model")
            return
        if not isinstance(self.judge_model, str) or not self.judge_model:
            raise ValueError(
                f"rlev.verifier={self.verifier!r} needs rlev.judge_model: a model spec as --model accepts (an HF "
                "model directory, a .gguf file or smollm2-135m-instruct); the policy is not used as its own judge")
        if self.judge_model.startswith("random:"):
            raise ValueError(f"rlev.judge_model={self.judge_model!r} has no tokenizer and random weights; a judge "
                             "needs a real model (an HF directory, a .gguf file or smollm2-135m-instruct)")
        for name in ("judge_max_new_tokens", "judge_max_prompt_len", "judge_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"rlev.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not (isinstance(self.judge_temperature, (int, float)) and self.judge_temperature > 0):
            raise ValueError(f"rlev.judge_temperature must be > 0, got {self.judge_temperature!r}")
        if self.judge_dtype not in JUDGE_DTYPES:
            raise ValueError(f"rlev.judge_dtype must be one of {', '.join(JUDGE_DTYPES)}, got {self.judge_dtype!r}")

    @classmethod
    def from_dict(cls, section: Any) -> "RLEVConfig":
        """From a dict, a (Frozen)ConfigDict or an RLEVConfig; unknown keys are an error."""
        return config_section(cls, section, "rlev")


# ---------------------------------------------------------------------------------------------------------
# The method


def _take(examples: list[Example], count: int) -> list[Example]:
    return examples if count == 0 else examples[:count]


@register("rlev")
class RLEVMethod(Method):
    """Value-weighted correctness rewards (see the module docstring).

    With `value_source="predicted"`, call `attach_sampler(...)` (or pass `score_predictor=`) before
    `load_data`: the training values are then predicted by that model. With a model verifier,
    `attach_sampler` also loads the judge (or pass `judge=`, any `EquivalenceJudge`).
    """

    def __init__(self, config: Any, *, score_predictor: ScorePredictor | None = None,
                 judge: EquivalenceJudge | None = None):
        super().__init__(RLEVConfig.from_dict(config))
        self.score_predictor = score_predictor
        self.judge = judge
        self._judge_calls = 0
        self.uniform_scale: float | None = None
        self.data_report: dict[str, Any] = {}

    def attach_sampler(self, sampler: Any, sampling_params: Any = None, key: Any = None) -> None:
        """Uses `sampler` to predict values (value_source="predicted"; defaults: greedy, 12 new tokens) and,
        with a model verifier and no judge yet, loads `judge_model` on the sampler's mesh (`sampler.mesh`)
        with a sampler of its own."""
        if sampling_params is None:
            from jaxalign.rollout import SamplingParams

            sampling_params = SamplingParams(max_new_tokens=12, greedy=True, n=1)
        if key is None:
            key = jax.random.key(self.config.seed)
        self.score_predictor = ScorePredictor(sampler, sampling_params, key)
        cfg = self.config
        if cfg.verifier != "rule" and self.judge is None:
            self.judge = build_model_judge(
                cfg.judge_model, mesh=getattr(sampler, "mesh", None), max_new_tokens=cfg.judge_max_new_tokens,
                greedy=cfg.judge_greedy, temperature=cfg.judge_temperature, max_prompt_len=cfg.judge_max_prompt_len,
                batch_size=cfg.judge_batch_size, dtype=cfg.judge_dtype)

    # -- data ------------------------------------------------------------------------------------------
    def _raw_splits(self) -> tuple[list[Example], list[Example]]:
        cfg = self.config
        if cfg.dataset == "embedded_exam":
            return make_exam_set(cfg.seed, cfg.num_train, cfg.num_eval)
        source, schema = HUB_DATASETS.get(cfg.dataset, (cfg.dataset, cfg.schema))
        report: dict[str, Any] = {}

        def parse(rows, split):
            examples, parse_report = parse_rows(rows, schema, skip_invalid=cfg.skip_invalid,
                                                source=cfg.dataset if cfg.dataset in HUB_DATASETS else None)
            report[split] = dataclasses.asdict(parse_report)
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
        self.data_report["rows"] = report
        return _take(train, cfg.num_train), _take(held_out, cfg.num_eval)

    def _training_values(self, train: list[Example]) -> np.ndarray:
        source = self.config.value_source
        if source == "ground_truth":
            return np.array([example["value"] for example in train], np.float64)
        if source == "weak":
            missing = [i for i, example in enumerate(train) if "difficulty" not in example]
            if missing:
                raise ValueError(
                    f"rlev.value_source='weak' needs a 'difficulty' label on every example; training example "
                    f"{missing[0]} (and {len(missing) - 1} more) has none")
            return np.array([weak_value(example["difficulty"]) for example in train], np.float64)
        if self.score_predictor is None:
            raise ValueError(
                "rlev.value_source='predicted' needs a model: call method.attach_sampler(sampler) (or pass "
                "score_predictor=...) before load_data")
        totals = [float(example["total"]) for example in train]
        scores = self.score_predictor.predict([example["prompt"] for example in train], totals)
        failed = sum(score is None for score in scores)
        parsed = [s / t for s, t in zip(scores, totals) if s is not None]
        fallback = float(np.median(parsed)) if parsed else 1.0 / len(train)
        self.data_report["predicted_values"] = {"failed": failed, "fallback_value": fallback}
        return np.array([fallback if s is None else s / t for s, t in zip(scores, totals)], np.float64)

    def load_data(self) -> tuple[list[Example], list[Example]]:
        train, held_out = self._raw_splits()
        if not train or not held_out:
            raise ValueError(f"rlev: empty split (train {len(train)}, eval {len(held_out)} examples)")
        reward_values = self._training_values(train)
        if self.config.reward == "random":
            reward_values = np.random.default_rng(self.config.seed).permutation(reward_values)
        train = [dict(example, reward_value=float(v)) for example, v in zip(train, reward_values)]
        human_scale = value_scale(reward_values, mode="human", alpha=self.config.alpha)
        self.uniform_scale = float(np.mean(np.asarray(human_scale)))
        self.data_report.update(
            num_train=len(train), num_eval=len(held_out), mean_value=float(reward_values.mean()),
            mean_human_scale=self.uniform_scale,
        )
        return train, held_out

    # -- prompts and rewards ---------------------------------------------------------------------------
    def messages(self, example: Example) -> list[dict[str, str]]:
        system = self.config.system_prompt if self.config.system_prompt is not None else POLICY_SYSTEM_PROMPT
        return [{"role": "system", "content": system}, {"role": "user", "content": example["prompt"]}]

    @property
    def feature_fn(self) -> FeatureFn:
        return correctness_features if self.config.verifier == "rule" else rule_features

    @property
    def uses_judge(self) -> bool:
        return self.config.verifier != "rule"

    def judge_features(
        self, texts: Sequence[str], examples: Sequence[Example], features: Mapping[str, np.ndarray]
    ) -> Mapping[str, np.ndarray]:
        """The judge's verdicts as "correct" (see the module docstring for the routing); adds "judged".
        Samples the pool failed on are not judged; failed verdicts make the sample's features NaN."""
        verifier = self.config.verifier
        if verifier == "rule":
            return features
        if self.judge is None:
            raise RuntimeError(f"rlev.verifier={verifier!r} needs its judge: call attach_sampler(policy_sampler), "
                               "which loads rlev.judge_model, or pass judge= to RLEVMethod")
        n = len(texts)
        pool_ok_n = np.ones(n, bool)
        for values in features.values():
            pool_ok_n &= ~np.isnan(np.asarray(values, np.float64))
        if not features:
            pool_ok_n[:] = False
        ask_n = pool_ok_n
        if verifier == "rule_or_model":
            if features and "rule_decided" not in features:
                raise KeyError("rlev.verifier='rule_or_model' needs the 'rule_decided' feature of rule_features")
            ask_n = pool_ok_n & (np.nan_to_num(np.asarray(features.get("rule_decided", np.zeros(n)))) < 0.5)
        self._judge_calls += 1
        key = jax.random.fold_in(jax.random.key(self.config.seed), self._judge_calls)
        return judge_correctness(self.judge, texts, [e["prompt"] for e in examples],
                                 [str(e["answer"]) for e in examples], features, ask_n, key)

    def rewards(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        correct_n = np.asarray(features.get("correct", np.full(len(examples), np.nan)), np.float32)
        value_n = np.array([example.get("reward_value", example["value"]) for example in examples], np.float32)
        if self.config.reward == "uniform" and self.uniform_scale is None:
            raise RuntimeError("rlev reward 'uniform' needs the training-set mean scale: call load_data first")
        rewards_n, scale_n = rlev_rewards(correct_n, value_n, self.config.alpha, self.uniform_scale or 1.0,
                                          mode=self.config.reward)
        components = {
            "correct": np.nan_to_num(correct_n, nan=0.0),
            "value_scale": np.asarray(scale_n),
            "verifier_failed": np.isnan(correct_n).astype(np.float32),
        }
        if "judged" in features:
            components["judged"] = np.nan_to_num(np.asarray(features["judged"], np.float32), nan=0.0)
        return np.asarray(rewards_n), components

    def eval_metrics(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example], lengths_n: np.ndarray
    ) -> dict[str, float]:
        correct_n = np.asarray(features.get("correct", np.full(len(examples), np.nan)), np.float64)
        metrics = rlev_metrics(correct_n, np.array([example["value"] for example in examples]), lengths_n)
        metrics["verifier_failed"] = float(np.isnan(correct_n).mean())
        if "has_answer" in features:
            metrics["has_answer"] = float(100.0 * np.nan_to_num(features["has_answer"]).mean())
        if "judged" in features:
            metrics["judged"] = float(100.0 * np.nan_to_num(features["judged"]).mean())
        return metrics
