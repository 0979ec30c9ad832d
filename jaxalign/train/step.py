"""The pure, jitted policy update and log-prob recomputation.

`make_train_step(graphdef, optimizer, loss_cfg, mesh=...)` returns `train_step(state, batch, ref_params=None)
-> (state, metrics)`. The batch is a dict of arrays with a leading micro-batch axis [m, b, t] (see
`jaxalign.train.batching`):

    tokens int32, valid bool, positions int32     the sequences (prompt + response)
    loss_mask float32                              1 on response tokens trained on
    loss_weights float32                           `loss_weights(mask of the whole mini-batch, mode)`
    advantages float32, old_logp float32           per token, aligned with `tokens`
    ref_logp float32 (optional)                    reference log-probs, when KL is in the loss
    sampler_logp float32 (optional)                the sampler's log-probs, when `tis_cap` is set

Gradients of `sum(loss_weights * per_token_loss)` are summed over the m micro-batches with `lax.scan`, then
one optimizer update is applied. Because the weights are normalised over the whole mini-batch, the result
equals the full-batch gradient for every aggregation mode, micro-batch count and data sharding.

With a mesh, the state keeps the shardings it was created with (parameters per the sharding rules, optimizer
moments like their parameters), the batch is split over ("data", "fsdp") along b, and the state's buffers are
donated: the state passed in must not be used again.

The pieces are shared with the critic updates (`jaxalign.train.critic`): `accumulate_gradients` (the scan
over micro-batches), `apply_gradients` (one optimizer update), `check_batch_keys` and `jit_step` (shardings
and donation).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign.algorithms.logprobs import sequence_logprobs, token_set_probs_from_hidden
from jaxalign.algorithms.losses import (
    METRIC_MAXES,
    METRIC_MINS,
    METRIC_SUMS,
    LossConfig,
    combine_metrics,
    finalize_metrics,
    policy_objective,
)
from jaxalign.train.state import TrainState, state_shardings

BATCH_AXES = ("data", "fsdp")
_DROPOUT_KEY = "_lora_dropout_key"  # per-micro-batch dropout keys, added inside the step (LoRA dropout)
REQUIRED_KEYS = ("tokens", "valid", "positions", "loss_mask", "loss_weights", "advantages", "old_logp")
OPTIONAL_KEYS = ("ref_logp", "sampler_logp")


def _logprobs(graphdef, params, tokens_bt, valid_bt, positions_bt, temperature, chunk_size, frozen=None,
              lora_dropout_key=None):
    """Log-probs and entropies of the model `graphdef` with `params` (and, for LoRA, the `frozen` base)."""
    model = nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)
    if lora_dropout_key is None:
        return sequence_logprobs(
            model, tokens_bt, valid_bt, positions_bt=positions_bt, temperature=temperature, chunk_size=chunk_size
        )
    return sequence_logprobs(
        lambda t_bt, v_bt: model.hidden_states(t_bt, v_bt, positions_bt, lora_dropout_key=lora_dropout_key),
        tokens_bt, valid_bt, w_dv=model.unembed_matrix(), temperature=temperature, chunk_size=chunk_size,
    )


def _lora_dropout(graphdef, params, frozen) -> bool:
    """Whether the model has LoRA adapters with dropout (decided at trace time from the static graph)."""
    if frozen is None:
        return False
    adapters = getattr(nnx.merge(graphdef, params, frozen).layers, "lora", None)
    return adapters is not None and adapters.dropout > 0


def empty_metric_sums() -> dict[str, jax.Array]:
    """The identity of `combine_metrics` for the policy objective's metric sums."""
    big = jnp.finfo(jnp.float32).max
    sums = {k: jnp.zeros((), jnp.float32) for k in METRIC_SUMS}
    sums.update({k: jnp.full((), -big, jnp.float32) for k in METRIC_MAXES})
    sums.update({k: jnp.full((), big, jnp.float32) for k in METRIC_MINS})
    return sums


def check_batch_keys(batch: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...],
                     what: str = "train") -> None:
    """Raises ValueError unless `batch` has every `required` key, no key outside `required + optional`,
    and all arrays share one [micro_batches, batch, time] shape."""
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"{what} batch is missing {missing}; required keys: {required}")
    unknown = [k for k in batch if k not in required + optional]
    if unknown:
        raise ValueError(f"{what} batch has unknown keys {unknown}; allowed: {required + optional}")
    shape = batch["tokens"].shape
    if len(shape) != 3:
        raise ValueError(f"{what} batch arrays must be [micro_batches, batch, time], tokens has shape {shape}")
    for key, value in batch.items():
        if value.shape != shape:
            raise ValueError(f"batch[{key!r}] has shape {value.shape}, expected {shape} like 'tokens'")


