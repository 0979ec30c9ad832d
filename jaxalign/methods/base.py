"""The contract between a method (one paper's recipe) and the training loop.

A method owns its protocol: which agents act (`agents`), how one step's episodes are produced from their
samplers (`episode`) and evaluated (`eval_episode`), and which agents train when (`trains`). The loop owns
the cadence, the learner (advantages, updates), checkpoints and logging; it never probes a method for
optional hooks: every hook is declared here, with a default.

Single-turn methods (RLEV, GTAlign, the toy methods) keep the default `episode`/`eval_episode`, which run
`jaxalign.train.episodes.single_turn_episode` / `single_turn_eval` with the single-turn hooks below. Scoring
a batch of responses, in order (training and eval alike):
  1. `feature_fn` in the reward pool's child processes (NaN features where a sample failed);
  2. `judge_features(texts, examples, features)` on the host: model-based verification. The default
     changes nothing. A sample whose features come back NaN is a failed sample (zero loss weight) and is
     counted as a judge failure;
  3. `rewards(features, examples)`.

Methods register by name in `METHODS` (`@register("name")`), so configs select them with
`config.method = "<name>"`; `add_commands` lets a method add its own `jaxalign` subcommands.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from jaxalign.train.samples import Example, Samples

FeatureFn = Callable[[str, Mapping[str, Any]], dict[str, float]]
"""Host-side feature extraction: (decoded response, example) -> named floats. Must be a picklable,
top-level function: the loop runs it in child processes with a timeout."""


class Method(abc.ABC):
    """One alignment recipe. Subclasses are registered with `@register("name")`.

    `section` is the method's config section (a mapping). A method that parses it into a typed config
    implements `parse_config`; `self.config` is then the parsed config and `apply_stage` re-parses it with
    a stage's overrides.
    """

    name: ClassVar[str] = ""
    # What `jaxalign compare` tabulates for this method's runs (a `jaxalign.compare.CompareSpec`: metrics,
    # labels, higher-is-better, an optional Pareto pair); None: every `eval/*` metric by name.
    compare_spec: ClassVar[Any] = None

    def __init__(self, section: Any):
        self.section = section
        self.config = self.parse_config(section)

    def parse_config(self, section: Any) -> Any:
        """The method's config from its section (raise ValueError/TypeError on a bad one). Default: as is."""
        return section

    def apply_stage(self, overrides: Mapping[str, Any]) -> None:
        """Switches to a stage's method overrides (the loop calls it whenever the stage changes, also on
        resume); an unknown field is a ValueError naming the known ones."""
        section = self.section
        if dataclasses.is_dataclass(section):
            base = dataclasses.asdict(section)
        else:
            base = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
        unknown = sorted(set(overrides) - set(base)) if base else []
        if unknown:
            raise ValueError(f"stage overrides name unknown {self.name} field(s) {unknown}; known: {sorted(base)}")
        self.config = self.parse_config({**base, **dict(overrides)})

    # -- the protocol ------------------------------------------------------------------------------------

    def agents(self) -> tuple[str, ...]:
        """The names of the agents this method's episodes use. A single-agent method returns one name and
        runs with any single agent the config defines (default `policy`)."""
        return ("policy",)

    def setup(self, agents: Mapping[str, Any]) -> None:
        """Called once before data loading and scoring with the built agents (name -> `Agent`): a method
        that needs a model at data or scoring time (predicted values, a judge) takes what it needs here."""

    @property
    def data_report(self) -> Mapping[str, Any]:
        """What the data loading found (sizes, skipped rows, ...), logged once at the start."""
        return {}

    def episode(self, ctx) -> dict[str, Samples]:
        """One step's samples per agent (`ctx`: `jaxalign.train.episodes.EpisodeContext`). Default: the
        single-turn episode of the only agent."""
        from jaxalign.train.episodes import single_turn_episode

        return single_turn_episode(self, ctx)

    def eval_episode(self, examples: Sequence[Example], ctx) -> dict[str, float]:
        """Greedy eval metrics on `examples` with every agent acting (names without the `eval/` prefix).
        Default: the single-turn eval of the only agent."""
        from jaxalign.train.episodes import single_turn_eval

        return single_turn_eval(self, examples, ctx)

    def trains(self, agent: str, step: int) -> bool:
        """Whether `agent` is updated at `step`, within the agents its stage trains. Default: always."""
        return True

    @abc.abstractmethod
    def load_data(self) -> tuple[list[Example], list[Example]]:
        """Returns (train, eval) examples."""

    def load_eval_data(self) -> list[Example]:
        """The eval examples alone (`jaxalign eval`). Default: `load_data()[1]`; a method whose training split
        needs model work at load time (RLEV's predicted values) overrides it to skip that work."""
        return self.load_data()[1]

    @classmethod
    def add_commands(cls, subparsers: "argparse._SubParsersAction", parents: Sequence[argparse.ArgumentParser]
                     ) -> None:
        """Adds the method's own `jaxalign` subcommands (each sets `fn=callable(args) -> exit code`)."""

    # -- single-turn hooks (used by the default episodes) ---------------------------------------------------

    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages (role/content dicts) that prompt the policy for this example."""
        return [{"role": "user", "content": example["prompt"]}]

    @property
    def feature_fn(self) -> FeatureFn:
        """The picklable host feature function run in the reward pool."""
        raise NotImplementedError(f"method {self.name!r} has no feature function; it needs its own episode")

    @property
    def uses_judge(self) -> bool:
        """Whether `judge_features` runs a model: the default episodes then time it as its own phase
        (`time/judge_s`) and count judge failures. False by default."""
        return False

    def judge_features(
        self, texts: Sequence[str], examples: Sequence[Example], features: Mapping[str, np.ndarray]
    ) -> Mapping[str, np.ndarray]:
        """Optional model-based verification, on the host, after the reward pool.

        `texts[i]` is sample i's decoded response, `examples[i]` its example and `features[name]` a float
        array [n] from the pool (NaN where the pool failed). Returns the features the rewards use, same
        length: a method may overwrite or add features from a judge's verdicts, and marks a sample whose
        verdict failed (e.g. an unparsable reply) by setting its features to NaN. Must not modify the
        input arrays. The default returns `features` unchanged.
        """
        return features

    def rewards(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scalar reward per sample plus named components for logging (`features[name]`: float [n], NaN
        where the feature function failed; `examples[i]`: the example sample i answers)."""
        raise NotImplementedError(f"method {self.name!r} has no single-turn rewards; it needs its own episode")

    def eval_metrics(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example], lengths_n: np.ndarray
    ) -> dict[str, float]:
        """The method's evaluation metrics on greedy responses to the eval split."""
        raise NotImplementedError(f"method {self.name!r} has no single-turn eval; it needs its own eval_episode")


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


def build_method(config: Any) -> Method:
    """The method of an `ExperimentConfig`, checked against the config: the method's name and section,
    its agents against the config's `agents`, and every stage's overrides. Raises `ConfigError`."""
    from jaxalign.config import ConfigError

    try:
        cls = get_method(config.method)
    except ValueError as e:
        raise ConfigError(f"config.method: {e}") from None
    try:
        method = cls(config.method_config)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config section '{config.method}': {e}") from None
    wanted, defined = tuple(method.agents()), tuple(config.agents)
    if not (len(wanted) == 1 and len(defined) == 1) and set(wanted) != set(defined):
        raise ConfigError(f"method {config.method!r} needs the agents {', '.join(wanted)}, but the config defines "
                          f"{', '.join(defined)}; name them in the config's agents section")
    for index, stage in enumerate(config.stages):
        try:
            method.apply_stage(stage.overrides)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"stages[{index}].overrides: {e}") from None
    method.apply_stage(config.stages[0].overrides if config.stages else {})
    return method
