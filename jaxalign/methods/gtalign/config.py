"""The `gtalign` config section (`GTAlignConfig`), the accepted names and the reward's feature names."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxalign.methods.base import config_section
from jaxalign.methods.gtalign import game
from jaxalign.rewards.judges import JUDGE_DTYPES

REWARD_MODES = ("welfare", "linear", "user", "llm")
LLM_TERMS = ("main", "pareto")
NORMALIZATIONS = ("none", "zscore")
EPS = 1e-4
MATH_SOURCES = ("math", "math-hard", "math_hard", "minerva")
AMBIGUITY_SOURCES = ("ambiguity", "ambig_qa", "abg-coqa", "abgqa")
WRITING_SOURCES = ("medium", "writing")  # scored by the writing judge (gtalign.judge="model")
SAFETY_SOURCES = ("wildguard", "advbench", "safety")  # scored by the safety judge (gtalign.judge="model")
JUDGED_SOURCES = WRITING_SOURCES + SAFETY_SOURCES
JUDGES = ("rule", "model")
ACTIONS = game.ASSISTANT_STRATEGIES

FEATURES = ("parse_ok", "analyze_ok", "format", "quality", "pareto", "answer_user", "answer_llm", "response_band",
            "reasoning_brevity", "full_band", "response_ratio", "welfare_consistent",
            *(f"action_{a}" for a in ACTIONS))


@dataclasses.dataclass(frozen=True)
class GTAlignConfig:
    """The `gtalign` config section.

    Attributes:
      dataset: "embedded" (the offline set of `gtalign.data.make_gtalign_set`) or a local data file (.jsonl,
        .json, .parquet) in the reference's or the flat schema (see `example_from_row`).
      eval_dataset: a separate local file for evaluation; without it a file is split with `seed`.
      num_train, num_eval: examples per split (0 = every row of a file).
      seed: data generation and file splits.
      reward: one of REWARD_MODES ("welfare" = sqrt(U L), the paper's Cobb-Douglas reward).
      llm_terms: "main" or "pareto" (with the frontier term PO), see `jaxalign.methods.gtalign`.
      normalize: "none" or "zscore" (per data source, within each batch).
      system_prompt: overrides the system prompt.
      response_words, full_words: the word bands of U's response term and L's length term.
      reasoning_scale: characters scale of U's brevity term.
      judge: "rule" (rules only; writing and safety sources cannot be scored) or "model" (the judges of
        `jaxalign.methods.gtalign.judges`: writing, safety, PO with llm_terms="pareto", math where the
        rules cannot decide).
      judge_model: the judge's model spec (an HF directory, a .gguf file or smollm2-135m-instruct); None =
        the policy's base model (`model.spec`), loaded again with a sampler of its own.
      judge_max_new_tokens, judge_max_prompt_len, judge_batch_size, judge_dtype: the judge's greedy reply
        length, longest prompt in tokens (longer ones are failed verdicts), prompts per generation chunk,
        and parameter/compute/cache dtype.
    """

    dataset: str = "embedded"
    eval_dataset: str | None = None
    num_train: int = 256
    num_eval: int = 64
    seed: int = 0
    reward: str = "welfare"
    llm_terms: str = "main"
    normalize: str = "none"
    system_prompt: str | None = None
    response_words: tuple[float, float] = (20.0, 500.0)
    full_words: tuple[float, float] = (500.0, 1000.0)
    reasoning_scale: float = 500.0
    judge: str = "rule"
    judge_model: str | None = None
    judge_max_new_tokens: int = 16
    judge_max_prompt_len: int = 2048
    judge_batch_size: int = 32
    judge_dtype: str = "bfloat16"

    def __post_init__(self):
        for name, allowed in (("reward", REWARD_MODES), ("llm_terms", LLM_TERMS), ("normalize", NORMALIZATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"gtalign.{name}: unknown value {getattr(self, name)!r}; known: {', '.join(allowed)}")
        for name in ("num_train", "num_eval"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"gtalign.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.dataset == "embedded" and (self.num_train == 0 or self.num_eval == 0):
            raise ValueError("gtalign.num_train and gtalign.num_eval must be > 0 for the embedded set")
        for name in ("response_words", "full_words"):
            band = tuple(getattr(self, name))
            if len(band) != 2 or not 0 <= band[0] < band[1]:
                raise ValueError(f"gtalign.{name} must be (low, high) with 0 <= low < high, got {band!r}")
            object.__setattr__(self, name, (float(band[0]), float(band[1])))
        if not self.reasoning_scale > 0:
            raise ValueError(f"gtalign.reasoning_scale must be > 0, got {self.reasoning_scale!r}")
        self._check_judge()

    def _check_judge(self) -> None:
        if self.judge not in JUDGES:
            raise ValueError(f"gtalign.judge: unknown value {self.judge!r}; known: {', '.join(JUDGES)}")
        if self.judge_model is not None:
            if self.judge == "rule":
                raise ValueError(f"gtalign.judge_model is set ({self.judge_model!r}) but gtalign.judge='rule' never "
                                 "uses it; set gtalign.judge='model' or drop judge_model")
            if not isinstance(self.judge_model, str) or not self.judge_model:
                raise ValueError("gtalign.judge_model must be a model spec (an HF directory, a .gguf file or "
                                 "smollm2-135m-instruct) or None for the policy's base model, got "
                                 f"{self.judge_model!r}")
            if self.judge_model.startswith("random:"):
                raise ValueError(f"gtalign.judge_model={self.judge_model!r} has random weights and no tokenizer; a "
                                 "judge reads text")
        for name in ("judge_max_new_tokens", "judge_max_prompt_len", "judge_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"gtalign.{name} must be an int >= 1, got {value!r}")
        if self.judge_dtype not in JUDGE_DTYPES:
            raise ValueError(f"gtalign.judge_dtype must be one of {', '.join(JUDGE_DTYPES)}, got {self.judge_dtype!r}")

    @classmethod
    def from_dict(cls, section: Any) -> "GTAlignConfig":
        """From a dict, a (Frozen)ConfigDict or a GTAlignConfig; unknown keys are an error."""
        return config_section(cls, section, "gtalign")
