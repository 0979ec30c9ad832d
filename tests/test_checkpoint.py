"""Checkpointer: exact round trip with shardings, keep-last-k, fallback past a corrupt latest checkpoint."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.train.checkpoint import Checkpointer, abstract_like


def _state(seed):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    params = {"w": jax.device_put(jax.random.normal(jax.random.key(seed), (16, 4)), sharding),
              "b": jnp.arange(4.0) + seed}
    opt_state = optax.adam(1e-3).init(params)
    return {"agents": [{"params": params, "opt_state": opt_state}]}


def _same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_roundtrip_keeps_values_structure_and_sharding(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2, async_save=True)
    state = _state(0)
    ckpt.save(3, state, {"step": 3, "data_position": 24}, {"seed": 0})
    ckpt.wait()
    step, restored, meta = ckpt.restore_latest(abstract_like(_state(1)))
    assert step == 3 and meta == {"step": 3, "data_position": 24}
    _same(state, restored)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert restored["agents"][0]["params"]["w"].sharding == state["agents"][0]["params"]["w"].sharding
    ckpt.close()


def test_keeps_last_k_and_falls_back_when_latest_is_corrupt(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path, keep=2, async_save=False)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"step": step}, {})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    # Destroy the array data of the newest checkpoint, as a crash mid-write would.
    shutil.rmtree(tmp_path / "checkpoints" / "3" / "state")
    (tmp_path / "checkpoints" / "3" / "state").mkdir()
    ckpt.close()
    ckpt = Checkpointer(tmp_path, keep=2, async_save=False)
    with caplog.at_level("WARNING"):
        step, restored, meta = ckpt.restore_latest(abstract_like(_state(0)))
    assert step == 2 and meta["step"] == 2
    _same(_state(2), restored)
    assert any("unreadable" in r.message for r in caplog.records)


def test_no_checkpoint_returns_none(tmp_path):
    assert Checkpointer(tmp_path).restore_latest({"x": jax.ShapeDtypeStruct((2,), jnp.float32)}) is None
