"""Agents of the host loop: one trained policy each, with its optimizer state, frozen reference, sampler
view and compiled functions, and (for PPO with estimator "gae") its learned critic.

Critic modes (`config.critic.mode`):

* "separate": a `ValueModel` whose backbone starts as a copy of the policy's weights, with its own
  `TrainState` and optimizer (`critic.optim` over the policy's `optim`), updated by
  `make_critic_train_step` on the same mini-batches, micro-batches and loss weights as the policy.
* "shared": an `ActorCritic` (the policy plus a value head on its trunk). `agent.state` is then the
  actor-critic `TrainState` (the policy's `optim`), `train_step` is `make_actor_critic_train_step` (one
  update of `policy_loss + value_coef * value_loss`), and the sampler and `logprob_fn` take
  `agent.policy_params` (`params["policy"]`).

`agent.graphdef` is always the policy `Transformer`'s graphdef, so `nnx.merge(agent.graphdef,
agent.policy_params)` is the policy in both modes. Checkpoints hold `state_tree(agents)`.

LoRA (`lora.rank > 0`, `jaxalign.models.lora`): the policy is a frozen base plus adapters. `agent.state`
holds only the adapters and their optimizer state (so do checkpoints); `agent.base_params` is the base,
loaded once and shared by every LoRA agent of the same model spec and base dtype (WaltzRL's two agents:
one copy of the base); `agent.policy_params` joins base and adapters without copying. The reference policy
is the base itself (`ref_params = base_params`, `ref_logprob_fn` on the base's graphdef): no second copy.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config import AgentSpec, ConfigError, ExperimentConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Agent:
    """One trained policy: its train state, frozen reference, sampler view and compiled functions.

    With a learned critic, `value_fn(value_params, tokens, valid, positions) -> values_bt` gives the
    critic's values; a separate critic also has `critic_state` and `critic_step`, a shared head has
    `shared_critic=True` (and `state`/`train_step` cover policy and head together).
    """

    name: str
    graphdef: Any  # the policy Transformer's graphdef
    state: Any  # TrainState (of the ActorCritic with a shared head)
    ref_params: Any | None
    sampler: Any  # None for a run that generates nothing (`jaxalign sft`)
    train_step: Callable
    logprob_fn: Callable
    spec: Any = None  # the agent's AgentSpec (model, rollout, algorithm, optim, critic)
    tokenizer: Any = None
    model_cfg: Any = None
    value_fn: Callable | None = None
    critic_state: Any | None = None  # TrainState of a separate ValueModel
    critic_step: Callable | None = None
    shared_critic: bool = False
    base_params: Any | None = None  # LoRA: the frozen base weights (shared; not trained, not checkpointed)
    ref_logprob_fn: Callable | None = None  # log-probs of `ref_params` when not `logprob_fn` (LoRA: the base)

    @property
    def has_critic(self) -> bool:
        return self.value_fn is not None

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.policy_params))

    @property
    def policy_params(self) -> Any:
        """The policy's parameters (what the sampler, `logprob_fn` and export take); with LoRA the base and
        the adapters together (the same arrays, no copy)."""
        params = self.state.params["policy"] if self.shared_critic else self.state.params
        if self.base_params is not None:
            from flax import nnx

            return nnx.merge_state(self.base_params, params)
        return params

    @property
    def value_params(self) -> Any:
        """The parameters `value_fn` takes (the ValueModel's, or the whole ActorCritic's)."""
        if not self.has_critic:
            raise ValueError(f"agent {self.name!r} has no critic")
        return self.state.params if self.shared_critic else self.critic_state.params


def state_tree(agents: Mapping[str, Agent]) -> dict:
    """The checkpointed pytree `{"agents": {name: ...}}`: per agent its train state and, with a separate
    critic, `critic`."""
    out = {}
    for name, a in agents.items():
        entry = {"params": a.state.params, "opt_state": a.state.opt_state, "step": a.state.step}
        if a.critic_state is not None:
            entry["critic"] = {"params": a.critic_state.params, "opt_state": a.critic_state.opt_state,
                               "step": a.critic_state.step}
        out[name] = entry
    return {"agents": out}


def load_state_tree(agents: Mapping[str, Agent], tree: dict) -> None:
    """Puts a restored `state_tree` back into the agents and refreshes their samplers."""
    for name, a in agents.items():
        saved = tree["agents"][name]
        a.state = dataclasses.replace(a.state, params=saved["params"], opt_state=saved["opt_state"],
                                      step=saved["step"])
        if a.critic_state is not None:
            c = saved["critic"]
            a.critic_state = dataclasses.replace(a.critic_state, params=c["params"], opt_state=c["opt_state"],
                                                 step=c["step"])
        if a.sampler is not None:
            a.sampler.update_params(a.policy_params)


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def check_vocab(model_cfg, tokenizer, spec: str = "") -> None:
    """Raises `ConfigError` when the tokenizer can emit ids the model's embedding has no row for."""
    if tokenizer is not None and tokenizer.vocab_size > model_cfg.vocab_size:
        raise ConfigError(
            f"model {spec!r}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding has only "
            f"{model_cfg.vocab_size} rows, so they do not belong together; use the tokenizer saved with this "
            "model (put its files in the model directory)"
        )


