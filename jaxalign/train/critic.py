"""PPO's learned critic: per-token values, the clipped value loss, and jitted critic / actor-critic updates.

Values follow the value layout of `jaxalign.models.value` (column c holds the value of the state before
token c, aligned with `logp_bt[:, c]`), so the critic's values of a rollout's response are
`response_columns(values_bt, P)` and GAE's returns go back with `place_response(returns_nr, P)`.

Critic batch (dict of [m, b, t] arrays, micro-batch axis first, as for `train_step`):

    tokens int32, valid bool, positions int32     the sequences (prompt + response)
    loss_mask float32                              1 on response tokens trained on
    loss_weights float32                           `loss_weights(mask of the whole mini-batch, mode)`
    returns float32                                GAE returns (critic targets), 0 off the response
    old_values float32                             the values GAE used (required when value_clip is set)

Per-token loss (`algorithms.losses.value_loss`): `0.5 * (V - R)^2`, or with `value_clip = c`
`0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`; the micro-batch loss is
`sum(loss_weights * loss_t)`, so micro-batches and data shards add up to the full-batch gradient exactly,
as in `train/step.py` (whose accumulation, update and jit helpers are reused here).

* `make_value_fn(graphdef, mesh=None)`: jitted `value_fn(params, tokens_bt, valid_bt, positions_bt) ->
  values_bt` for a `ValueModel` or an `ActorCritic` graphdef (no gradient).
* `make_critic_train_step(graphdef, optimizer, loss_cfg, mesh=None)`: a separate critic (`ValueModel`).
  `critic_step(state, batch) -> (state, metrics)`; `loss_cfg.value_coef` is not applied (for a model
  trained alone it is just a learning-rate scale).
* `make_actor_critic_train_step(graphdef, optimizer, loss_cfg, mesh=None)`: shared trunk (`ActorCritic`).
  `step(state, batch) -> (state, metrics)` minimises `policy_objective + value_coef * value_loss` in one
  update; the batch is the policy batch of `train_step` plus `returns` (and `old_values`). KL in the loss
  needs `ref_logp` in the batch (compute it with `make_logprob_fn` on the reference).

With a mesh the state keeps its shardings, the batch is split over ("data", "fsdp") along b, metrics come
back replicated and the state is donated (do not reuse the state passed in).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxalign.algorithms.logprobs import logprobs_from_hidden
from jaxalign.algorithms.losses import (
    LossConfig,
    combine_metrics,
    finalize_metrics,
    policy_objective,
    value_loss,
)
from jaxalign.train.state import TrainState
from jaxalign.train.step import (
    OPTIONAL_KEYS,
    REQUIRED_KEYS,
    accumulate_gradients,
    apply_gradients,
    check_batch_keys,
    empty_metric_sums,
    jit_over_rows,
    jit_step,
)

CRITIC_REQUIRED_KEYS = ("tokens", "valid", "positions", "loss_mask", "loss_weights", "returns")
CRITIC_OPTIONAL_KEYS = ("old_values",)
VALUE_METRIC_SUMS = (
    "value_loss", "vf_clipped_sum", "value_sum", "return_sum", "return_sq_sum", "value_err_sum",
    "value_err_sq_sum", "value_tokens",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The value objective and its additive metrics.


def value_objective(
    value_clip: float | None, values_nt, old_values_nt, returns_nt, weights_nt, mask_nt
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(loss, sums)` for a micro-batch: `loss = sum(weights * mask * value_loss_t)` (module doc).

    `sums` (keys `VALUE_METRIC_SUMS`) add over micro-batches and shards: the weighted loss, and plain sums
    over loss tokens of the clip indicator (the clipped branch strictly larger, so its gradient is the
    one used), V, R, R^2, R - V, (R - V)^2 and the token count. `old_values_nt` may be None without clipping.
    """
    mask_nt = mask_nt.astype(jnp.float32)
    weights_nt = weights_nt.astype(jnp.float32) * mask_nt
    if value_clip is not None and old_values_nt is None:
        raise ValueError("value_clip is set: the critic batch needs 'old_values'")
    if old_values_nt is None:
        old_values_nt = jax.lax.stop_gradient(values_nt)
    loss_nt = value_loss(values_nt, old_values_nt, returns_nt, value_clip)
    loss = jnp.sum(weights_nt * loss_nt)
    sg = jax.lax.stop_gradient
    values_nt = sg(values_nt)
    if value_clip is None:
        clipped_nt = jnp.zeros_like(values_nt)
    else:
        clipped_values_nt = old_values_nt + jnp.clip(values_nt - old_values_nt, -value_clip, value_clip)
        clipped_nt = (jnp.square(clipped_values_nt - returns_nt) > jnp.square(values_nt - returns_nt))
        clipped_nt = clipped_nt.astype(jnp.float32)
    err_nt = returns_nt - values_nt
    sums = {
        "value_loss": sg(loss),
        "vf_clipped_sum": jnp.sum(clipped_nt * mask_nt),
        "value_sum": jnp.sum(values_nt * mask_nt),
        "return_sum": jnp.sum(returns_nt * mask_nt),
        "return_sq_sum": jnp.sum(jnp.square(returns_nt) * mask_nt),
        "value_err_sum": jnp.sum(err_nt * mask_nt),
        "value_err_sq_sum": jnp.sum(jnp.square(err_nt) * mask_nt),
        "value_tokens": jnp.sum(mask_nt),
    }
    return loss, sums


