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
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import sharding as sharding_lib
from jaxalign.config import ConfigError, ExperimentConfig
from jaxalign.train import batching

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
    sampler: Any
    train_step: Callable
    logprob_fn: Callable
    value_fn: Callable | None = None
    critic_state: Any | None = None  # TrainState of a separate ValueModel
    critic_step: Callable | None = None
    shared_critic: bool = False

    @property
    def has_critic(self) -> bool:
        return self.value_fn is not None

    @property
    def policy_params(self) -> Any:
        """The policy's parameters (what the sampler, `logprob_fn` and export take)."""
        return self.state.params["policy"] if self.shared_critic else self.state.params

    @property
    def value_params(self) -> Any:
        """The parameters `value_fn` takes (the ValueModel's, or the whole ActorCritic's)."""
        if not self.has_critic:
            raise ValueError(f"agent {self.name!r} has no critic")
        return self.state.params if self.shared_critic else self.critic_state.params


def state_tree(agents: list[Agent]) -> dict:
    """The checkpointed pytree: per agent its train state and, with a separate critic, `critic`."""
    out = []
    for a in agents:
        entry = {"params": a.state.params, "opt_state": a.state.opt_state, "step": a.state.step}
        if a.critic_state is not None:
            entry["critic"] = {"params": a.critic_state.params, "opt_state": a.critic_state.opt_state,
                               "step": a.critic_state.step}
        out.append(entry)
    return {"agents": out}


def load_state_tree(agents: list[Agent], tree: dict) -> None:
    """Puts a restored `state_tree` back into the agents and refreshes their samplers."""
    for a, saved in zip(agents, tree["agents"]):
        a.state = dataclasses.replace(a.state, params=saved["params"], opt_state=saved["opt_state"],
                                      step=saved["step"])
        if a.critic_state is not None:
            c = saved["critic"]
            a.critic_state = dataclasses.replace(a.critic_state, params=c["params"], opt_state=c["opt_state"],
                                                 step=c["step"])
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


def compiled_functions(graphdef, optim_cfg, loss_cfg, mesh):
    """`(optimizer, train_step, logprob_fn)` of a policy graphdef (cached)."""
    from jaxalign.train.state import make_optimizer
    from jaxalign.train.step import make_logprob_fn, make_train_step

    def build():
        optimizer = make_optimizer(optim_cfg)
        return (
            optimizer,
            make_train_step(graphdef, optimizer, loss_cfg, mesh=mesh),
            make_logprob_fn(graphdef, temperature=loss_cfg.temperature, chunk_size=loss_cfg.logprob_chunk_size,
                            mesh=mesh),
        )

    return _cached(("policy", graphdef, optim_cfg, loss_cfg, mesh), build)


def critic_functions(kind: str, graphdef, optim_cfg, loss_cfg, mesh):
    """`(optimizer, step, value_fn)` of a critic graphdef (cached): `kind` "separate" gives
    `make_critic_train_step` for a `ValueModel`, "shared" `make_actor_critic_train_step` for an
    `ActorCritic`."""
    from jaxalign.train.critic import make_actor_critic_train_step, make_critic_train_step, make_value_fn
    from jaxalign.train.state import make_optimizer

    make_step = make_critic_train_step if kind == "separate" else make_actor_critic_train_step

    def build():
        optimizer = make_optimizer(optim_cfg)
        return optimizer, make_step(graphdef, optimizer, loss_cfg, mesh=mesh), make_value_fn(graphdef, mesh=mesh)

    return _cached((kind, graphdef, optim_cfg, loss_cfg, mesh), build)


def build_agent(config: ExperimentConfig, mesh, name: str = "policy") -> tuple[Agent, Any, Any]:
    """Loads the model, its optimizer, reference, sampler and (for "gae") critic; returns (agent, tokenizer,
    model config)."""
    from flax import nnx

    from jaxalign.models import load_model
    from jaxalign.rollout import Sampler
    from jaxalign.train.state import init_train_state

    model, tokenizer = load_model(
        config.model.spec, mesh=mesh, role="train",
        param_dtype=_dtype(config.model.param_dtype), dtype=_dtype(config.model.dtype), remat=config.model.remat,
    )
    check_vocab(model.cfg, tokenizer, config.model.spec)
    graphdef, params = nnx.split(model)
    loss_cfg = config.algorithm.loss_config(config.rollout.temperature)
    optim_cfg = config.optim.optim_config()
    optimizer, train_step, logprob_fn = compiled_functions(graphdef, optim_cfg, loss_cfg, mesh)
    ref_params = jax.tree.map(jnp.copy, params) if config.algorithm.needs_reference else None
    sampler = Sampler(model, tokenizer, mesh=mesh, max_prompt_len=config.rollout.max_prompt_len)
    agent = Agent(name=name, graphdef=graphdef, state=None, ref_params=ref_params, sampler=sampler,
                  train_step=train_step, logprob_fn=logprob_fn)
    critic = config.critic if config.uses_critic else None
    if critic is None:
        agent.state = init_train_state(params, optimizer)
    elif critic.mode == "shared":
        from jaxalign.models.value import actor_critic_from_policy

        if critic.optim:
            log.warning("critic.optim is not used with critic.mode='shared': the policy's optim trains the "
                        "policy and its value head together")
        actor_critic = actor_critic_from_policy(model, head_init_std=critic.head_init_std, seed=config.seed,
                                                mesh=mesh)
        ac_graphdef, ac_params = nnx.split(actor_critic)
        ac_optimizer, ac_step, value_fn = critic_functions("shared", ac_graphdef, optim_cfg, loss_cfg, mesh)
        agent.state = init_train_state(ac_params, ac_optimizer)
        agent.train_step, agent.value_fn, agent.shared_critic = ac_step, value_fn, True
    else:
        from jaxalign.models.value import value_model_from_policy

        value_model = value_model_from_policy(model, head_init_std=critic.head_init_std, seed=config.seed,
                                              mesh=mesh)
        v_graphdef, v_params = nnx.split(value_model)
        c_optimizer, critic_step, value_fn = critic_functions(
            "separate", v_graphdef, critic.optim_config(config.optim), loss_cfg, mesh
        )
        agent.state = init_train_state(params, optimizer)
        agent.critic_state = init_train_state(v_params, c_optimizer)
        agent.critic_step, agent.value_fn = critic_step, value_fn
    return agent, tokenizer, model.cfg


