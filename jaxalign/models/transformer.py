"""Decoder-only transformer (Llama / Qwen2 / Qwen3) in flax.nnx with layers stacked for `lax.scan`.

Weights of all decoder layers live in one `nnx.Param` per kind with a leading `layers` axis, so a
forward pass is one `jax.lax.scan` over layers (compile time independent of depth; optional remat per
layer). Every parameter carries its logical axis names in the metadata key `logical_axes`; the mapping to
mesh axes is in `jaxalign.sharding`.

Optional LoRA adapters (`jaxalign.models.lora`) live in `model.layers.lora`, stacked like the layers and
scanned with them; a projection with adapters adds `scale * (x A) B` to its output.

Numerics: matmuls run in `cfg.dtype`; RMSNorm, RoPE and the attention softmax in float32; `unembed`
returns float32 logits.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.config import LORA_TARGETS
from jaxalign.models.config import ModelConfig

LOGICAL_AXES_KEY = "logical_axes"
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def _param(value: jax.Array, logical_axes: tuple[str, ...]) -> nnx.Param:
    if value.ndim != len(logical_axes):
        raise ValueError(f"parameter of shape {value.shape} given logical axes {logical_axes}")
    return nnx.Param(value, eager_sharding=False, **{LOGICAL_AXES_KEY: logical_axes})


# ----------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------


def positions_from_mask(valid_bt: jax.Array) -> jax.Array:
    """Position ids counting valid tokens only (0 for leading padding): `cumsum(valid) - 1`, floored at 0."""
    valid_bt = jnp.asarray(valid_bt).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(valid_bt, axis=-1) - 1, 0)


def causal_attention_mask(valid_bt: jax.Array) -> jax.Array:
    """bool[b, t, t]: query i sees key j when j <= i and both tokens are valid (not padding)."""
    valid_bt = jnp.asarray(valid_bt).astype(bool)
    t = valid_bt.shape[-1]
    causal_tt = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal_tt[None] & valid_bt[:, None, :] & valid_bt[:, :, None]


def rope_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """float32[head_dim // 2] rotary inverse frequencies, with llama3 frequency scaling if configured."""
    exponents = np.arange(0, cfg.head_dim, 2, dtype=np.float32) / np.float32(cfg.head_dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    if cfg.rope_scaling is None:
        return inv_freq
    scaling = dict(cfg.rope_scaling)
    factor = scaling["factor"]
    low_freq_factor, high_freq_factor = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = original_len / low_freq_factor
    high_freq_wavelen = original_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed down by `factor`, short ones kept, the band between interpolated.
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_bthe: jax.Array, positions_bt: jax.Array, inv_freq_e2: np.ndarray) -> jax.Array:
    """Rotary embedding in the half-split layout used by HF checkpoints; computed in float32."""
    angles_bte2 = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_e2)
    cos_bt1e2 = jnp.cos(angles_bte2)[:, :, None, :]
    sin_bt1e2 = jnp.sin(angles_bte2)[:, :, None, :]
    x_bthe = x_bthe.astype(jnp.float32)
    half = x_bthe.shape[-1] // 2
    x1, x2 = x_bthe[..., :half], x_bthe[..., half:]
    return jnp.concatenate([x1 * cos_bt1e2 - x2 * sin_bt1e2, x2 * cos_bt1e2 + x1 * sin_bt1e2], axis=-1)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last axis in float32; returns float32 (callers cast)."""
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(variance + eps) * scale.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer: `k_lbske`, `v_lbske` of shape [layers, batch, slots, kv_heads, e]."""

    k_lbske: jax.Array
    v_lbske: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16) -> "KVCache":
        """A zero cache with `max_len` slots per sequence."""
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    @property
    def max_len(self) -> int:
        return self.k_lbske.shape[2]


# ----------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------


