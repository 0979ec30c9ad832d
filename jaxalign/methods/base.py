"""The contract between a method (one paper's recipe) and the training loop.

A method composes data, prompts and rewards; the loop owns sampling, the reward pool, advantages, the
train step, checkpoints and logging. Methods register by name in `METHODS` so configs select them with
`config.method = "<name>"`.

Scoring a batch of responses, in the loop's order (training rollouts and eval alike):
  1. `feature_fn` in the reward pool's child processes (NaN features where a sample failed);
  2. `judge_features(texts, examples, features)` on the host: model-based verification (a judge model
     run through its own sampler). The default changes nothing. A sample whose features come back NaN is
     a failed sample (zero loss weight) and counted as a judge failure;
  3. `rewards(features, examples)`.
Samples are ok when the pool succeeded and no feature is NaN after step 2.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

Example = dict[str, Any]
"""One prompt with its metadata. Always has "prompt" (str); methods add their own fields."""

FeatureFn = Callable[[str, Mapping[str, Any]], dict[str, float]]
"""Host-side feature extraction: (decoded response, example) -> named floats. Must be a picklable,
top-level function: the loop runs it in child processes with a timeout."""


class Method(abc.ABC):
    """One alignment recipe. Subclasses are registered with `@register("name")`."""

    name: ClassVar[str] = ""

    def __init__(self, config: Any):
        self.config = config

    @abc.abstractmethod
    def load_data(self) -> tuple[list[Example], list[Example]]:
        """Returns (train, eval) examples."""

    @abc.abstractmethod
    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages (role/content dicts) that prompt the policy for this example."""

    @property
    @abc.abstractmethod
    def feature_fn(self) -> FeatureFn:
        """The picklable host feature function run in the reward pool."""

    @property
    def uses_judge(self) -> bool:
        """Whether `judge_features` runs a model: the loop then times it as its own phase (`time/judge_s`)
        and logs judge failures. False by default."""
        return False

    def judge_features(
        self, texts: Sequence[str], examples: Sequence[Example], features: Mapping[str, np.ndarray]
    ) -> Mapping[str, np.ndarray]:
        """Optional model-based verification, called by the loop after the reward pool, on the host.

        `texts[i]` is sample i's decoded response, `examples[i]` its example and `features[name]` a float
        array [n] from the pool (NaN where the pool failed). Returns the features the rewards use, same
        length: a method may overwrite or add features from a judge's verdicts, and marks a sample whose
        verdict failed (e.g. an unparsable reply) by setting its features to NaN. Must not modify the
        input arrays. The default returns `features` unchanged.
        """
        return features

    @abc.abstractmethod
    def rewards(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scalar reward per sample plus named components for logging.

        `features[name]` is a float array [n] (NaN where the feature function failed); `examples[i]` is the
        example sample i answers.
        """

    @abc.abstractmethod
    def eval_metrics(
        self,
        features: Mapping[str, np.ndarray],
        examples: Sequence[Example],
        lengths_n: np.ndarray,
    ) -> dict[str, float]:
        """The method's evaluation metrics on greedy responses to the eval split."""


def config_section(cls: type, section: Any, name: str) -> Any:
    """A method's frozen config dataclass `cls` from its config section: a dict, a (Frozen)ConfigDict, None
    (all defaults) or already a `cls`. An unknown key is an error that lists the known ones."""
    if isinstance(section, cls):
        return section
    section = {} if section is None else (section.to_dict() if hasattr(section, "to_dict") else section)
    if not isinstance(section, Mapping):
        raise TypeError(f"{name} config must be a mapping, got {type(section).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{name} config: unknown keys {unknown}; known keys: {sorted(known)}")
    return cls(**dict(section))


METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator adding a method to `METHODS` under `name`."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type[Method]:
    """Looks a method up by name, with an error that lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS)) or "(none registered)"
        raise ValueError(f"unknown method {name!r}; known methods: {known}") from None