def empty_value_sums() -> dict[str, jax.Array]:
    """The identity for combining `value_objective` sums (all additive)."""
    return {k: jnp.zeros((), jnp.float32) for k in VALUE_METRIC_SUMS}


def _add_sums(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: a[k] + b[k] for k in a}


def finalize_value_metrics(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Reportable critic metrics from combined sums: value_loss (the weighted objective), vf_clip_frac,
    value_mean, return_mean, value_rmse (token RMS of R - V) and explained_var = 1 - Var(R - V) / Var(R)
    over loss tokens (0 when the returns do not vary)."""
    tokens = jnp.maximum(sums["value_tokens"], 1.0)
    return_mean = sums["return_sum"] / tokens
    return_var = jnp.maximum(sums["return_sq_sum"] / tokens - jnp.square(return_mean), 0.0)
    err_mean = sums["value_err_sum"] / tokens
    err_sq_mean = sums["value_err_sq_sum"] / tokens
    err_var = jnp.maximum(err_sq_mean - jnp.square(err_mean), 0.0)
    varies = return_var > 1e-8
    return {
        "value_loss": sums["value_loss"],
        "vf_clip_frac": sums["vf_clipped_sum"] / tokens,
        "value_mean": sums["value_sum"] / tokens,
        "return_mean": return_mean,
        "value_rmse": jnp.sqrt(err_sq_mean),
        "explained_var": jnp.where(varies, 1.0 - err_var / jnp.where(varies, return_var, 1.0), 0.0),
    }


# ---------------------------------------------------------------------------------------------------------
# Values.


def _token_values(graphdef, params, tokens_bt, valid_bt, positions_bt):
    model = nnx.merge(graphdef, params)
    if not hasattr(model, "token_values"):
        raise ValueError(f"{type(model).__name__} has no value head; use a ValueModel or an ActorCritic")
    return model.token_values(tokens_bt, valid_bt, positions_bt)


def make_value_fn(graphdef: nnx.GraphDef, *, mesh: Mesh | None = None) -> Callable[..., jax.Array]:
    """Jitted `value_fn(params, tokens_bt, valid_bt, positions_bt) -> values_bt` float32 in the value
    layout, for a `ValueModel` or `ActorCritic` graphdef. With a mesh the [b, t] inputs and output are split
    over ("data", "fsdp") along b; the parameters keep their own shardings."""

    def fn(params, tokens_bt, valid_bt, positions_bt):
        return _token_values(graphdef, params, tokens_bt, valid_bt, positions_bt)

    return jit_over_rows(fn, mesh, num_outputs=1)


# ---------------------------------------------------------------------------------------------------------
# Steps.


def _check_value_batch(batch: Mapping[str, Any], loss_cfg: LossConfig) -> None:
    if loss_cfg.value_clip is not None and "old_values" not in batch:
        raise ValueError(f"value_clip={loss_cfg.value_clip} needs batch['old_values'] (the values GAE used)")


def _compiling(step: Callable, mesh: Mesh | None, check: Callable[[Mapping[str, Any]], None]):
    """Wraps a `step(state, batch, None)` with checks and one compilation per set of batch keys."""
    compiled: dict[Any, Callable] = {}

    def run(state: TrainState, batch: Mapping[str, Any]):
        check(batch)
        key = tuple(sorted(batch))
        if key not in compiled:
            compiled[key] = jit_step(step, state, batch, None, mesh)
        return compiled[key](state, dict(batch), None)

    return run


def make_critic_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_cfg: LossConfig,
    *,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, dict[str, jax.Array]]]:
    """`critic_step(state, batch) -> (state, metrics)` for a separate critic (module doc).

    `state` is a `TrainState` over the critic's params (`init_train_state(nnx.split(value_model)[1],
    optimizer)`); `loss_cfg.value_clip` sets the clipping. Metrics: loss (= value_loss), value_loss,
    vf_clip_frac, value_mean, return_mean, value_rmse, explained_var, tokens, grad_norm (before clipping).
    """

    def micro_loss(params, micro):
        values_bt = _token_values(graphdef, params, micro["tokens"], micro["valid"], micro["positions"])
        return value_objective(loss_cfg.value_clip, values_bt, micro.get("old_values"), micro["returns"],
                               micro["loss_weights"], micro["loss_mask"])

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array], extra):
        del extra
        grads, sums = accumulate_gradients(grad_fn, state.params, batch, empty_value_sums(), _add_sums)
        metrics = finalize_value_metrics(sums)
        metrics.update(loss=sums["value_loss"], tokens=sums["value_tokens"], grad_norm=optax.global_norm(grads))
        return apply_gradients(optimizer, state, grads), metrics

    def check(batch):
        check_batch_keys(batch, CRITIC_REQUIRED_KEYS, CRITIC_OPTIONAL_KEYS, what="critic")
        _check_value_batch(batch, loss_cfg)

    return _compiling(step, mesh, check)


def make_actor_critic_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_cfg: LossConfig,
    *,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, dict[str, jax.Array]]]:
    """`step(state, batch) -> (state, metrics)` for an `ActorCritic` (shared trunk): one update of
    `policy_objective + loss_cfg.value_coef * value_loss` (gradient flow: `jaxalign.models.value`).

    The batch is `train_step`'s (tokens, valid, positions, loss_mask, loss_weights, advantages, old_logp,
    optional ref_logp / sampler_logp) plus `returns` and `old_values`; policy and value terms share the
    per-token loss weights. Metrics: the policy metrics of `train_step` ("loss" is the policy objective),
    the critic metrics of `make_critic_train_step` (value_loss unscaled), total_loss = loss + value_coef *
    value_loss, and grad_norm of the combined gradient.
    """
    temperature, chunk = loss_cfg.temperature, loss_cfg.logprob_chunk_size
    value_coef = loss_cfg.value_coef

    def micro_loss(params, micro):
        model = nnx.merge(graphdef, params)
        hidden_btd, values_bt = model.hidden_and_values(micro["tokens"], micro["valid"], micro["positions"])
        logp_bt, entropy_bt = logprobs_from_hidden(
            hidden_btd, model.policy.unembed_matrix(), micro["tokens"], micro["valid"],
            temperature=temperature, chunk_size=chunk,
        )
        if loss_cfg.entropy_coef == 0:
            entropy_bt = jax.lax.stop_gradient(entropy_bt)
        policy_loss, policy_sums = policy_objective(
            loss_cfg, logp_bt, micro["old_logp"], micro["advantages"], micro["loss_weights"],
            micro["loss_mask"], ref_logp_nt=micro.get("ref_logp"), entropy_nt=entropy_bt,
            sampler_logp_nt=micro.get("sampler_logp"),
        )
        v_loss, value_sums = value_objective(loss_cfg.value_clip, values_bt, micro.get("old_values"),
                                             micro["returns"], micro["loss_weights"], micro["loss_mask"])
        return policy_loss + value_coef * v_loss, {**policy_sums, **value_sums}

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array], extra):
        del extra
        init = {**empty_metric_sums(), **empty_value_sums()}
        grads, sums = accumulate_gradients(grad_fn, state.params, batch, init, combine_metrics)
        metrics = {**finalize_metrics(sums), **finalize_value_metrics(sums)}
        metrics["total_loss"] = metrics["loss"] + value_coef * metrics["value_loss"]
        metrics["grad_norm"] = optax.global_norm(grads)
        return apply_gradients(optimizer, state, grads), metrics

    def check(batch):
        check_batch_keys(batch, REQUIRED_KEYS + ("returns",), OPTIONAL_KEYS + CRITIC_OPTIONAL_KEYS,
                         what="actor-critic")
        _check_value_batch(batch, loss_cfg)
        if loss_cfg.kl_in_loss and "ref_logp" not in batch:
            raise ValueError("kl_in='loss' with a shared-trunk critic needs batch['ref_logp'] (compute it with "
                             "make_logprob_fn on the reference parameters)")
        if loss_cfg.tis_cap is not None and "sampler_logp" not in batch:
            raise ValueError("tis_cap is set: the batch needs 'sampler_logp'")

    return _compiling(step, mesh, check)