class DecoderLayers(nnx.Module):
    """The weights of all decoder layers, stacked on a leading `layers` axis."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        l, d, f = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
        h, k, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pdt = jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(stddev=0.02)

        def weight(shape, axes):
            return _param(init(rngs.params(), shape, pdt), axes)

        self.attn_norm = _param(jnp.ones((l, d), pdt), ("layers", "norm"))
        self.q_proj = weight((l, d, h, e), ("layers", "embed", "heads", "head_dim"))
        self.k_proj = weight((l, d, k, e), ("layers", "embed", "kv_heads", "head_dim"))
        self.v_proj = weight((l, d, k, e), ("layers", "embed", "kv_heads", "head_dim"))
        self.o_proj = weight((l, h, e, d), ("layers", "heads", "head_dim", "embed"))
        if cfg.qkv_bias:
            self.q_bias = _param(jnp.zeros((l, h, e), pdt), ("layers", "heads", "head_dim"))
            self.k_bias = _param(jnp.zeros((l, k, e), pdt), ("layers", "kv_heads", "head_dim"))
            self.v_bias = _param(jnp.zeros((l, k, e), pdt), ("layers", "kv_heads", "head_dim"))
        if cfg.qk_norm:
            self.q_norm = _param(jnp.ones((l, e), pdt), ("layers", "head_dim"))
            self.k_norm = _param(jnp.ones((l, e), pdt), ("layers", "head_dim"))
        self.mlp_norm = _param(jnp.ones((l, d), pdt), ("layers", "norm"))
        self.gate_proj = weight((l, d, f), ("layers", "embed", "mlp"))
        self.up_proj = weight((l, d, f), ("layers", "embed", "mlp"))
        self.down_proj = weight((l, f, d), ("layers", "mlp", "embed"))

    def stacked_weights(self) -> dict[str, jax.Array]:
        """Raw arrays of all stacked parameters, keyed by attribute name."""
        return {name: value[...] for name, value in vars(self).items() if isinstance(value, nnx.Param)}


@dataclasses.dataclass(frozen=True)
class _LoraCall:
    """Static LoRA settings of one forward pass: `scale` (alpha / rank), and the dropout `rate` with the
    layer's `key` (None: no dropout)."""

    scale: float
    rate: float = 0.0
    key: jax.Array | None = None


def _with_lora(y, x, name: str, w: dict, lora: _LoraCall | None, dt):
    """`y + scale * (dropout(x) A) B` when projection `name` has adapters in `w["lora"]`, else `y` unchanged.
    `x` [b, t, *in], `A` [*in, r], `B` [r, *out] (see `jaxalign.models.lora`)."""
    if lora is None or name not in w.get("lora", {}):
        return y
    a, b = w["lora"][name]
    if lora.key is not None and lora.rate > 0:
        key = jax.random.fold_in(lora.key, LORA_TARGETS.index(name))
        keep = jax.random.bernoulli(key, 1.0 - lora.rate, x.shape)
        x = jnp.where(keep, x / (1.0 - lora.rate), 0).astype(x.dtype)
    xa = jnp.tensordot(x, a.astype(dt), axes=a.ndim - 1)
    return y + (lora.scale * jnp.tensordot(xa, b.astype(dt), axes=1)).astype(y.dtype)