def _check_batch(batch: Mapping[str, Any], loss_cfg: LossConfig, has_ref_params: bool) -> None:
    check_batch_keys(batch, REQUIRED_KEYS, OPTIONAL_KEYS)
    if loss_cfg.kl_in_loss and "ref_logp" not in batch and not has_ref_params:
        raise ValueError("kl_in='loss' needs batch['ref_logp'] or ref_params")
    if loss_cfg.tis_cap is not None and "sampler_logp" not in batch:
        raise ValueError("tis_cap is set: the batch needs 'sampler_logp'")


def accumulate_gradients(
    grad_fn: Callable[[Any, dict[str, jax.Array]], tuple[tuple[jax.Array, dict], Any]],
    params: Any,
    batch: Mapping[str, jax.Array],
    init_sums: dict[str, jax.Array],
    combine: Callable[[dict, dict], dict] = combine_metrics,
) -> tuple[Any, dict[str, jax.Array]]:
    """Sums `grad_fn(params, micro) -> ((loss, sums), grads)` over the leading micro-batch axis of `batch`
    with `lax.scan`: returns `(summed grads, combined sums)`. With per-token weights normalised over the
    whole mini-batch, the summed gradient is the full-batch gradient for any micro-batch count."""

    def body(carry, micro):
        grads_acc, sums_acc = carry
        (_, sums), grads = grad_fn(params, micro)
        return (jax.tree.map(jnp.add, grads_acc, grads), combine(sums_acc, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, sums), _ = jax.lax.scan(body, (zeros, init_sums), dict(batch))
    return grads, sums


def apply_gradients(optimizer: optax.GradientTransformation, state: TrainState, grads: Any) -> TrainState:
    """One optimizer update of `state` with (accumulated) `grads`; increments `state.step`."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state)


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_cfg: LossConfig,
    *,
    mesh: Mesh | None = None,
    role: str = "train",
    ref_graphdef: nnx.GraphDef | None = None,
    dropout_seed: int = 0,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `train_step(state, batch, ref_params=None, frozen=None) -> (new_state, metrics)` (see module doc).

    `ref_params` (the frozen reference) is only used when KL is in the loss and the batch carries no
    'ref_logp'; its log-probs are then computed inside the step, per micro-batch, without gradient, with
    `ref_graphdef` (default `graphdef`; for LoRA the base's graphdef, the reference being the base).
    LoRA: `state.params` holds only the adapters and `frozen` the base weights (`jaxalign.models.lora`):
    gradients, optimizer state and donation cover the adapters alone. Adapter dropout draws its masks from
    `(dropout_seed, state.step, micro-batch)`, so a resumed run repeats them.
    `role` names the sharding rules the state was created with (informational: the step keeps the state's
    own shardings). Metrics (float32 scalars): loss, pg_loss, kl, entropy, clip_frac, ratio_mean/max/min,
    tis_mean, adv_mean/std/max/min, tokens (loss tokens), grad_norm (before clipping).
    """
    del role
    temperature, chunk = loss_cfg.temperature, loss_cfg.logprob_chunk_size
    ref_graphdef = graphdef if ref_graphdef is None else ref_graphdef

    def micro_loss(params, micro, ref_params, frozen):
        logp, entropy = _logprobs(
            graphdef, params, micro["tokens"], micro["valid"], micro["positions"], temperature, chunk, frozen,
            micro.get(_DROPOUT_KEY),
        )
        if loss_cfg.entropy_coef == 0:
            entropy = jax.lax.stop_gradient(entropy)
        ref_logp = micro.get("ref_logp")
        if loss_cfg.kl_in_loss and ref_logp is None:
            ref_logp, _ = _logprobs(
                ref_graphdef, ref_params, micro["tokens"], micro["valid"], micro["positions"], temperature, chunk
            )
            ref_logp = jax.lax.stop_gradient(ref_logp)
        return policy_objective(
            loss_cfg,
            logp,
            micro["old_logp"],
            micro["advantages"],
            micro["loss_weights"],
            micro["loss_mask"],
            ref_logp_nt=ref_logp,
            entropy_nt=entropy,
            sampler_logp_nt=micro.get("sampler_logp"),
        )

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array], extra):
        ref_params, frozen = extra
        if _lora_dropout(graphdef, state.params, frozen):
            key = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
            batch = {**batch, _DROPOUT_KEY: jax.random.split(key, batch["tokens"].shape[0])}
        grads, sums = accumulate_gradients(
            lambda params, micro: grad_fn(params, micro, ref_params, frozen), state.params, batch,
            empty_metric_sums()
        )
        metrics = finalize_metrics(sums)
        metrics["grad_norm"] = optax.global_norm(grads)
        return apply_gradients(optimizer, state, grads), metrics

    compiled: dict[Any, Callable] = {}

    def train_step(state: TrainState, batch: Mapping[str, Any], ref_params: Any = None, frozen: Any = None):
        _check_batch(batch, loss_cfg, ref_params is not None)
        if not loss_cfg.kl_in_loss or "ref_logp" in batch:
            ref_params = None  # not needed: keep it out of the compiled program
        key = (tuple(sorted(batch)), ref_params is None, frozen is None)
        if key not in compiled:
            compiled[key] = jit_step(step, state, batch, (ref_params, frozen), mesh)
        return compiled[key](state, dict(batch), (ref_params, frozen))

    return train_step