# ---------------------------------------------------------------------------------------------------------
# One step's update of an agent (policy and critic on the same mini-batches).

# Metrics of the shared actor-critic step that describe the critic (logged as critic/<name>).
CRITIC_METRICS = ("value_loss", "vf_clip_frac", "value_mean", "return_mean", "value_rmse", "explained_var")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last checkpoint on disk is from before it."""


@dataclasses.dataclass
class StepBatch:
    """The per-token arrays of one step's whole batch [n, t] (global arrays): the old and reference
    log-probs, the advantages and, with a critic, the GAE returns and the values GAE used."""

    old_logp: Any
    ref_logp: Any | None
    advantages: Any
    returns: Any | None = None
    values: Any | None = None


def _host_floats(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in sharding_lib.to_host(metrics).items()}


def check_finite(metrics: dict[str, float], step: int, what: str) -> None:
    """Raises `TrainingDiverged` when any loss metric of an update is NaN or Inf."""
    losses = {k: v for k, v in metrics.items() if "loss" in k}
    if not all(math.isfinite(v) for v in losses.values()):
        raise TrainingDiverged(
            f"non-finite loss at step {step} in the {what} update ({losses}); stopped before saving, so the "
            "last checkpoint is the last good state. Lower the learning rate, enable grad clipping "
            "(optim.grad_clip_norm, critic.optim.grad_clip_norm) or use float32 parameters"
        )


def update_agent(config: ExperimentConfig, agent: Agent, seqs, batch: StepBatch, step: int,
                 to_device: Callable[[np.ndarray], Any]) -> tuple[list[dict], list[dict]]:
    """Epochs x mini-batches of jitted updates; returns the per-update (policy, critic) metrics.

    Every mini-batch gets loss weights over the whole mini-batch and is split into micro-batches; a
    separate critic is updated on exactly the same micro-batches and weights as the policy (targets:
    the GAE returns, clipping around the values GAE used), a shared head in the policy's own update.
    During `critic.critic_warmup_steps` only a separate critic is updated. `to_device` turns a host
    [m, b, t] array into a global array split along b.
    """
    from jaxalign.algorithms.losses import loss_weights

    a, loss_cfg = config.algorithm, config.algorithm.loss_config(config.rollout.temperature)
    # Whole arrays, on every host (`dataclasses.asdict` would deep-copy the device arrays first).
    batch = StepBatch(**sharding_lib.to_host({f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}))
    host = {
        "tokens": seqs.tokens_nt, "valid": seqs.valid_nt.astype(bool), "positions": batching.positions_np(seqs.valid_nt),
        "loss_mask": seqs.loss_mask_nt, "old_logp": np.asarray(batch.old_logp),
        "advantages": np.asarray(batch.advantages),
    }
    if loss_cfg.tis_cap is not None:
        host["sampler_logp"] = seqs.sampler_logp_nt
    if batch.ref_logp is not None and loss_cfg.kl_in_loss:
        host["ref_logp"] = np.asarray(batch.ref_logp)
    if agent.has_critic:
        host["returns"] = np.asarray(batch.returns)
        host["old_values"] = np.asarray(batch.values) * seqs.loss_mask_nt
    critic_keys = ("tokens", "valid", "positions", "loss_mask", "loss_weights", "returns", "old_values")
    policy_keys = [k for k in host if agent.shared_critic or k not in ("returns", "old_values")] + ["loss_weights"]
    train_policy = not (config.critic and agent.critic_step is not None
                        and step <= config.critic.critic_warmup_steps)
    policy_out, critic_out = [], []
    for epoch in range(a.epochs):
        for index in batching.split_minibatches(len(seqs.tokens_nt), a.mini_batches, config.seed, step, epoch):
            mini = {k: v[index] for k, v in host.items()}
            mini["loss_weights"] = loss_weights(mini["loss_mask"], loss_cfg.aggregation, loss_cfg.constant_normalizer)
            device = {k: to_device(batching.to_micro_batches(v, a.micro_batches)) for k, v in mini.items()}
            if train_policy:
                agent.state, metrics = agent.train_step(agent.state, {k: device[k] for k in policy_keys})
                metrics = _host_floats(metrics)
                check_finite(metrics, step, "actor-critic" if agent.shared_critic else "policy")
                if agent.shared_critic:
                    critic_out.append({k: metrics.pop(k) for k in CRITIC_METRICS})
                policy_out.append(metrics)
            if agent.critic_step is not None:
                agent.critic_state, metrics = agent.critic_step(agent.critic_state, {k: device[k] for k in critic_keys})
                metrics = _host_floats(metrics)
                check_finite(metrics, step, "critic")
                critic_out.append(metrics)
    return policy_out, critic_out