def _decoder_layer(cfg: ModelConfig, inv_freq_e2, w: dict[str, jax.Array], x_btd, positions_bt,
                   attn_mask_bts, k_bske, v_bske, cache_index, lora: _LoraCall | None = None):
    """One pre-norm decoder layer. With a cache (`k_bske` not None) the new keys/values are written at
    `cache_index` and attention runs over all cache slots; returns (x_btd, k_bske, v_bske). With `lora`,
    the projections named in `w["lora"]` add their adapters' output."""
    dt = jnp.dtype(cfg.dtype)
    b, t, _ = x_btd.shape
    k_heads, groups, e = cfg.num_kv_heads, cfg.num_groups, cfg.head_dim

    h_btd = rms_norm(x_btd, w["attn_norm"], cfg.rms_norm_eps).astype(dt)
    q_bthe = _with_lora(jnp.einsum("btd,dhe->bthe", h_btd, w["q_proj"].astype(dt)), h_btd, "q_proj", w, lora, dt)
    k_btke = _with_lora(jnp.einsum("btd,dke->btke", h_btd, w["k_proj"].astype(dt)), h_btd, "k_proj", w, lora, dt)
    v_btke = _with_lora(jnp.einsum("btd,dke->btke", h_btd, w["v_proj"].astype(dt)), h_btd, "v_proj", w, lora, dt)
    if cfg.qkv_bias:
        q_bthe = q_bthe + w["q_bias"].astype(dt)
        k_btke = k_btke + w["k_bias"].astype(dt)
        v_btke = v_btke + w["v_bias"].astype(dt)
    if cfg.qk_norm:
        q_bthe = rms_norm(q_bthe, w["q_norm"], cfg.rms_norm_eps)
        k_btke = rms_norm(k_btke, w["k_norm"], cfg.rms_norm_eps)
    q_bthe = apply_rope(q_bthe, positions_bt, inv_freq_e2).astype(dt)
    k_btke = apply_rope(k_btke, positions_bt, inv_freq_e2).astype(dt)

    if k_bske is not None:
        start = (0, cache_index, 0, 0)
        k_bske = jax.lax.dynamic_update_slice(k_bske, k_btke.astype(k_bske.dtype), start)
        v_bske = jax.lax.dynamic_update_slice(v_bske, v_btke.astype(v_bske.dtype), start)
        keys_bske, values_bske = k_bske.astype(dt), v_bske.astype(dt)
    else:
        keys_bske, values_bske = k_btke, v_btke

    q_btkge = q_bthe.reshape(b, t, k_heads, groups, e)
    scores_bkgts = jnp.einsum("btkge,bske->bkgts", q_btkge, keys_bske,
                              preferred_element_type=jnp.float32) / np.float32(math.sqrt(e))
    scores_bkgts = jnp.where(attn_mask_bts[:, None, None, :, :], scores_bkgts, _MASK_VALUE)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(dt)
    attn_btkge = jnp.einsum("bkgts,bske->btkge", probs_bkgts, values_bske)
    attn_bthe = attn_btkge.reshape(b, t, k_heads * groups, e)
    out_btd = _with_lora(jnp.einsum("bthe,hed->btd", attn_bthe, w["o_proj"].astype(dt)), attn_bthe, "o_proj", w,
                         lora, dt)
    x_btd = x_btd + out_btd.astype(x_btd.dtype)

    h_btd = rms_norm(x_btd, w["mlp_norm"], cfg.rms_norm_eps).astype(dt)
    gate_btf = _with_lora(jnp.einsum("btd,df->btf", h_btd, w["gate_proj"].astype(dt)), h_btd, "gate_proj", w, lora, dt)
    up_btf = _with_lora(jnp.einsum("btd,df->btf", h_btd, w["up_proj"].astype(dt)), h_btd, "up_proj", w, lora, dt)
    act_btf = jax.nn.silu(gate_btf) * up_btf
    mlp_btd = _with_lora(jnp.einsum("btf,fd->btd", act_btf, w["down_proj"].astype(dt)), act_btf, "down_proj", w,
                         lora, dt)
    x_btd = x_btd + mlp_btd.astype(x_btd.dtype)
    return x_btd, k_bske, v_bske


