"""Mesh construction, sharding rules with replication fallback, and sharded forward == single device."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

from jaxalign import sharding
from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import Transformer, causal_attention_mask, positions_from_mask

# 6 heads / 3 kv heads: the kv-head dim cannot split over tensor=2 and must fall back to replication.
CFG = ModelConfig(arch="qwen2", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=6, num_kv_heads=3, head_dim=8, qkv_bias=True, tie_embeddings=False)


def test_make_mesh_axes_and_types():
    mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    sub = sharding.make_mesh(data=1, fsdp=1, tensor=2, devices=jax.devices()[:2])
    assert sub.devices.size == 2
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh(data=4, fsdp=2, tensor=2)
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(data=-1, fsdp=-1)


def test_rules_and_fallback():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    spec = sharding.logical_to_spec
    assert spec(("layers", "embed", "heads", "head_dim"), mesh, "train", (2, 32, 6, 8)) == \
        P(None, "fsdp", "tensor", None)
    assert spec(("layers", "embed", "heads", "head_dim"), mesh, "sample", (2, 32, 6, 8)) == \
        P(None, None, "tensor", None)
    # 3 kv heads over tensor=2: replicated on that dim, embed still fsdp-sharded.
    assert spec(("layers", "embed", "kv_heads", "head_dim"), mesh, "train", (2, 32, 3, 8)) == \
        P(None, "fsdp", None, None)
    # 33 is not divisible by fsdp=2.
    assert spec(("vocab", "embed"), mesh, "train", (128, 33)) == P("tensor", None)
    # The same mesh axis is never used twice in one array.
    assert spec(("mlp", "vocab"), mesh, "train", (64, 128)) == P("tensor", None)
    # Size-1 mesh axes shard nothing.
    mesh8 = sharding.make_mesh(data=8)
    assert spec(("vocab", "embed"), mesh8, "train", (128, 32)) == P(None, None)
    with pytest.raises(ValueError, match="unknown sharding role"):
        spec(("embed",), mesh, "eval")
    with pytest.raises(ValueError, match="no sharding rule for logical axis 'bogus'"):
        spec(("bogus",), mesh, "train")
    assert sharding.batch_sharding(mesh, 2).spec == P(("data", "fsdp"), None)


def _forward(model, tokens, valid):
    hidden, _ = model(tokens, positions_from_mask(valid), causal_attention_mask(valid))
    return model.unembed(hidden)


@pytest.fixture(scope="module")
def reference():
    """Single-device model with the same seed, a batch with padding, and its logits."""
    model = Transformer(CFG, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, size=(8, 7)), jnp.int32)
    valid = jnp.asarray(rng.random((8, 7)) > 0.2).at[:, -1].set(True)
    return model, tokens, valid, jax.jit(_forward)(model, tokens, valid)


@pytest.mark.parametrize("shape,role", [((8, 1, 1), "train"), ((2, 2, 2), "train"), ((1, 4, 2), "train"),
                                        ((1, 1, 8), "train"), ((1, 2, 4), "sample")])
def test_sharded_forward_matches_single_device(shape, role, reference):
    reference, tokens, valid, expected = reference
    mesh = sharding.make_mesh(*shape)
    model = sharding.create_sharded(CFG, mesh, role, seed=3)

    # Parameters equal the unsharded initialisation and are laid out as the rules say.
    ref_flat = dict(nnx.to_flat_state(nnx.state(reference, nnx.Param)))
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = variable[...]
        # jit and eager initialisation may differ in the last bit of the normal sampler.
        np.testing.assert_allclose(np.asarray(value), np.asarray(ref_flat[path][...]), rtol=1e-6, atol=1e-9)
        axes = variable.get_metadata()["logical_axes"]
        expected_spec = sharding.logical_to_spec(axes, mesh, role, value.shape)
        assert value.sharding.spec == expected_spec, path
        shard_shape = value.sharding.shard_shape(value.shape)
        for dim, entry in enumerate(expected_spec):
            axes_here = () if entry is None else (entry,) if isinstance(entry, str) else entry
            assert shard_shape[dim] == value.shape[dim] // int(np.prod([mesh.shape[a] for a in axes_here]))

    graphdef, state = nnx.split(model)
    batch = sharding.batch_sharding(mesh, 2)

    @jax.jit
    def sharded_forward(state, tokens, valid):
        return _forward(nnx.merge(graphdef, state), tokens, valid)

    got = sharded_forward(state, jax.device_put(tokens, batch), jax.device_put(valid, batch))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5, rtol=0)


def test_param_shardings_usable_as_out_shardings_for_abstract_state():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    abstract = nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0)))
    shardings = sharding.param_shardings(nnx.state(abstract), mesh, "train")
    flat = dict(nnx.to_flat_state(shardings))
    assert flat[("layers", "q_proj")].get_value().spec == P(None, "fsdp", "tensor", None)
    assert flat[("lm_head",)].get_value().spec == P("fsdp", "tensor")
    assert flat[("final_norm",)].get_value().spec == P(None)