# Compiled functions per (kind, graphdef, optimizer config, loss config, mesh): a second run in the same
# process (resume, eval, export, tests) reuses them instead of compiling again. The functions are pure, so
# sharing them between runs is safe; a few entries bound the memory they hold.
_COMPILED: dict[Any, tuple] = {}
_COMPILED_MAX = 6


def _cached(key, build: Callable[[], tuple]) -> tuple:
    if key not in _COMPILED:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key]


def compiled_functions(graphdef, optim_cfg, loss_cfg, mesh, *, ref_graphdef=None, dropout_seed: int = 0):
    """`(optimizer, train_step, logprob_fn)` of a policy graphdef (cached). For LoRA, `ref_graphdef` is the
    base's (the reference inside the step) and `dropout_seed` seeds the adapters' dropout."""
    from jaxalign.algorithms.optim import make_optimizer
    from jaxalign.train.step import make_train_step

    def build():
        optimizer = make_optimizer(optim_cfg)
        return (
            optimizer,
            make_train_step(graphdef, optimizer, loss_cfg, mesh=mesh, ref_graphdef=ref_graphdef,
                            dropout_seed=dropout_seed),
            logprob_function(graphdef, loss_cfg, mesh),
        )

    return _cached(("policy", graphdef, optim_cfg, loss_cfg, mesh, ref_graphdef, dropout_seed), build)


def logprob_function(graphdef, loss_cfg, mesh) -> Callable:
    """The jitted `logprob_fn(params, tokens, valid, positions)` of a graphdef (cached)."""
    from jaxalign.train.step import make_logprob_fn

    def build():
        return (make_logprob_fn(graphdef, temperature=loss_cfg.temperature, chunk_size=loss_cfg.logprob_chunk_size,
                                mesh=mesh),)

    return _cached(("logprob", graphdef, loss_cfg.temperature, loss_cfg.logprob_chunk_size, mesh), build)[0]


def critic_functions(kind: str, graphdef, optim_cfg, loss_cfg, mesh):
    """`(optimizer, step, value_fn)` of a critic graphdef (cached): `kind` "separate" gives
    `make_critic_train_step` for a `ValueModel`, "shared" `make_actor_critic_train_step` for an
    `ActorCritic`."""
    from jaxalign.train.critic import make_actor_critic_train_step, make_critic_train_step, make_value_fn
    from jaxalign.algorithms.optim import make_optimizer

    make_step = make_critic_train_step if kind == "separate" else make_actor_critic_train_step

    def build():
        optimizer = make_optimizer(optim_cfg)
        return optimizer, make_step(graphdef, optimizer, loss_cfg, mesh=mesh), make_value_fn(graphdef, mesh=mesh)

    return _cached((kind, graphdef, optim_cfg, loss_cfg, mesh), build)


def build_agents(config: ExperimentConfig, mesh, *, samplers: bool = True) -> dict[str, Agent]:
    """Every agent of the config (name -> `Agent`), in config order, each with its own parameters,
    optimizer state, reference and sampler (none with `samplers=False`: a run that generates nothing);
    LoRA agents on the same model spec and base dtype share one frozen base."""
    bases: dict = {}
    return {name: build_agent(spec, mesh, seed=config.seed, bases=bases, sampler=samplers)
            for name, spec in config.agents.items()}


def _lora_base(spec: AgentSpec, mesh, bases: dict | None):
    """`(base model, tokenizer)` of a LoRA agent: loaded in `lora.base_dtype`, or the one already loaded for
    another agent on the same spec and dtype (its weights shared, this agent's compute dtype and remat)."""
    import dataclasses as dc

    from flax import nnx

    from jaxalign.models import load_model
    from jaxalign.models.lora import base_graphdef

    base_dtype = spec.lora.base_dtype or spec.model.param_dtype
    key = (spec.model.spec, base_dtype, spec.model.init_from)
    if bases is not None and key in bases:
        model, tokenizer = bases[key]
        cfg = dc.replace(model.cfg, dtype=spec.model.dtype, remat=spec.model.remat)
        if cfg != model.cfg:
            model = nnx.merge(base_graphdef(cfg), nnx.state(model))
        return model, tokenizer
    model, tokenizer = load_model(spec.model.spec, mesh=mesh, role="train", param_dtype=_dtype(base_dtype),
                                  dtype=_dtype(spec.model.dtype), remat=spec.model.remat)
    _init_from(model, spec)
    if bases is not None:
        bases[key] = (model, tokenizer)
    return model, tokenizer