class Transformer(nnx.Module):
    """Decoder-only transformer: `model(tokens_bt, positions_bt, attn_mask_bts, cache=, cache_index=)`
    returns `(hidden_btd, cache)` with final-normed hidden states; `unembed` maps them to logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(stddev=0.02)
        self.embedding = _param(init(rngs.params(), (cfg.vocab_size, cfg.hidden_size), pdt),
                                ("vocab", "embed"))
        self.layers = DecoderLayers(cfg, rngs=rngs)
        self.final_norm = _param(jnp.ones((cfg.hidden_size,), pdt), ("norm",))
        if not cfg.tie_embeddings:
            self.lm_head = _param(init(rngs.params(), (cfg.hidden_size, cfg.vocab_size), pdt),
                                  ("embed", "vocab"))

    def __call__(self, tokens_bt: jax.Array, positions_bt: jax.Array, attn_mask_bts: jax.Array, *,
                 cache: KVCache | None = None, cache_index: jax.Array | int | None = None,
                 lora_dropout_key: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """`lora_dropout_key` turns on the adapters' dropout (training updates only; see `models/lora.py`)."""
        cfg = self.cfg
        b, t = tokens_bt.shape
        if positions_bt.shape != (b, t):
            raise ValueError(f"positions_bt shape {positions_bt.shape} != tokens_bt shape {(b, t)}")
        num_slots = t if cache is None else cache.max_len
        if attn_mask_bts.shape != (b, t, num_slots):
            raise ValueError(f"attn_mask_bts shape {attn_mask_bts.shape}; expected {(b, t, num_slots)} "
                             f"({'cache slots' if cache is not None else 'no cache: s == t'})")
        if cache is not None and cache_index is None:
            raise ValueError("cache_index is required when a cache is given")
        if cache is None and cache_index is not None:
            raise ValueError("cache_index given without a cache")

        dt = jnp.dtype(cfg.dtype)
        inv_freq_e2 = rope_inverse_frequencies(cfg)
        x_btd = jnp.take(self.embedding[...], tokens_bt, axis=0).astype(dt)
        attn_mask_bts = attn_mask_bts.astype(bool)
        weights = self.layers.stacked_weights()
        adapters = getattr(self.layers, "lora", None)  # LoRA adapters (jaxalign.models.lora), scanned with the layers
        if adapters is not None:
            weights["lora"] = adapters.stacked_weights()

        def lora_call(layer_index):
            if adapters is None:
                return None
            key = None
            if lora_dropout_key is not None and adapters.dropout > 0:
                key = jax.random.fold_in(lora_dropout_key, layer_index)
            return _LoraCall(scale=adapters.scale, rate=adapters.dropout, key=key)

        def layer_step(carry, layer_inputs):
            x_btd, k_lbske, v_lbske = carry
            w, layer_index = layer_inputs
            if k_lbske is None:
                x_btd, _, _ = _decoder_layer(cfg, inv_freq_e2, w, x_btd, positions_bt, attn_mask_bts,
                                             None, None, None, lora_call(layer_index))
                return (x_btd, None, None), None
            # The whole cache is carried and updated in place at this layer's index.
            k_bske = jax.lax.dynamic_index_in_dim(k_lbske, layer_index, keepdims=False)
            v_bske = jax.lax.dynamic_index_in_dim(v_lbske, layer_index, keepdims=False)
            x_btd, k_bske, v_bske = _decoder_layer(cfg, inv_freq_e2, w, x_btd, positions_bt,
                                                   attn_mask_bts, k_bske, v_bske, cache_index, lora_call(layer_index))
            k_lbske = jax.lax.dynamic_update_index_in_dim(k_lbske, k_bske, layer_index, 0)
            v_lbske = jax.lax.dynamic_update_index_in_dim(v_lbske, v_bske, layer_index, 0)
            return (x_btd, k_lbske, v_lbske), None

        if cfg.remat:
            layer_step = jax.checkpoint(layer_step, prevent_cse=False)
        init_carry = (x_btd, None if cache is None else cache.k_lbske,
                      None if cache is None else cache.v_lbske)
        layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        (x_btd, k_lbske, v_lbske), _ = jax.lax.scan(layer_step, init_carry, (weights, layer_ids))
        hidden_btd = rms_norm(x_btd, self.final_norm[...], cfg.rms_norm_eps).astype(dt)
        new_cache = None if cache is None else KVCache(k_lbske, v_lbske)
        return hidden_btd, new_cache

    def hidden_states(self, tokens_bt: jax.Array, valid_bt: jax.Array, positions_bt: jax.Array | None = None,
                      *, lora_dropout_key: jax.Array | None = None) -> jax.Array:
        """Final hidden states [b, t, d] of (padded) sequences: positions count valid tokens unless given,
        attention is causal over valid tokens, no cache."""
        if positions_bt is None:
            positions_bt = positions_from_mask(valid_bt)
        hidden_btd, _ = self(tokens_bt, positions_bt, causal_attention_mask(valid_bt),
                             lora_dropout_key=lora_dropout_key)
        return hidden_btd

    def unembed_matrix(self) -> jax.Array:
        """w_dv in parameter dtype: the transposed embedding when tied, else the lm_head."""
        if self.cfg.tie_embeddings:
            return self.embedding[...].T
        return self.lm_head[...]

    def unembed(self, hidden_btd: jax.Array) -> jax.Array:
        """float32 logits_btv (matmul in compute dtype, accumulated in float32)."""
        w_dv = self.unembed_matrix().astype(jnp.dtype(self.cfg.dtype))
        return jnp.einsum("btd,dv->btv", hidden_btd.astype(w_dv.dtype), w_dv,
                          preferred_element_type=jnp.float32)
