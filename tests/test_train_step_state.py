"""Optimizer configuration: schedule shape, clipping, decoupled weight decay on matrices only."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.train.batching import place_response, response_columns, sequence_batch, split_micro_batches
from jaxalign.algorithms.optim import OptimConfig, make_optimizer, make_schedule
from jaxalign.train.state import init_train_state


def test_schedule_matches_formula():
    cfg = OptimConfig(learning_rate=1.0, warmup_steps=4, schedule="cosine", total_steps=14, min_lr_ratio=0.1)
    schedule = make_schedule(cfg)
    for step in range(16):
        if step < 4:
            want = step / 4
        else:
            progress = min(step - 4, 10) / 10
            want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        assert float(schedule(step)) == pytest.approx(want, abs=1e-6), step
    assert float(make_schedule(OptimConfig(learning_rate=0.5))(1000)) == 0.5


def test_adamw_step_matches_numpy():
    cfg = OptimConfig(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=1.0, b1=0.9, b2=0.99, eps=1e-8)
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([1.0, 1.0])}
    grads = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "bias": jnp.array([0.0, 0.0])}
    opt = make_optimizer(cfg)
    state = init_train_state(params, opt)
    updates, _ = opt.update(grads, state.opt_state, state.params)
    g = np.array([[3.0, 0.0], [0.0, 4.0]]) / 5.0  # clipped to global norm 1
    m_hat, v_hat = g, g * g  # bias-corrected first step
    want_w = -0.1 * (m_hat / (np.sqrt(v_hat) + 1e-8) + 0.5 * np.array([[1.0, -2.0], [0.5, 3.0]]))
    np.testing.assert_allclose(np.asarray(updates["w"]), want_w, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["bias"]), 0.0)  # no decay on vectors, zero gradient
    assert int(state.step) == 0


def test_optim_config_validation():
    with pytest.raises(ValueError, match="total_steps"):
        OptimConfig(schedule="cosine", warmup_steps=10, total_steps=5)
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match="learning_rate"):
        OptimConfig(learning_rate=0.0)


def test_sequence_batch_layout():
    prompt_ids = np.array([[0, 0, 5, 6], [7, 8, 9, 10]])
    prompt_mask = prompt_ids > 0
    response_ids = np.array([[11, 12, 0], [13, 0, 0]])
    response_mask = response_ids > 0
    seq = sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask)
    np.testing.assert_array_equal(seq["tokens"][0], [0, 0, 5, 6, 11, 12, 0])
    np.testing.assert_array_equal(seq["positions"][0], [0, 0, 0, 1, 2, 3, 3])
    np.testing.assert_array_equal(seq["loss_mask"][1], [0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(seq["valid"][1], [1, 1, 1, 1, 1, 0, 0])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(response_columns(place_response(x, 4), 4), x)
    micro = split_micro_batches(seq, 2)
    assert micro["tokens"].shape == (2, 1, 7)
    with pytest.raises(ValueError, match="divisible"):
        split_micro_batches(seq, 3)
    with pytest.raises(ValueError, match="match"):
        sequence_batch(prompt_ids, prompt_mask[:, :2], response_ids, response_mask)
