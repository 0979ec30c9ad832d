"""Transformer behaviour: KV-cache decoding equals the full forward, remat, dtypes, helpers, presets."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.models.config import PRESETS, ModelConfig, get_preset
from jaxalign.models.transformer import (
    KVCache,
    Transformer,
    causal_attention_mask,
    positions_from_mask,
)

CFG = ModelConfig(arch="qwen3", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, qkv_bias=True, qk_norm=True,
                  tie_embeddings=False, rope_theta=1000.0)


def _full_logits(model, tokens_bt, valid_bt):
    hidden, cache = model(tokens_bt, positions_from_mask(valid_bt), causal_attention_mask(valid_bt))
    assert cache is None
    return model.unembed(hidden)


def _batch(seed=0, b=3, t=10, vocab=64):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, vocab, size=(b, t)), dtype=jnp.int32)
    valid = np.ones((b, t), dtype=bool)
    valid[1, :2] = False  # left padding
    valid[2, :4] = False
    return tokens, jnp.asarray(valid)


def test_helpers_match_numpy_definitions():
    valid = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(positions_from_mask(valid), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    mask = np.asarray(causal_attention_mask(valid))
    for b in range(2):
        for i in range(5):
            for j in range(5):
                assert mask[b, i, j] == (j <= i and valid[b, i] and valid[b, j])


def test_kv_cache_decode_equals_full_forward():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    tokens, valid = _batch()
    b, t = tokens.shape
    full = np.asarray(_full_logits(model, tokens, valid))
    positions = positions_from_mask(valid)
    prefix, slots = 6, 12
    cache = KVCache.init(CFG, b, slots, dtype=jnp.float32)
    slot_valid = jnp.zeros((b, slots), bool)

    def mask_for(start, length, slot_valid):
        query_slots = start + jnp.arange(length)
        causal_ts = jnp.arange(slots)[None, :] <= query_slots[:, None]
        return causal_ts[None] & slot_valid[:, None, :]

    step = jax.jit(lambda m, tok, pos, mask, cache, index: m(tok, pos, mask, cache=cache, cache_index=index))
    slot_valid = slot_valid.at[:, :prefix].set(valid[:, :prefix])
    hidden, cache = step(model, tokens[:, :prefix], positions[:, :prefix], mask_for(0, prefix, slot_valid),
                         cache, 0)
    decoded = [model.unembed(hidden)]
    for i in range(prefix, t):
        slot_valid = slot_valid.at[:, i].set(valid[:, i])
        hidden, cache = step(model, tokens[:, i:i + 1], positions[:, i:i + 1], mask_for(i, 1, slot_valid),
                             cache, jnp.int32(i))
        decoded.append(model.unembed(hidden))
    decoded = np.asarray(jnp.concatenate(decoded, axis=1))
    v = np.asarray(valid)
    np.testing.assert_allclose(decoded[v], full[v], atol=1e-5, rtol=0)
    # Unused slots were never written.
    assert not np.any(np.asarray(cache.k_lbske[:, :, t:]))


def test_bfloat16_cache_is_default_and_close():
    model = Transformer(CFG, rngs=nnx.Rngs(1))
    cache = KVCache.init(CFG, 2, 8)
    assert cache.k_lbske.dtype == jnp.bfloat16 and cache.k_lbske.shape == (2, 2, 8, 2, 8)
    tokens, valid = _batch(b=3, t=8)
    tokens, valid = tokens[:2], valid[:2]
    mask = causal_attention_mask(valid)
    hidden, cache = model(tokens, positions_from_mask(valid), mask, cache=cache, cache_index=0)
    full = _full_logits(model, tokens, valid)
    np.testing.assert_allclose(model.unembed(hidden)[valid], full[valid], atol=2e-2)


def test_remat_matches_plain_forward_and_gradient():
    tokens, valid = _batch()
    plain = Transformer(CFG, rngs=nnx.Rngs(2))
    remat = Transformer(CFG.replace(remat=True), rngs=nnx.Rngs(2))

    def loss(model):
        return jnp.mean(_full_logits(model, tokens, valid) ** 2)

    loss_a, grads_a = nnx.value_and_grad(loss)(plain)
    loss_b, grads_b = nnx.value_and_grad(loss)(remat)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads_a))


def test_bfloat16_params_and_compute():
    cfg = CFG.replace(param_dtype=jnp.bfloat16, dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16"
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    assert model.layers.q_proj[...].dtype == jnp.bfloat16
    tokens, valid = _batch()
    hidden, _ = model(tokens, positions_from_mask(valid), causal_attention_mask(valid))
    assert hidden.dtype == jnp.bfloat16
    logits = model.unembed(hidden)
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_tied_unembed_uses_embedding():
    model = Transformer(CFG.replace(tie_embeddings=True), rngs=nnx.Rngs(0))
    assert not hasattr(model, "lm_head")
    np.testing.assert_array_equal(model.unembed_matrix(), model.embedding[...].T)
    hidden = jnp.ones((1, 2, CFG.hidden_size))
    np.testing.assert_allclose(model.unembed(hidden), hidden @ model.embedding[...].T, rtol=1e-6)


def test_every_param_has_logical_axes_matching_its_rank():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = variable.get_metadata()["logical_axes"]
        assert len(axes) == variable[...].ndim, path
        if path[0] == "layers":
            assert axes[0] == "layers" and variable[...].shape[0] == CFG.num_layers


def test_bad_inputs_raise():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    tokens, valid = _batch()
    with pytest.raises(ValueError, match="attn_mask_bts shape"):
        model(tokens, positions_from_mask(valid), jnp.ones((3, 10, 5), bool))
    with pytest.raises(ValueError, match="cache_index is required"):
        model(tokens, positions_from_mask(valid), jnp.ones((3, 10, 12), bool),
              cache=KVCache.init(CFG, 3, 12))
    with pytest.raises(ValueError, match="num_heads"):
        CFG.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="unsupported dtype"):
        CFG.replace(dtype="int8")
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        get_preset("nope")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_param_count_and_hf_round_trip(name):
    cfg = PRESETS[name]
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    counted = sum(int(np.prod(v.get_value().shape))
                  for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    assert counted == cfg.num_params()
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
