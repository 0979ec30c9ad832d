"""The learner: one agent's `Samples` -> device batch -> update (the second stage of an RL step).

`prepare(agent, samples, mesh, timer)` lays the samples out as training sequences on the host
(`jaxalign.train.batching`), puts them on the mesh once, and computes on device the old and reference
log-probs, the critic's values (estimator "gae") and the advantages (and GAE returns) over the whole
batch. `update(agent, batch, step, seed)` runs epochs x mini-batches of jitted updates: the mini-batch
rows are gathered, their loss weights computed and the micro-batch axis made inside jit, so nothing goes
back to the host until the step's metrics are fetched, once, at the end. A separate critic is updated on
exactly the same micro-batches and weights as the policy; a shared value head in the policy's own update.
During `critic.critic_warmup_steps` only a separate critic is updated. A non-finite loss raises
`TrainingDiverged` before anything is saved.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign import sharding as sharding_lib
from jaxalign.train import batching, metrics as metrics_lib
from jaxalign.train.samples import Samples

PROMPT_BUCKET = 32  # context widths are rounded up to a multiple of this (fewer distinct jit shapes)

# Metrics of the shared actor-critic step that describe the critic (logged as critic/<name>).
CRITIC_METRICS = ("value_loss", "vf_clip_frac", "value_mean", "return_mean", "value_rmse", "explained_var")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last checkpoint on disk is from before it."""


@dataclasses.dataclass
class StepBatch:
    """One agent's whole step batch on the mesh, every array [n, t] (global arrays).

    `tokens`, `valid`, `positions`, `loss_mask` and `sampler_logp` are the sequences; `old_logp`,
    `ref_logp` (when a KL term needs it), `advantages` and, with a critic, `returns` and the `values` GAE
    used are computed by `prepare`. `trained_tokens` counts the valid tokens (for throughput).
    """

    tokens: Any
    valid: Any
    positions: Any
    loss_mask: Any
    sampler_logp: Any
    old_logp: Any
    advantages: Any
    ref_logp: Any | None = None
    returns: Any | None = None
    values: Any | None = None
    trained_tokens: int = 0


def prepare(agent, samples: Samples, mesh, timer: metrics_lib.PhaseTimer | None = None) -> StepBatch:
    """The step batch of `samples` for `agent` (see the module docstring); timed into `timer`'s
    logprobs, values and advantages phases."""
    timer = timer if timer is not None else metrics_lib.PhaseTimer()
    spec = agent.spec
    width = batching.bucket(samples.context_ids_np.shape[1], PROMPT_BUCKET, spec.rollout.max_prompt_len)
    seqs = batching.build_sequences(
        samples.context_ids_np, samples.context_mask_np, samples.response_ids_np, samples.response_mask_np,
        samples.logprobs_np, prompt_width=width, ok_n=samples.ok_n,
    )
    put = functools.partial(sharding_lib.put_batch, mesh=mesh)
    tokens, valid = put(seqs.tokens_nt), put(seqs.valid_nt.astype(bool))
    positions, loss_mask = put(batching.positions_np(seqs.valid_nt)), put(seqs.loss_mask_nt)
    sampler_logp = put(seqs.sampler_logp_nt)
    if spec.algorithm.recompute_old_logprobs:
        with timer("logprobs"):
            old_logp, _ = agent.logprob_fn(agent.policy_params, tokens, valid, positions)
            old_logp.block_until_ready()
    else:
        old_logp = sampler_logp
    ref_logp = None
    if agent.ref_params is not None:
        with timer("logprobs"):
            # The reference's own log-prob function when it has one (LoRA: the base with adapters off).
            ref_logp, _ = (agent.ref_logprob_fn or agent.logprob_fn)(agent.ref_params, tokens, valid, positions)
            ref_logp.block_until_ready()
    values = None
    if agent.has_critic:
        with timer("values"):
            values = agent.value_fn(agent.value_params, tokens, valid, positions)
            values.block_until_ready()
    with timer("advantages"):
        # Failed samples (ok_n False) count in no group statistic: their filled-in rewards are only there
        # to keep the arrays whole (`compute_advantages`' valid_n).
        advantages, returns = _advantages_jit(
            spec.algorithm.estimator, spec.algorithm.advantage_config(), put(samples.rewards_n),
            put(samples.group_ids_n), loss_mask, old_logp, ref_logp, values, put(samples.ok_n),
        )
        advantages.block_until_ready()
    return StepBatch(tokens=tokens, valid=valid, positions=positions, loss_mask=loss_mask,
                     sampler_logp=sampler_logp, old_logp=old_logp, advantages=advantages, ref_logp=ref_logp,
                     returns=returns if agent.has_critic else None, values=values,
                     trained_tokens=int(seqs.valid_nt.sum()))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _advantages_jit(name, cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt, ref_logp_nt, values_nt=None,
                    valid_n=None):
    from jaxalign.algorithms.advantages import compute_advantages

    return compute_advantages(name, cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt, ref_logp_nt, values_nt,
                              valid_n)


