"""Typed, frozen, validated experiment configuration.

Config files (`configs/*.py`) return a locked `ml_collections.ConfigDict`; `from_config_dict` turns it into
an `ExperimentConfig` made of frozen dataclasses and checks everything that can be checked before any model
is loaded. Every error says what is wrong and how to fix it.

Sections of the ConfigDict (see `configs/common.py` for defaults):
  seed, method                          scalars
  model      spec, param_dtype, dtype, remat, init_from (a run directory whose latest weights start the policy)
  mesh       data, fsdp, tensor                      (-1 = the rest of the devices)
  rollout    prompts_per_step, samples_per_prompt, lengths, sampling, overlong prompts, dynamic sampling
  algorithm  estimator, advantage{...}, loss{...}, mini_batches, micro_batches, epochs, logprob_chunk_size
  optim      kwargs of the algorithms' `OptimConfig`
  train      steps, eval_every, eval_examples
  checkpoint every, keep, async_save
  logging    progress, tensorboard, samples_every, report
  rewards    num_workers, timeout_s
  critic     mode, head_init_std, optim{...}, critic_warmup_steps   (PPO with a learned critic, estimator gae)
  lora       rank (0 = full fine-tuning), alpha, targets, dropout, base_dtype, sampler   (LoRA adapters)
  agents     optional: {name: {model, rollout, algorithm, optim, critic, lora}}, each agent's sections deep-merged
             over the top-level ones; without it there is one agent, `policy`, made of the top-level sections
  stages     optional: [{steps, train: [agent names], overrides: {method field: value}}]; without it one stage
             trains every agent for train.steps
  sft        supervised fine-tuning (`jaxalign sft`): data, split, lengths, batches, epochs or steps, optim{...};
             `from_config_dict(cd, kind="sft")` makes the run's one agent the SFT learner (see `SFTSpec`)
  <method>   the method's own section, passed through untouched (e.g. `rlev`); checked by the method
             (`jaxalign.methods.build_method`), since this module imports nothing from `methods/` or `train/`
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import ml_collections

KNOWN_DTYPES = ("float32", "bfloat16", "float16")
OVERLONG_PROMPT_MODES = ("truncate", "drop")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    spec: str
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    # A run directory (e.g. of `jaxalign sft`): its latest checkpoint's policy weights replace the weights of
    # `spec` (same architecture) before the reference, critic and optimizer are made from them.
    init_from: str = ""


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def resolved(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) with a -1 entry replaced by the remaining devices."""
        sizes = [self.data, self.fsdp, self.tensor]
        known = 1
        for size in sizes:
            if size != -1:
                known *= size
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(
                    f"mesh fsdp*tensor (= {known}) does not divide the {num_devices} devices; choose sizes "
                    f"whose product divides {num_devices}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        return tuple(sizes)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    prompts_per_step: int
    samples_per_prompt: int
    max_prompt_len: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    overlong_prompts: str = "truncate"
    dynamic_sampling: bool = False
    dynamic_sampling_tol: float = 1e-6  # a group is a tie when its spread <= tol * the batch's largest |reward|
    dynamic_sampling_max_tries: int = 3
    eval_max_new_tokens: int = 0  # 0: same as max_new_tokens

    @property
    def samples_per_step(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    estimator: str
    advantage: Mapping[str, Any]
    loss: Mapping[str, Any]
    mini_batches: int = 1
    micro_batches: int = 1
    epochs: int = 1
    # With one mini-batch and one epoch the policy that sampled is the one being trained, so the sampler's
    # log-probs (same definition as the trainer's) can stand in for a recomputed old-policy pass.
    recompute_old_logprobs: bool = True

    def advantage_config(self):
        """The algorithms' `AdvantageConfig`: `algorithm.advantage` plus the estimator name."""
        from jaxalign.algorithms.advantages import AdvantageConfig

        return _build_dataclass(
            AdvantageConfig, {**self.advantage, "estimator": self.estimator}, "algorithm.advantage"
        )

    def loss_config(self, temperature: float):
        """The algorithms' `LossConfig` from `algorithm.loss`, at the rollout's sampling temperature."""
        from jaxalign.algorithms.losses import LossConfig

        return _build_dataclass(LossConfig, {**self.loss, "temperature": temperature}, "algorithm.loss")

    @property
    def needs_reference(self) -> bool:
        """Whether any KL term (in the reward or in the loss) needs the reference policy's log-probs."""
        return float(self.advantage.get("kl_coef", 0.0)) > 0 or (
            self.loss.get("kl_in", "none") == "loss" and float(self.loss.get("kl_coef", 0.0)) > 0
        )


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    kwargs: Mapping[str, Any]

    def optim_config(self):
        """The train state's `OptimConfig` built from the `optim` section."""
        from jaxalign.algorithms.optim import OptimConfig

        return _build_dataclass(OptimConfig, self.kwargs, "optim")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    steps: int
    eval_every: int = 0  # 0: only at the start and the end
    eval_examples: int = 0  # 0: the whole eval split
    eval_at_start: bool = True  # False: no eval before training (seeds of one setting share that eval)
    skip_memory_check: bool = False  # start even when the memory estimate exceeds the device (jaxalign.memory)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    every: int = 0  # 0: only at the end (and on SIGTERM)
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class LoggingSpec:
    progress: bool = True
    tensorboard: bool = True
    samples_every: int = 1
    samples_per_log: int = 4
    report: bool = True


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    num_workers: int = 2
    timeout_s: float = 30.0


CRITIC_MODES = ("separate", "shared")
# Estimators whose advantage compares a sample with the other samples of its prompt's group: with one
# sample per prompt every advantage is 0.
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")


@dataclasses.dataclass(frozen=True)
class CriticSpec:
    """The learned critic of `algorithm.estimator="gae"` (PPO).

    Attributes:
      mode: "separate" (a `ValueModel` initialised from the policy's weights, with its own optimizer and
        update) or "shared" (a value head on the policy's trunk, trained with the policy in one update of
        `policy_loss + loss.value_coef * value_loss` by the policy's `optim`).
      head_init_std: spread of the value head's initial outputs (0: every initial value is 0).
      optim: the separate critic's optimizer: `OptimConfig` fields that override the policy's `optim`
        (e.g. a higher `learning_rate`); not used by a shared head.
      critic_warmup_steps: loop steps at the start that update only the critic (the policy stays as it
        is), so the first policy updates see a fitted baseline. Separate critic only.
    """

    mode: str = "separate"
    head_init_std: float = 0.0
    optim: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    critic_warmup_steps: int = 0

    def optim_config(self, policy_optim: "OptimSpec"):
        """The separate critic's `OptimConfig`: the policy's `optim` fields overridden by `critic.optim`."""
        from jaxalign.algorithms.optim import OptimConfig

        return _build_dataclass(OptimConfig, {**policy_optim.kwargs, **self.optim}, "critic.optim")


# Projections of each decoder layer that may carry LoRA adapters (HF module names; `jaxalign.models.lora`).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# How a LoRA agent's sampler gets the adapters: folded into a copy of the weights ("merged") or applied in
# the forward pass on the shared frozen base ("adapters": no copy of the base).
LORA_SAMPLER_MODES = ("merged", "adapters")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """LoRA fine-tuning of an agent (`lora` section; per agent under `agents.<name>.lora`).

    Attributes:
      rank: adapter rank; 0 = full fine-tuning (every other field is then unused).
      alpha: the adapters' output is scaled by `alpha / rank` (as in PEFT).
      targets: the projections that get adapters (`LORA_TARGETS`); a list or a comma-separated string.
      dropout: dropout on the adapters' input during training updates (not in log-prob passes or sampling).
      base_dtype: dtype of the frozen base weights ("" = `model.param_dtype`; "bfloat16" halves them);
        the adapters keep `model.param_dtype`.
      sampler: "merged" (the sampler holds base + adapters folded into one copy of the weights; the faster
        decode) or "adapters" (it applies the adapters in its forward pass on the shared base: no second
        copy of the weights).
    """

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS
    dropout: float = 0.0
    base_dtype: str = ""
    sampler: str = "merged"

    @property
    def enabled(self) -> bool:
        return self.rank > 0


DEFAULT_AGENT = "policy"
AGENT_SECTIONS = ("model", "rollout", "algorithm", "optim", "critic", "lora")


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """One trained agent: its model, sampling, RL algorithm, optimizer and (estimator "gae") critic.

    Built from `agents.<name>.<section>` deep-merged over the top-level section of the same name, so an
    agent states only what differs. Agents may use different models (and tokenizers).
    """

    name: str
    model: ModelSpec
    rollout: RolloutSpec
    algorithm: AlgorithmSpec
    optim: OptimSpec
    critic: CriticSpec | None = None
    lora: LoraSpec | None = None  # None or rank 0: full fine-tuning

    @property
    def uses_critic(self) -> bool:
        return self.algorithm.estimator == "gae"

    @property
    def uses_lora(self) -> bool:
        return self.lora is not None and self.lora.enabled


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A stretch of training steps: which agents train and which method fields change.

    Attributes:
      steps: steps in this stage; -1 (last stage only) = the rest of `train.steps`.
      train: names of the agents updated in this stage; the others keep their parameters and optimizer
        state bit for bit (they still act in episodes).
      overrides: method config fields and their values in this stage (e.g. WaltzRL's `lam: 0.0`).
    """

    steps: int
    train: tuple[str, ...]
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


RUN_KINDS = ("rl", "sft")  # what a run directory holds: `jaxalign train` or `jaxalign sft`
SFT_OVERLONG_MODES = ("truncate", "drop")


@dataclasses.dataclass(frozen=True)
class SFTSpec:
    """Supervised fine-tuning of the top-level model on chat conversations (`sft` section, `jaxalign sft`).

    Attributes:
      data: a `.jsonl` file of {"messages": [...]} rows, "embedded:<name>" (`jaxalign.data.chat`), or a
        Hugging Face dataset (a local file or folder, or a hub name) with a messages column.
      messages_field: the column holding each conversation's messages.
      split: the dataset split to read (hub datasets and folders).
      eval_fraction: share of the conversations held out for the eval loss (ignored when eval_examples > 0).
      eval_examples: number of conversations held out (> 0 overrides eval_fraction; both 0: no eval).
      max_len: longest training sequence in tokens.
      overlong: a longer conversation is cut to its first max_len tokens ("truncate"; dropped when no
        assistant token is left) or dropped ("drop"); both are counted.
      batch_size: conversations per step (one row each: no two conversations attend to each other).
      micro_batches: gradient accumulation: the batch is split into this many micro-batches.
      epochs: passes over the training conversations (used when steps is 0).
      steps: training steps (> 0 overrides epochs; the data cycles through epochs as needed).
      eval_every: eval loss every this many steps (0: only before and after training).
      eval_batch_size: conversations per eval forward pass (0: batch_size).
      bucket_batches: this many batches' worth of shuffled conversations are sorted by length before they
        are cut into batches, so a batch holds conversations of similar length (1: no sorting).
      optim: `OptimConfig` fields over the top-level `optim` (e.g. a higher learning_rate for SFT).
    """

    data: str = ""
    messages_field: str = "messages"
    split: str = "train"
    eval_fraction: float = 0.05
    eval_examples: int = 0
    max_len: int = 1024
    overlong: str = "truncate"
    batch_size: int = 8
    micro_batches: int = 1
    epochs: int = 1
    steps: int = 0
    eval_every: int = 0
    eval_batch_size: int = 0
    bucket_batches: int = 16
    optim: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _sft_section(cd: ml_collections.ConfigDict) -> SFTSpec:
    if "sft" not in cd or cd.sft is None:
        raise ConfigError("jaxalign sft needs an 'sft' section in the config; add one, e.g. "
                          "c.sft = common.sft_section(data='conversations.jsonl') (configs/common.py)")
    values = _plain(cd.sft)
    if not isinstance(values, Mapping):
        raise ConfigError(f"sft must be a section of SFTSpec fields, got {values!r}")
    values = dict(_check_fields(SFTSpec, dict(values), "sft"))
    optim = values.pop("optim", None) or {}
    if not isinstance(optim, Mapping):
        raise ConfigError(f"sft.optim must be a section of OptimConfig fields (e.g. learning_rate), got {optim!r}")
    return SFTSpec(optim=_freeze(optim), **values)


def sft_agent_spec(default: AgentSpec, sft: SFTSpec) -> AgentSpec:
    """The SFT learner: the top-level model (and LoRA section) with the SFT loss ("sft" in `POLICY_LOSSES`,
    token mean over assistant tokens, no KL, temperature 1) and `optim` overridden by `sft.optim`; no
    critic, no reference."""
    loss = {"policy_loss": "sft", "aggregation": "token_mean", "kl_in": "none", "kl_coef": 0.0,
            "logprob_chunk_size": int(default.algorithm.loss.get("logprob_chunk_size", 256))}
    return AgentSpec(
        name=DEFAULT_AGENT,
        model=default.model,
        rollout=dataclasses.replace(default.rollout, temperature=1.0),
        algorithm=AlgorithmSpec(estimator="sft", advantage=_freeze({}), loss=_freeze(loss),
                                micro_batches=sft.micro_batches),
        optim=OptimSpec(kwargs=_freeze({**default.optim.kwargs, **sft.optim})),
        critic=None,
        lora=getattr(default, "lora", None),
    )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs, typed and frozen. `raw` is the resolved ConfigDict as plain JSON data."""

    seed: int
    method: str
    model: ModelSpec
    mesh: MeshSpec
    rollout: RolloutSpec
    algorithm: AlgorithmSpec
    optim: OptimSpec
    train: TrainSpec
    checkpoint: CheckpointSpec
    logging: LoggingSpec
    rewards: RewardSpec
    method_config: ml_collections.FrozenConfigDict
    raw: Mapping[str, Any]
    critic: CriticSpec | None = None  # the `critic` section; used by estimator "gae"
    agents: Mapping[str, AgentSpec] = dataclasses.field(default_factory=dict)  # name -> spec, in order
    stages: tuple[StageSpec, ...] = ()
    kind: str = "rl"  # "sft": a `jaxalign sft` run, whose one agent is `sft_agent_spec` (RUN_KINDS)
    sft: SFTSpec | None = None  # the `sft` section (kind "sft" only)

    @property
    def uses_critic(self) -> bool:
        """Whether any agent trains a learned critic (estimator "gae")."""
        return any(a.uses_critic for a in self.agents.values()) or self.algorithm.estimator == "gae"

    @property
    def agent(self) -> AgentSpec:
        """The only agent of a single-agent run (an error naming the agents otherwise)."""
        if len(self.agents) != 1:
            raise ConfigError(f"this run has {len(self.agents)} agents ({', '.join(self.agents)}); name one")
        return next(iter(self.agents.values()))

    def stage_at(self, step: int) -> tuple[int, StageSpec]:
        """(index, stage) of training step `step` (1-based)."""
        end = 0
        for index, stage in enumerate(self.stages):
            end = self.train.steps if stage.steps == -1 else end + stage.steps
            if step <= end:
                return index, stage
        return len(self.stages) - 1, self.stages[-1]

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2, sort_keys=True)


_SECTIONS = ("model", "mesh", "rollout", "algorithm", "optim", "train", "checkpoint", "logging", "rewards")


def _build_dataclass(cls, kwargs: Mapping[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {unknown} for {cls.__name__}; valid fields: {sorted(names)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _section(cd: ml_collections.ConfigDict, name: str, cls) -> Any:
    if name not in cd:
        raise ConfigError(f"config has no '{name}' section; start from configs/common.py:base_config()")
    values = cd[name].to_dict() if isinstance(cd[name], ml_collections.ConfigDict) else dict(cd[name])
    return _build_dataclass(cls, values, name)


def from_config_dict(cd: ml_collections.ConfigDict, *, num_devices: int | None = None, kind: str | None = None
                     ) -> ExperimentConfig:
    """Converts and validates a ConfigDict. `num_devices` (default: `jax.device_count()`) checks the mesh.

    `kind` "sft" (or a saved config with `run_kind: "sft"`) makes the config of a `jaxalign sft` run: one
    agent, `policy`, the SFT learner of the `sft` section (`sft_agent_spec`); `raw` then records
    `run_kind: "sft"`, so the run directory's `config.json` rebuilds the same agent (export, eval)."""
    kind = str(cd.get("run_kind", "rl")) if kind is None else kind
    if kind not in RUN_KINDS:
        raise ConfigError(f"run_kind={kind!r}; known: {', '.join(RUN_KINDS)}")
    for key in ("seed", "method"):
        if key not in cd:
            raise ConfigError(f"config is missing top-level '{key}'; start from configs/common.py:base_config()")
    method = str(cd.method)
    for name in ("model", "rollout", "algorithm", "optim"):
        if name not in cd:
            raise ConfigError(f"config has no '{name}' section; start from configs/common.py:base_config()")
    top = {name: _plain(cd[name]) for name in AGENT_SECTIONS if name in cd and cd[name] is not None}
    default = _agent_spec(DEFAULT_AGENT, top, "")
    agents_section = _plain(cd.get("agents")) or {}
    if not isinstance(agents_section, Mapping):
        raise ConfigError(f"agents must be a section {{name: {{section: ...}}}}, got {agents_section!r}")
    agents = {DEFAULT_AGENT: default} if not agents_section else {
        str(name): _agent_spec(str(name), _merge_agent(top, own, str(name)), f"agents.{name}.")
        for name, own in agents_section.items()
    }
    sft = None
    raw = json.loads(cd.to_json_best_effort())
    if kind == "sft":
        sft = _sft_section(cd)
        default = sft_agent_spec(default, sft)
        agents = {DEFAULT_AGENT: default}
        raw["run_kind"] = "sft"
    method_section = cd.get(method, ml_collections.ConfigDict())
    train = _section(cd, "train", TrainSpec)
    config = ExperimentConfig(
        seed=int(cd.seed),
        method=method,
        model=default.model,
        mesh=_section(cd, "mesh", MeshSpec),
        rollout=default.rollout,
        algorithm=default.algorithm,
        optim=default.optim,
        train=train,
        checkpoint=_section(cd, "checkpoint", CheckpointSpec),
        logging=_section(cd, "logging", LoggingSpec),
        rewards=_section(cd, "rewards", RewardSpec),
        method_config=ml_collections.FrozenConfigDict(method_section),
        raw=raw,
        critic=default.critic,
        agents=_freeze(agents),
        stages=_stages(_plain(cd.get("stages")) if kind == "rl" else None, tuple(agents), train.steps),
        kind=kind,
        sft=sft,
    )
    validate(config, num_devices=num_devices)
    return config


def _plain(value: Any) -> Any:
    """A ConfigDict (or FrozenConfigDict) as plain nested dicts; anything else as it is."""
    if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _merge_agent(top: Mapping[str, Any], own: Any, name: str) -> dict:
    """The top-level sections with agent `name`'s own sections deep-merged over them."""
    own = _plain(own) or {}
    if not isinstance(own, Mapping):
        raise ConfigError(f"agents.{name} must be a section of {', '.join(AGENT_SECTIONS)}, got {own!r}")
    unknown = sorted(set(own) - set(AGENT_SECTIONS))
    if unknown:
        raise ConfigError(f"agents.{name}: unknown section(s) {unknown}; an agent may set {', '.join(AGENT_SECTIONS)}")
    merged = dict(top)
    for section, values in own.items():
        if values is None:
            merged[section] = None
        elif not isinstance(values, Mapping):
            raise ConfigError(f"agents.{name}.{section} must be a section of fields, got {values!r}")
        else:
            merged[section] = _deep_merge(top.get(section) or {}, values)
    return merged


def _agent_spec(name: str, sections: Mapping[str, Any], where: str) -> AgentSpec:
    algorithm = dict(sections["algorithm"])
    algorithm_spec = AlgorithmSpec(
        estimator=algorithm.pop("estimator", ""),
        advantage=_freeze(algorithm.pop("advantage", {})),
        loss=_freeze(algorithm.pop("loss", {})),
        **_check_fields(AlgorithmSpec, algorithm, f"{where}algorithm"),
    )
    return AgentSpec(
        name=name,
        model=_build_dataclass(ModelSpec, sections["model"], f"{where}model"),
        rollout=_build_dataclass(RolloutSpec, sections["rollout"], f"{where}rollout"),
        algorithm=algorithm_spec,
        optim=OptimSpec(kwargs=_freeze(sections["optim"])),
        critic=_critic_section(sections.get("critic"), f"{where}critic"),
        lora=_lora_section(sections.get("lora"), f"{where}lora"),
    )


def _lora_section(values: Mapping[str, Any] | None, where: str = "lora") -> LoraSpec | None:
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a section of {', '.join(f.name for f in dataclasses.fields(LoraSpec))}, "
                          f"got {values!r}")
    values = dict(_check_fields(LoraSpec, dict(values), where))
    targets = values.get("targets", LORA_TARGETS)
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"{where}.targets must be a list of projection names (or one comma-separated string) "
                          f"out of {', '.join(LORA_TARGETS)}; got {targets!r}")
    values["targets"] = tuple(targets)
    return LoraSpec(**values)


def _critic_section(values: Mapping[str, Any] | None, where: str = "critic") -> CriticSpec | None:
    if values is None:
        return None
    values = dict(values)
    optim = values.pop("optim", None) or {}
    if not isinstance(optim, Mapping):
        raise ConfigError(f"{where}.optim must be a section of OptimConfig fields (e.g. learning_rate), got {optim!r}")
    return CriticSpec(optim=_freeze(optim), **_check_fields(CriticSpec, values, where))


def _stages(section: Any, agents: tuple[str, ...], total_steps: int) -> tuple[StageSpec, ...]:
    """The `stages` list checked against the agents and `train.steps` (default: one stage, every agent)."""
    if not section:
        return (StageSpec(steps=-1, train=agents),)
    if not isinstance(section, (list, tuple)):
        raise ConfigError(f"stages must be a list of {{steps, train, overrides}} sections, got {section!r}")
    stages = []
    for index, entry in enumerate(section):
        where = f"stages[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a section {{steps, train, overrides}}, got {entry!r}")
        unknown = sorted(set(entry) - {"steps", "train", "overrides"})
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: overrides, steps, train")
        steps = entry.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or not (steps > 0 or steps == -1):
            raise ConfigError(f"{where}.steps must be a positive number of steps (or -1 = the rest), got {steps!r}")
        if steps == -1 and index != len(section) - 1:
            raise ConfigError(f"{where}.steps=-1 (the rest of train.steps) is allowed on the last stage only")
        train = entry.get("train", list(agents))
        train = (train,) if isinstance(train, str) else tuple(train)
        bad = [a for a in train if a not in agents]
        if bad:
            raise ConfigError(f"{where}.train names unknown agent(s) {bad}; the agents are: {', '.join(agents)}")
        overrides = entry.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{where}.overrides must map method fields to values, got {overrides!r}")
        stages.append(StageSpec(steps=steps, train=train, overrides=_freeze(overrides)))
    fixed = sum(s.steps for s in stages if s.steps != -1)
    if stages[-1].steps != -1 and fixed != total_steps:
        raise ConfigError(f"the stages' steps add up to {fixed} but train.steps is {total_steps}; make them "
                          "equal or set the last stage's steps to -1 (the rest)")
    if fixed >= total_steps and stages[-1].steps == -1:
        raise ConfigError(f"the stages before the last take {fixed} of train.steps={total_steps} steps, leaving "
                          "none for the last stage; raise train.steps")
    return tuple(stages)


def _check_fields(cls, values: dict, where: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(names)}")
    return values


def _freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    import types

    return types.MappingProxyType(dict(mapping))


def _positive(where: str, value: int | float) -> None:
    if not value > 0:
        raise ConfigError(f"{where} must be positive, got {value!r}")


def validate(config: ExperimentConfig, *, num_devices: int | None = None) -> None:
    """Checks sizes, divisibility, names and the mesh against the devices; raises `ConfigError`.

    Every agent is checked on its own sections; with several agents (or an `agents` section) a message
    starts with `agent '<name>':`. The method's own section is checked by the method
    (`jaxalign.methods.build_method`).
    """
    _positive("train.steps", config.train.steps)
    if config.rewards.num_workers < 0:
        raise ConfigError(f"rewards.num_workers must be >= 0 (0 = in this process), got {config.rewards.num_workers}")
    _positive("rewards.timeout_s", config.rewards.timeout_s)
    _positive("checkpoint.keep", config.checkpoint.keep)
    for name in ("eval_every", "eval_examples"):
        if getattr(config.train, name) < 0:
            raise ConfigError(f"train.{name} must be >= 0 (0 = default), got {getattr(config.train, name)}")
    if config.checkpoint.every < 0:
        raise ConfigError(f"checkpoint.every must be >= 0 (0 = only at the end), got {config.checkpoint.every}")

    if num_devices is None:
        import jax

        num_devices = jax.device_count()
    for name in ("data", "fsdp", "tensor"):
        size = getattr(config.mesh, name)
        if size != -1 and size < 1:
            raise ConfigError(f"mesh.{name} must be >= 1 or -1 (the rest), got {size}")
    if [config.mesh.data, config.mesh.fsdp, config.mesh.tensor].count(-1) > 1:
        raise ConfigError("at most one mesh axis may be -1 (the rest of the devices)")
    data, fsdp, tensor = config.mesh.resolved(num_devices)
    if data * fsdp * tensor > num_devices:
        raise ConfigError(
            f"mesh data*fsdp*tensor = {data}*{fsdp}*{tensor} = {data * fsdp * tensor} is larger than the "
            f"{num_devices} available devices; shrink the mesh or set one axis to -1"
        )
    if data * fsdp * tensor != num_devices:
        raise ConfigError(
            f"mesh data*fsdp*tensor = {data * fsdp * tensor} does not use all {num_devices} devices; set one "
            "axis to -1 to take the rest"
        )
    if config.kind == "sft":
        _validate_sft(config, batch_parallel=data * fsdp)
        return
    named = list(config.agents) != [DEFAULT_AGENT]
    for agent in config.agents.values():
        try:
            _validate_agent(agent, config, batch_parallel=data * fsdp)
        except ConfigError as e:
            if named:
                raise ConfigError(f"agent {agent.name!r}: {e}") from None
            raise


def _validate_sft(config: ExperimentConfig, *, batch_parallel: int) -> None:
    """Checks the `sft` section and the SFT learner (sizes against the mesh, optimizer, dtypes); the
    rollout and RL algorithm sections are not used by `jaxalign sft`."""
    sft, agent = config.sft, config.agent
    if not isinstance(sft.data, str) or not sft.data.strip():
        raise ConfigError("sft.data is empty; give a .jsonl file of {\"messages\": [...]} rows, "
                          "\"embedded:<name>\" or a Hugging Face dataset (a local path or a hub name)")
    for name in ("max_len", "batch_size", "micro_batches", "bucket_batches"):
        value = getattr(sft, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"sft.{name} must be a positive integer, got {value!r}")
    for name in ("epochs", "steps", "eval_every", "eval_examples", "eval_batch_size"):
        value = getattr(sft, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"sft.{name} must be an integer >= 0, got {value!r}")
    if sft.steps == 0 and sft.epochs == 0:
        raise ConfigError("sft.epochs and sft.steps are both 0; set epochs (passes over the data) or steps")
    if not isinstance(sft.eval_fraction, (int, float)) or not 0 <= sft.eval_fraction < 1:
        raise ConfigError(f"sft.eval_fraction must be in [0, 1), got {sft.eval_fraction!r}")
    if sft.max_len < 2:
        raise ConfigError(f"sft.max_len must be at least 2 tokens, got {sft.max_len}")
    if sft.overlong not in SFT_OVERLONG_MODES:
        raise ConfigError(f"sft.overlong={sft.overlong!r}; known: {', '.join(SFT_OVERLONG_MODES)}")
    if sft.batch_size % sft.micro_batches:
        raise ConfigError(f"sft.batch_size={sft.batch_size} is not divisible by sft.micro_batches="
                          f"{sft.micro_batches}; change either")
    micro = sft.batch_size // sft.micro_batches
    if micro % batch_parallel:
        raise ConfigError(f"SFT micro-batch size {micro} (= sft.batch_size {sft.batch_size} / micro_batches "
                          f"{sft.micro_batches}) is not divisible by the mesh's batch-parallel size data*fsdp = "
                          f"{batch_parallel}; raise sft.batch_size or lower sft.micro_batches")
    eval_batch = sft.eval_batch_size or sft.batch_size
    if eval_batch % batch_parallel:
        raise ConfigError(f"sft.eval_batch_size={eval_batch} is not divisible by the mesh's batch-parallel size "
                          f"data*fsdp = {batch_parallel}")
    for name in ("param_dtype", "dtype"):
        if getattr(agent.model, name) not in KNOWN_DTYPES:
            raise ConfigError(f"model.{name}={getattr(agent.model, name)!r}; known: {', '.join(KNOWN_DTYPES)}")
    try:
        agent.optim.optim_config()
    except ConfigError as e:
        raise ConfigError(f"{e} (the SFT optimizer: optim overridden by sft.optim)") from None
    agent.algorithm.loss_config(1.0)
    if agent.lora is not None:
        _validate_lora(agent)


def _validate_agent(agent: AgentSpec, config: ExperimentConfig, *, batch_parallel: int) -> None:
    r, a = agent.rollout, agent.algorithm
    for name in ("prompts_per_step", "samples_per_prompt", "max_prompt_len", "max_new_tokens"):
        _positive(f"rollout.{name}", getattr(r, name))
    for name in ("mini_batches", "micro_batches", "epochs"):
        _positive(f"algorithm.{name}", getattr(a, name))
    if r.temperature <= 0:
        raise ConfigError(f"rollout.temperature must be > 0 (got {r.temperature}); greedy eval is separate")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"rollout.top_p must be in (0, 1], got {r.top_p}")
    if r.top_k < 0:
        raise ConfigError(f"rollout.top_k must be >= 0 (0 = off), got {r.top_k}")
    if r.overlong_prompts not in OVERLONG_PROMPT_MODES:
        raise ConfigError(
            f"rollout.overlong_prompts={r.overlong_prompts!r}; known modes: {', '.join(OVERLONG_PROMPT_MODES)}"
        )
    if r.dynamic_sampling and r.dynamic_sampling_max_tries < 1:
        raise ConfigError("rollout.dynamic_sampling_max_tries must be >= 1 when dynamic sampling is on")
    for name in ("param_dtype", "dtype"):
        if getattr(agent.model, name) not in KNOWN_DTYPES:
            raise ConfigError(f"model.{name}={getattr(agent.model, name)!r}; known: {', '.join(KNOWN_DTYPES)}")

    total = r.samples_per_step
    if total % a.mini_batches:
        raise ConfigError(
            f"rollout batch prompts_per_step*samples_per_prompt = {r.prompts_per_step}*{r.samples_per_prompt} "
            f"= {total} is not divisible by algorithm.mini_batches={a.mini_batches}; change either"
        )
    mini = total // a.mini_batches
    if mini % a.micro_batches:
        raise ConfigError(
            f"mini-batch size {mini} (= {total} samples / {a.mini_batches} mini-batches) is not divisible by "
            f"algorithm.micro_batches={a.micro_batches}; change either"
        )
    micro = mini // a.micro_batches
    if micro % batch_parallel:
        raise ConfigError(
            f"micro-batch size {micro} (= {total} samples / {a.mini_batches} mini / {a.micro_batches} micro) is "
            f"not divisible by the mesh's batch-parallel size data*fsdp = {batch_parallel}; raise "
            "prompts_per_step or samples_per_prompt, or lower mini/micro-batches"
        )
    if total % batch_parallel:
        raise ConfigError(
            f"rollout batch {total} is not divisible by the mesh's batch-parallel size data*fsdp = {batch_parallel}"
        )
    from jaxalign.algorithms.advantages import ESTIMATORS

    if a.estimator not in ESTIMATORS:
        raise ConfigError(
            f"algorithm.estimator={a.estimator!r} is unknown; known estimators: {', '.join(sorted(ESTIMATORS))}"
        )
    if "temperature" in a.loss:
        raise ConfigError("algorithm.loss.temperature is taken from rollout.temperature; remove it")
    advantage = a.advantage_config()
    a.loss_config(r.temperature)
    _validate_estimator_settings(a, advantage)
    _validate_groups(agent)
    if agent.uses_critic:
        _validate_critic(agent, config.train.steps)
    if agent.lora is not None:
        _validate_lora(agent)
    if not a.recompute_old_logprobs and (a.mini_batches > 1 or a.epochs > 1):
        raise ConfigError("algorithm.recompute_old_logprobs=False is exact only with one mini-batch and one "
                          "epoch per step; set it True or use mini_batches=1, epochs=1")
    agent.optim.optim_config()


def _validate_estimator_settings(a: AlgorithmSpec, advantage) -> None:
    """Settings the chosen estimator would silently ignore or misuse (`advantages.check_estimator_config`)."""
    from jaxalign.algorithms.advantages import KL_IN_REWARD_ESTIMATORS

    if advantage.kl_coef > 0 and a.estimator not in KL_IN_REWARD_ESTIMATORS:
        raise ConfigError(
            f"algorithm.advantage.kl_coef={advantage.kl_coef} puts KL in the reward, which "
            f"algorithm.estimator={a.estimator!r} ignores (it sees sequence rewards only) while the reference "
            f"pass would still run; put KL in the loss instead: algorithm.loss.kl_in='loss', "
            f"algorithm.loss.kl_coef={advantage.kl_coef} (algorithm.loss.kl_estimator='k3' is the usual one), and "
            f"algorithm.advantage.kl_coef=0. KL in the reward works with "
            f"{', '.join(KL_IN_REWARD_ESTIMATORS)}")
    if a.estimator == "reinforce_pp_baseline" and advantage.gamma != 1.0:
        raise ConfigError(
            f"algorithm.estimator='reinforce_pp_baseline' needs algorithm.advantage.gamma=1 (got "
            f"{advantage.gamma}): its group-mean baseline is one of the undiscounted sequence reward; set gamma=1, "
            "or use reinforce_pp or gae for discounted returns")


def _validate_groups(agent: AgentSpec) -> None:
    r, estimator = agent.rollout, agent.algorithm.estimator
    if r.samples_per_prompt == 1 and estimator in GROUP_ESTIMATORS:
        raise ConfigError(
            f"algorithm.estimator={estimator!r} compares the samples of each prompt, so with "
            "rollout.samples_per_prompt=1 every advantage is 0; set samples_per_prompt >= 2, or use an "
            "estimator without groups (gae with a critic, reinforce_pp)"
        )
    if r.dynamic_sampling and r.samples_per_prompt == 1:
        raise ConfigError("rollout.dynamic_sampling keeps prompts whose samples differ in reward, which needs "
                          "rollout.samples_per_prompt >= 2; raise it or set dynamic_sampling=False")


def _validate_critic(agent: AgentSpec, train_steps: int) -> None:
    """Checks the `critic` section of a gae agent (a missing section, mode, sizes, optimizer fields)."""
    critic = agent.critic
    if critic is None:
        raise ConfigError(
            "algorithm.estimator='gae' trains a learned critic and needs a 'critic' section; add one "
            "(configs/common.py: c.critic = critic_section(mode='separate')), see configs/ppo_gae_tiny.py"
        )
    if critic.mode not in CRITIC_MODES:
        raise ConfigError(f"critic.mode={critic.mode!r} is unknown; use 'separate' (own value model and "
                          "optimizer) or 'shared' (value head on the policy's trunk)")
    if critic.head_init_std < 0:
        raise ConfigError(f"critic.head_init_std must be >= 0 (0 = every initial value is 0), got "
                          f"{critic.head_init_std}")
    if critic.critic_warmup_steps < 0:
        raise ConfigError(f"critic.critic_warmup_steps must be >= 0, got {critic.critic_warmup_steps}")
    if critic.critic_warmup_steps >= train_steps:
        raise ConfigError(
            f"critic.critic_warmup_steps={critic.critic_warmup_steps} leaves no policy update in "
            f"train.steps={train_steps}; lower it below train.steps"
        )
    if critic.mode == "shared":
        if critic.critic_warmup_steps:
            raise ConfigError("critic.critic_warmup_steps needs critic.mode='separate': a shared value head is "
                              "trained together with the policy; set critic_warmup_steps=0 or use a separate critic")
        if float(agent.algorithm.loss.get("value_coef", 0.5)) <= 0:
            raise ConfigError("critic.mode='shared' trains the value head through algorithm.loss.value_coef * "
                              "value_loss, so value_coef must be > 0; raise it or use a separate critic")
    critic.optim_config(agent.optim)


def _validate_lora(agent: AgentSpec) -> None:
    """Checks the `lora` section (checked also at rank 0, so that a typo shows before LoRA is switched on)."""
    lora = agent.lora
    if not isinstance(lora.rank, int) or isinstance(lora.rank, bool) or lora.rank < 0:
        raise ConfigError(f"lora.rank must be an integer >= 0 (0 = full fine-tuning), got {lora.rank!r}")
    if not isinstance(lora.alpha, (int, float)) or isinstance(lora.alpha, bool) or not lora.alpha > 0:
        raise ConfigError(f"lora.alpha must be a number > 0 (the adapters are scaled by alpha / rank), "
                          f"got {lora.alpha!r}")
    if not lora.targets:
        raise ConfigError(f"lora.targets is empty; name one or more of {', '.join(LORA_TARGETS)}")
    unknown = [t for t in lora.targets if t not in LORA_TARGETS]
    if unknown:
        raise ConfigError(f"lora.targets: unknown projection(s) {unknown}; known: {', '.join(LORA_TARGETS)}")
    if len(set(lora.targets)) != len(lora.targets):
        raise ConfigError(f"lora.targets names a projection twice: {list(lora.targets)}")
    if not isinstance(lora.dropout, (int, float)) or not 0 <= lora.dropout < 1:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {lora.dropout!r}")
    if lora.base_dtype not in ("",) + KNOWN_DTYPES:
        raise ConfigError(f"lora.base_dtype={lora.base_dtype!r}; known: {', '.join(KNOWN_DTYPES)} "
                          "(or \"\" for model.param_dtype)")
    if lora.sampler not in LORA_SAMPLER_MODES:
        raise ConfigError(f"lora.sampler={lora.sampler!r}; known: {', '.join(LORA_SAMPLER_MODES)}")
    if lora.enabled and agent.uses_critic and agent.critic is not None and agent.critic.mode == "shared":
        raise ConfigError("lora with critic.mode='shared' is not supported (the value head would train the frozen "
                          "trunk); use critic.mode='separate' or lora.rank=0")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:variant]` by calling its `get_config(variant)`; returns a locked ConfigDict.

    A config file lists its variants in a module-level `VARIANTS` tuple (empty or absent: none). A variant
    the file does not list is a `ConfigError` naming the valid ones as `--config` takes them.
    """
    import pathlib

    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} does not exist; pass --config=configs/<name>.py[:variant]")
    module = _load_config_module(file)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config(arg=None) function")
    variants = tuple(getattr(module, "VARIANTS", ()))
    if arg and arg not in variants:
        valid = ", ".join([path] + [f"{path}:{v}" for v in variants])
        raise ConfigError(f"{path} has no variant {arg!r}; valid: {valid}" if variants else
                          f"{path} has no variants; use --config={path}")
    with _config_dir_on_path(file):
        cd = module.get_config(arg or None)
    if not isinstance(cd, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict, got {type(cd).__name__}")
    cd.lock()
    return cd


def _load_config_module(file):
    import importlib.util

    module_spec = importlib.util.spec_from_file_location(f"_jaxalign_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    with _config_dir_on_path(file):  # config files import their shared presets (`import common`)
        module_spec.loader.exec_module(module)
    return module


def _config_dir_on_path(file):
    import contextlib
    import sys

    @contextlib.contextmanager
    def ctx():
        directory = str(file.resolve().parent)
        sys.path.insert(0, directory)
        try:
            yield
        finally:
            sys.path.remove(directory)

    return ctx()


def _parse_value(text: str, current: Any, key: str) -> Any:
    import ast

    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={text!r}: expected a boolean (true/false)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text!r}: expected an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text!r}: expected a number") from None
    if isinstance(current, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cd: ml_collections.ConfigDict, overrides: Mapping[str, str]) -> ml_collections.ConfigDict:
    """Applies `{"a.b": "value"}` overrides, typed by the existing field; an unknown key is an error."""
    for key, text in overrides.items():
        node = cd
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(parts[:depth]) or "<top level>"
                known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
                raise ConfigError(
                    f"unknown config key --config.{key}: {where!s} has no field {part!r}"
                    + (f"; fields there: {known}" if known else "")
                )
            if depth < len(parts) - 1:
                node = node[part]
        last = parts[-1]
        value = _parse_value(text, node[last], key)
        with node.ignore_type():
            node[last] = value
    return cd
