"""The sampler on 8 fake CPU devices: the same samples as on one device, for several mesh shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.models import Transformer, get_preset
from jaxalign.rollout import Sampler, SamplingParams
from jaxalign.sharding import make_mesh

PROMPTS = [[3, 14, 15, 92, 65], [35, 89], [79, 32, 38, 46, 26, 43, 38, 32, 79]]
SP_GREEDY = SamplingParams(max_new_tokens=10, greedy=True, n=2)
SP_SAMPLED = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=50, n=2)


@pytest.fixture(scope="module")
def model():
    return Transformer(get_preset("tiny"), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def single_device_rollouts(model):
    sampler = Sampler(model, None, cache_dtype=jnp.float32)
    return {sp: sampler.generate(PROMPTS, sp, jax.random.key(4)) for sp in (SP_GREEDY, SP_SAMPLED)}


@pytest.mark.parametrize("mesh_shape", [dict(data=8), dict(data=2, fsdp=2, tensor=2),
                                        dict(data=2, tensor=4)])
def test_sharded_equals_single_device(model, single_device_rollouts, mesh_shape):
    assert len(jax.devices()) == 8, "tests/conftest.py should provide 8 fake CPU devices"
    mesh = make_mesh(**mesh_shape)
    sampler = Sampler(model, None, mesh=mesh, cache_dtype=jnp.float32)
    # Weights are laid out for sampling: heads over "tensor" (where they divide), never over "fsdp".
    q_proj = sampler.params["layers"]["q_proj"][...]
    assert q_proj.sharding.mesh.shape == mesh.shape
    if mesh_shape.get("tensor", 1) > 1:
        assert "tensor" in str(q_proj.sharding.spec)
    for sp, expected in single_device_rollouts.items():
        got = sampler.generate(PROMPTS, sp, jax.random.key(4))
        assert sampler.last_stats["batch"] % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0
        np.testing.assert_array_equal(got.response_ids_np, expected.response_ids_np)
        np.testing.assert_array_equal(got.lengths_n, expected.lengths_n)
        np.testing.assert_allclose(got.logprobs_np, expected.logprobs_np, atol=1e-4)


def test_update_params_reshards_from_a_training_layout(model, single_device_rollouts):
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sampler = Sampler(Transformer(get_preset("tiny"), rngs=nnx.Rngs(9)), None, mesh=mesh,
                      cache_dtype=jnp.float32)
    from jaxalign.sharding import param_shardings

    train_state = jax.device_put(nnx.state(model), param_shardings(nnx.state(model), mesh, "train"))
    seconds = sampler.update_params(train_state)
    assert seconds > 0
    layout = sampler.params["layers"]["gate_proj"][...].sharding.spec
    assert "fsdp" not in str(layout)
    got = sampler.generate(PROMPTS, SP_GREEDY, jax.random.key(4))
    np.testing.assert_array_equal(got.response_ids_np, single_device_rollouts[SP_GREEDY].response_ids_np)
