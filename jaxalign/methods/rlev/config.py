"""The `rlev` config section (`RLEVConfig`) and the names it accepts."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxalign.methods.base import config_section

REWARD_MODES = ("human", "correctness", "uniform", "random", "multiplicative")
VALUE_SOURCES = ("ground_truth", "weak", "predicted")
VERIFIERS = ("rule", "model", "rule_or_model")
JUDGE_DTYPES = ("bfloat16", "float16", "float32")
HUB_DATASETS = {"rlev": ("sarosavo/RLEV", "rlev"), "webinstruct": ("TIGER-Lab/WebInstruct-verified", "webinstruct")}
# Former names of option values: one name per value now, and the old one says which.
_RENAMED = {"reward": {"human_aligned": "human", "baseline": "correctness"}, "dataset": {"embedded_exam": "embedded"}}


@dataclasses.dataclass(frozen=True)
class RLEVConfig:
    """The `rlev` config section.

    Attributes:
      reward: reward mode, one of REWARD_MODES.
      alpha: value scale in s(x) = 1 + min(alpha * v, 1).
      value_source: where training values come from, one of VALUE_SOURCES.
      predictor_model: with value_source "predicted", the model that predicts the values: a model spec as
        the model registry accepts (an HF directory, a .gguf file or smollm2-135m-instruct), loaded on the
        policy's mesh with a sampler of its own for the prediction pass over the training split and released
        after it (the paper uses a separately trained predictor); None or "" = the policy itself.
      dataset: "embedded" (the generated exam set), "rlev" or "webinstruct" (hub names, read from the local
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
    predictor_model: str | None = None
    dataset: str = "embedded"
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
        for field, renamed in _RENAMED.items():
            if getattr(self, field) in renamed:
                raise ValueError(f"rlev.{field}={getattr(self, field)!r} is now called "
                                 f"{renamed[getattr(self, field)]!r}; use that name")
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
        if self.dataset == "embedded" and (self.num_train == 0 or self.num_eval == 0):
            raise ValueError("rlev.num_train and rlev.num_eval must be > 0 for the generated embedded exam set")
        if self.schema not in ("auto", "rlev", "webinstruct"):
            raise ValueError(f"rlev.schema must be 'auto', 'rlev' or 'webinstruct', got {self.schema!r}")
        self._check_predictor()
        self._check_judge()

    def _check_predictor(self) -> None:
        if not self.predictor_model:
            return
        if not isinstance(self.predictor_model, str):
            raise ValueError(f"rlev.predictor_model must be a model spec string, got {self.predictor_model!r}")
        if self.value_source != "predicted":
            raise ValueError(f"rlev.predictor_model is set ({self.predictor_model!r}) but "
                             f"rlev.value_source={self.value_source!r} never uses it; set value_source='predicted' "
                             "or drop predictor_model")
        if self.predictor_model.startswith("random:"):
            raise ValueError(f"rlev.predictor_model={self.predictor_model!r} has no tokenizer and random weights; a "
                             "value predictor needs a real model (an HF directory, a .gguf file or "
                             "smollm2-135m-instruct), or leave it empty to use the policy")

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