def _init_from(model, spec: AgentSpec) -> None:
    """`model.init_from`: the loaded weights are replaced by a run's (e.g. an SFT run's) latest policy weights,
    before the reference, critic and optimizer state are made from them."""
    if spec.model.init_from:
        from jaxalign.train.sft import init_from_run

        init_from_run(model, spec.model.init_from, agent=spec.name, spec=spec.model.spec)


def build_agent(spec: AgentSpec, mesh, *, seed: int = 0, bases: dict | None = None, sampler: bool = True
                ) -> Agent:
    """Loads an agent's model, its optimizer, reference, sampler (unless `sampler=False`) and (for "gae")
    critic. With LoRA, `bases` (a dict shared between calls) lets agents on the same base share its weights."""
    with_sampler = sampler
    from flax import nnx

    from jaxalign.models import load_model
    from jaxalign.rollout import Sampler
    from jaxalign.train.state import init_train_state

    loss_cfg = spec.algorithm.loss_config(spec.rollout.temperature)
    optim_cfg = spec.optim.optim_config()
    if spec.uses_lora:
        from jaxalign.models import lora as lora_lib

        base_model, tokenizer = _lora_base(spec, mesh, bases)
        check_vocab(base_model.cfg, tokenizer, spec.model.spec)
        lora_cfg = lora_lib.LoraConfig(rank=spec.lora.rank, alpha=float(spec.lora.alpha),
                                       targets=tuple(spec.lora.targets), dropout=float(spec.lora.dropout))
        model = lora_lib.add_lora(base_model, lora_cfg, seed=seed, mesh=mesh, role="train",
                                  dtype=_dtype(spec.model.param_dtype))
        graphdef, params, base_params = lora_lib.split_lora(model)
        ref_graphdef = lora_lib.base_graphdef(model.cfg)
        optimizer, train_step, logprob_fn = compiled_functions(graphdef, optim_cfg, loss_cfg, mesh,
                                                               ref_graphdef=ref_graphdef, dropout_seed=seed)
        train_step = functools.partial(train_step, frozen=base_params)
        ref_params = base_params if spec.algorithm.needs_reference else None
        ref_logprob_fn = logprob_function(ref_graphdef, loss_cfg, mesh)
        sampler = Sampler(model, tokenizer, mesh=mesh, max_prompt_len=spec.rollout.max_prompt_len,
                          lora_mode=spec.lora.sampler) if with_sampler else None
    else:
        model, tokenizer = load_model(
            spec.model.spec, mesh=mesh, role="train",
            param_dtype=_dtype(spec.model.param_dtype), dtype=_dtype(spec.model.dtype), remat=spec.model.remat,
        )
        base_model = model
        check_vocab(model.cfg, tokenizer, spec.model.spec)
        _init_from(model, spec)
        graphdef, params = nnx.split(model)
        base_params, ref_logprob_fn = None, None
        optimizer, train_step, logprob_fn = compiled_functions(graphdef, optim_cfg, loss_cfg, mesh)
        ref_params = jax.tree.map(jnp.copy, params) if spec.algorithm.needs_reference else None
        sampler = Sampler(model, tokenizer, mesh=mesh, max_prompt_len=spec.rollout.max_prompt_len) if with_sampler else None
    agent = Agent(name=spec.name, graphdef=graphdef, state=None, ref_params=ref_params, sampler=sampler,
                  train_step=train_step, logprob_fn=logprob_fn, spec=spec, tokenizer=tokenizer, model_cfg=model.cfg,
                  base_params=base_params, ref_logprob_fn=ref_logprob_fn)
    critic = spec.critic if spec.uses_critic else None
    if critic is None:
        agent.state = init_train_state(params, optimizer)
    elif critic.mode == "shared":
        from jaxalign.models.value import actor_critic_from_policy

        if critic.optim:
            log.warning("critic.optim is not used with critic.mode='shared': the policy's optim trains the "
                        "policy and its value head together")
        actor_critic = actor_critic_from_policy(model, head_init_std=critic.head_init_std, seed=seed, mesh=mesh)
        ac_graphdef, ac_params = nnx.split(actor_critic)
        ac_optimizer, ac_step, value_fn = critic_functions("shared", ac_graphdef, optim_cfg, loss_cfg, mesh)
        agent.state = init_train_state(ac_params, ac_optimizer)
        agent.train_step, agent.value_fn, agent.shared_critic = ac_step, value_fn, True
    else:
        from jaxalign.models.value import value_model_from_policy

        # With LoRA the critic starts from the base weights and is fully trained (its own copy).
        value_model = value_model_from_policy(base_model, head_init_std=critic.head_init_std, seed=seed, mesh=mesh)
        v_graphdef, v_params = nnx.split(value_model)
        c_optimizer, critic_step, value_fn = critic_functions(
            "separate", v_graphdef, critic.optim_config(spec.optim), loss_cfg, mesh
        )
        agent.state = init_train_state(params, optimizer)
        agent.critic_state = init_train_state(v_params, c_optimizer)
        agent.critic_step, agent.value_fn = critic_step, value_fn
    return agent