def jit_step(step: Callable, state: TrainState, batch: Mapping[str, Any], extra: Any, mesh: Mesh | None
             ) -> Callable:
    """Jits `step(state, batch, extra) -> (state, metrics)` with the state donated. With a mesh: the state
    keeps its own shardings (in and out), the [m, b, t] batch is split over ("data", "fsdp") along b,
    `extra` (None or a pytree of params, e.g. the reference and a LoRA base) keeps its shardings, metrics
    come out replicated.
    """
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    data_size = mesh.shape["data"] * mesh.shape["fsdp"]
    b = batch["tokens"].shape[1]
    if b % data_size:
        raise ValueError(f"micro-batch size {b} is not divisible by the data x fsdp mesh size {data_size}")
    state_sh = state_shardings(state)
    batch_sh = {k: NamedSharding(mesh, PartitionSpec(None, BATCH_AXES)) for k in batch}
    extra_sh = None if extra is None else jax.tree.map(lambda x: x.sharding, extra)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(state_sh, batch_sh, extra_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
    )


def make_logprob_fn(
    graphdef: nnx.GraphDef,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    mesh: Mesh | None = None,
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Jitted `logprob_fn(params, tokens_bt, valid_bt, positions_bt) -> (logp_bt, entropy_bt)` for
    recomputing old-policy or reference log-probs (no gradient). With a mesh the [b, t] inputs and outputs
    are split over ("data", "fsdp") along b; the parameters keep their own shardings."""

    def fn(params, tokens_bt, valid_bt, positions_bt):
        return _logprobs(graphdef, params, tokens_bt, valid_bt, positions_bt, temperature, chunk_size)

    return jit_over_rows(fn, mesh, num_outputs=2)


def make_token_set_prob_fn(
    graphdef: nnx.GraphDef, token_ids: tuple[int, ...], *, chunk_size: int = 256, mesh: Mesh | None = None
) -> Callable[..., jax.Array]:
    """Jitted `fn(params, tokens_bt, valid_bt, positions_bt) -> p_bt`: the policy's probability of any of
    `token_ids` (e.g. its stop tokens) before each token (see `token_set_probs_from_hidden`)."""

    def fn(params, tokens_bt, valid_bt, positions_bt):
        model = nnx.merge(graphdef, params)
        hidden_btd = model.hidden_states(tokens_bt, valid_bt, positions_bt)
        return token_set_probs_from_hidden(hidden_btd, model.unembed_matrix(), tuple(token_ids), valid_bt,
                                           chunk_size=chunk_size)

    return jit_over_rows(fn, mesh, num_outputs=1)


def jit_over_rows(fn: Callable, mesh: Mesh | None, *, num_outputs: int) -> Callable:
    """Jits `fn(params, *arrays_bt)` for inference over a batch: with a mesh, every [b, ...] input and each of
    the `num_outputs` outputs is split over ("data", "fsdp") along b, and the parameters keep the shardings
    they have at the first call (the function is compiled then)."""
    if mesh is None:
        return jax.jit(fn)
    rows = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    out_shardings = rows if num_outputs == 1 else (rows,) * num_outputs
    jitted = {}

    def call(params, *arrays_bt):
        if "fn" not in jitted:
            param_sh = jax.tree.map(lambda x: x.sharding, params)
            jitted["fn"] = jax.jit(fn, in_shardings=(param_sh,) + (rows,) * len(arrays_bt),
                                   out_shardings=out_shardings)
        return jitted["fn"](params, *arrays_bt)

    return call


def train_flops_per_token(model_cfg, seq_len: int) -> float:
    """Model FLOPs per trained token of forward + backward (for MFU): 6 * N + 6 * L * h * e * seq_len.

    N counts the parameters that take part in matmuls (all but the embedding lookup table, unless it is
    tied and doubles as the unembedding). The attention term is the QK^T and AV products: 2 matmuls x 2
    FLOPs x h heads x e dims per key, over seq_len / 2 keys on average under the causal mask, times 3 for
    forward + backward: 3 * 4 * L * h * e * seq_len / 2.
    """
    n_matmul = model_cfg.num_params()
    if not model_cfg.tie_embeddings:
        n_matmul -= model_cfg.vocab_size * model_cfg.hidden_size  # the input embedding is a lookup
    attention = 6.0 * model_cfg.num_layers * model_cfg.num_heads * model_cfg.head_dim * seq_len
    return 6.0 * n_matmul + attention