def _policy_keys(agent, loss_cfg) -> tuple[str, ...]:
    keys = ["tokens", "valid", "positions", "loss_mask", "old_logp", "advantages"]
    if loss_cfg.tis_cap is not None:
        keys.append("sampler_logp")
    if agent.ref_params is not None and loss_cfg.kl_in_loss:
        keys.append("ref_logp")
    if agent.shared_critic:
        keys += ["returns", "old_values"]
    return tuple(keys)


CRITIC_KEYS = ("tokens", "valid", "positions", "loss_mask", "returns", "old_values")


@functools.partial(jax.jit, static_argnames=("micro_batches", "aggregation", "constant", "mesh"))
def _minibatch(arrays: dict, index_b, *, micro_batches: int, aggregation: str, constant, mesh):
    """Rows `index_b` of every [n, t] array, with their loss weights over the whole mini-batch, split into
    [micro_batches, b / micro_batches, t] (the batch axis over the mesh's data axes)."""
    from jaxalign.algorithms.losses import loss_weights

    mini = {k: jnp.take(v, index_b, axis=0) for k, v in arrays.items()}
    mini["loss_weights"] = loss_weights(mini["loss_mask"], aggregation, constant)
    out = {k: v.reshape(micro_batches, v.shape[0] // micro_batches, *v.shape[1:]) for k, v in mini.items()}
    if mesh is not None:
        sharding = NamedSharding(mesh, PartitionSpec(None, sharding_lib.BATCH_AXES))
        out = {k: jax.lax.with_sharding_constraint(v, sharding) for k, v in out.items()}
    return out


def update(agent, batch: StepBatch, step: int, seed: int, mesh=None) -> tuple[dict[str, float], dict[str, float]]:
    """Epochs x mini-batches of jitted updates of `agent` on `batch`; returns the means of the policy's and
    the critic's update metrics (fetched from the device once)."""
    a = agent.spec.algorithm
    loss_cfg = a.loss_config(agent.spec.rollout.temperature)
    arrays = {"tokens": batch.tokens, "valid": batch.valid, "positions": batch.positions,
              "loss_mask": batch.loss_mask, "old_logp": batch.old_logp, "advantages": batch.advantages,
              "sampler_logp": batch.sampler_logp}
    if batch.ref_logp is not None:
        arrays["ref_logp"] = batch.ref_logp
    if agent.has_critic:
        arrays["returns"] = batch.returns
        arrays["old_values"] = batch.values * batch.loss_mask
    policy_keys = _policy_keys(agent, loss_cfg)
    critic = agent.spec.critic
    train_policy = not (critic is not None and agent.critic_step is not None
                        and step <= critic.critic_warmup_steps)
    needed = (set(policy_keys) if train_policy else set()) | (set(CRITIC_KEYS) if agent.critic_step else set())
    arrays = {k: v for k, v in arrays.items() if k in needed}
    policy_out, critic_out = [], []
    num_rows = int(batch.tokens.shape[0])
    for epoch in range(a.epochs):
        for index in batching.split_minibatches(num_rows, a.mini_batches, seed, step, epoch):
            device = _minibatch(arrays, jnp.asarray(index, jnp.int32), micro_batches=a.micro_batches,
                                aggregation=loss_cfg.aggregation, constant=loss_cfg.constant_normalizer,
                                mesh=mesh)
            if train_policy:
                agent.state, metrics = agent.train_step(
                    agent.state, {k: device[k] for k in (*policy_keys, "loss_weights")})
                policy_out.append(metrics)
            if agent.critic_step is not None:
                agent.critic_state, metrics = agent.critic_step(
                    agent.critic_state, {k: device[k] for k in (*CRITIC_KEYS, "loss_weights")})
                critic_out.append(metrics)
    policy_out, critic_out = sharding_lib.to_host((policy_out, critic_out))
    policy_out = [{k: float(v) for k, v in m.items()} for m in policy_out]
    critic_out = [{k: float(v) for k, v in m.items()} for m in critic_out]
    for metrics in policy_out:
        check_finite(metrics, step, "actor-critic" if agent.shared_critic else "policy", agent.name)
    for metrics in critic_out:
        check_finite(metrics, step, "critic", agent.name)
    if agent.shared_critic:
        critic_out = [{k: m.pop(k) for k in CRITIC_METRICS} for m in policy_out]
    critic_means = {k.replace("loss/", "critic/", 1): v for k, v in metrics_lib.mean_update_metrics(critic_out).items()}
    return metrics_lib.mean_update_metrics(policy_out), critic_means


def check_finite(metrics: dict[str, float], step: int, what: str, agent: str = "") -> None:
    """Raises `TrainingDiverged` when any loss metric of an update is NaN or Inf."""
    losses = {k: v for k, v in metrics.items() if "loss" in k}
    if not all(math.isfinite(v) for v in losses.values()):
        who = f" of agent {agent!r}" if agent else ""
        raise TrainingDiverged(
            f"non-finite loss at step {step} in the {what} update{who} ({losses}); stopped before saving, so the "
            "last checkpoint is the last good state. Lower the learning rate, enable grad clipping "
            "(optim.grad_clip_norm, critic.optim.grad_clip_norm) or use float32 parameters"
        )
