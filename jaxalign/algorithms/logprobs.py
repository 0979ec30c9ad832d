"""Token log-probs and entropies of sequences, computed in time chunks so [b, t, v] logits never exist whole.

Definition shared with the sampler: for a sequence `tokens_bt`,

    logp_bt[:, t]    = log_softmax(logits[:, t - 1] / temperature)[tokens[:, t]]   (log p(tokens_t | tokens_<t))
    entropy_bt[:, t] = entropy of softmax(logits[:, t - 1] / temperature)

over the full vocabulary, with `logits = hidden @ w_dv`. Both are 0 at t = 0 and wherever `tokens_t` or its
predecessor is not valid (padding, or the first token of a left-padded prompt).

Each chunk's logits are recomputed in the backward pass (`jax.checkpoint`), so the peak extra memory of
forward and backward is one chunk of logits, [b, chunk_size, v] in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def logprobs_from_hidden(
    hidden_btd: jax.Array,
    w_dv: jax.Array,
    tokens_bt: jax.Array,
    valid_bt: jax.Array,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> tuple[jax.Array, jax.Array]:
    """`(logp_bt, entropy_bt)` float32 from final hidden states and the unembedding matrix [d, v].

    The matmul runs in the hidden states' dtype with float32 accumulation; the softmax in float32.
    """
    if hidden_btd.ndim != 3 or tokens_bt.shape != hidden_btd.shape[:2] or valid_bt.shape != tokens_bt.shape:
        raise ValueError(
            f"expected hidden [b, t, d] with tokens/valid [b, t]; got {hidden_btd.shape}, {tokens_bt.shape}, "
            f"{valid_bt.shape}"
        )
    if w_dv.ndim != 2 or w_dv.shape[0] != hidden_btd.shape[2]:
        raise ValueError(f"w_dv must be [d={hidden_btd.shape[2]}, v], got {w_dv.shape}")
    if chunk_size < 1 or temperature <= 0:
        raise ValueError(f"need chunk_size >= 1 and temperature > 0, got {chunk_size}, {temperature}")
    b, t, d = hidden_btd.shape
    if t < 2:
        zeros = jnp.zeros((b, t), jnp.float32)
        return zeros, zeros
    steps = t - 1
    chunk = min(chunk_size, steps)
    num_chunks = -(-steps // chunk)
    pad = num_chunks * chunk - steps
    compute_dtype = hidden_btd.dtype
    w_dv = w_dv.astype(compute_dtype)
    inv_temperature = 1.0 / temperature

    hidden_ctd = jnp.pad(hidden_btd[:, :-1], ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(tokens_bt[:, 1:].astype(jnp.int32), ((0, 0), (0, pad)))
    hidden_cbtd = hidden_ctd.reshape(b, num_chunks, chunk, d).swapaxes(0, 1)
    targets_cbt = targets.reshape(b, num_chunks, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args):
        h_btd, target_bt = args
        logits_btv = jnp.einsum("btd,dv->btv", h_btd, w_dv, preferred_element_type=jnp.float32)
        logits_btv = logits_btv * inv_temperature
        logz_bt = jax.nn.logsumexp(logits_btv, axis=-1)
        target_logit_bt = jnp.take_along_axis(logits_btv, target_bt[..., None], axis=-1)[..., 0]
        probs_btv = jnp.exp(logits_btv - logz_bt[..., None])
        entropy_bt = logz_bt - jnp.sum(probs_btv * logits_btv, axis=-1)
        return target_logit_bt - logz_bt, entropy_bt

    logp_cbt, entropy_cbt = jax.lax.map(one_chunk, (hidden_cbtd, targets_cbt))
    logp = logp_cbt.swapaxes(0, 1).reshape(b, num_chunks * chunk)[:, :steps]
    entropy = entropy_cbt.swapaxes(0, 1).reshape(b, num_chunks * chunk)[:, :steps]
    valid = valid_bt.astype(bool)
    pair_valid = valid[:, 1:] & valid[:, :-1]
    first = jnp.zeros((b, 1), jnp.float32)
    # `where`, not a product: whatever a model computes at padding must not leak (not even a NaN).
    return (
        jnp.concatenate([first, jnp.where(pair_valid, logp, 0.0)], axis=1),
        jnp.concatenate([first, jnp.where(pair_valid, entropy, 0.0)], axis=1),
    )


def sequence_logprobs(
    model_or_apply,
    tokens_bt: jax.Array,
    valid_bt: jax.Array,
    *,
    positions_bt: jax.Array | None = None,
    w_dv: jax.Array | None = None,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> tuple[jax.Array, jax.Array]:
    """`(logp_bt, entropy_bt)` of `tokens_bt` under a model, computed chunk by chunk (see module doc).

    `model_or_apply` is either a model with `hidden_states(tokens_bt, valid_bt, positions_bt)` and
    `unembed_matrix()` (the `Transformer`: positions count valid tokens unless given, attention is causal
    over valid tokens), or any function
    `apply(tokens_bt, valid_bt) -> hidden_btd` together with `w_dv`.
    """
    if w_dv is not None:
        hidden_btd = model_or_apply(tokens_bt, valid_bt)
    else:
        hidden_btd = model_or_apply.hidden_states(tokens_bt, valid_bt, positions_bt)
        w_dv = model_or_apply.unembed_matrix()
    return logprobs_from_hidden(
        hidden_btd, w_dv, tokens_bt, valid_bt, temperature=temperature, chunk_size=chunk_size
    )


def token_set_probs_from_hidden(
    hidden_btd: jax.Array,
    w_dv: jax.Array,
    token_ids: tuple[int, ...],
    valid_bt: jax.Array,
    *,
    chunk_size: int = 256,
) -> jax.Array:
    """`p_bt` float32: the probability mass the model puts on `token_ids` at each position,
    `p_bt[:, t] = sum_k softmax(logits[:, t - 1])[k]` for k in `token_ids` (e.g. the stop tokens: how likely
    stopping was before token t). 0 at t = 0 and wherever token t or its predecessor is not valid. Logits are
    formed one time chunk at a time, as in `logprobs_from_hidden`."""
    if hidden_btd.ndim != 3 or valid_bt.shape != hidden_btd.shape[:2]:
        raise ValueError(f"expected hidden [b, t, d] and valid [b, t]; got {hidden_btd.shape}, {valid_bt.shape}")
    if not token_ids:
        raise ValueError("token_ids must name at least one token")
    b, t, d = hidden_btd.shape
    if t < 2:
        return jnp.zeros((b, t), jnp.float32)
    steps = t - 1
    chunk = min(chunk_size, steps)
    num_chunks = -(-steps // chunk)
    pad = num_chunks * chunk - steps
    w_dv = w_dv.astype(hidden_btd.dtype)
    ids = jnp.asarray(token_ids, jnp.int32)
    hidden_cbtd = jnp.pad(hidden_btd[:, :-1], ((0, 0), (0, pad), (0, 0))).reshape(b, num_chunks, chunk, d)

    def one_chunk(h_btd):
        logits_btv = jnp.einsum("btd,dv->btv", h_btd, w_dv, preferred_element_type=jnp.float32)
        logz_bt = jax.nn.logsumexp(logits_btv, axis=-1)
        return jnp.exp(jax.nn.logsumexp(logits_btv[..., ids], axis=-1) - logz_bt)

    p_cbt = jax.lax.map(one_chunk, hidden_cbtd.swapaxes(0, 1))
    p = p_cbt.swapaxes(0, 1).reshape(b, num_chunks * chunk)[:, :steps]
    valid = valid_bt.astype(bool)
    pair_valid = valid[:, 1:] & valid[:, :-1]
    return jnp.concatenate([jnp.zeros((b, 1), jnp.float32), jnp.where(pair_valid, p, 0.0)], axis=1)
