"""The train step: exact gradient accumulation, sharding invariance, log-prob recomputation, batch layout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxalign.train.batching import place_response, sequence_batch, split_micro_batches
from jaxalign.algorithms.losses import AGGREGATIONS, LossConfig, loss_weights
from jaxalign.models import Transformer, causal_attention_mask, get_preset, positions_from_mask
from jaxalign.sharding import make_mesh, param_shardings
from jaxalign.algorithms.optim import OptimConfig, make_optimizer
from jaxalign.train.state import init_train_state, state_shardings
from jaxalign.train.step import make_logprob_fn, make_train_step, train_flops_per_token

N, P, R = 8, 4, 6
CFG = get_preset("tiny", vocab_size=64, num_layers=1, hidden_size=32, intermediate_size=64, head_dim=8)


def make_model(seed=0):
    return Transformer(CFG, rngs=nnx.Rngs(seed))


GRAPHDEF = nnx.split(make_model())[0]
LOGPROB_FN = make_logprob_fn(GRAPHDEF, chunk_size=4)


def make_rollout(seed=0):
    rng = np.random.default_rng(seed)
    prompt_len = rng.integers(1, P + 1, size=N)
    prompt_mask = np.arange(P)[None, :] >= (P - prompt_len)[:, None]
    resp_len = rng.integers(0, R + 1, size=N)
    resp_len[0] = 0
    response_mask = np.arange(R)[None, :] < resp_len[:, None]
    prompt_ids = np.where(prompt_mask, rng.integers(1, CFG.vocab_size, size=(N, P)), 0)
    response_ids = np.where(response_mask, rng.integers(1, CFG.vocab_size, size=(N, R)), 0)
    return prompt_ids, prompt_mask, response_ids, response_mask


def make_batch(model, aggregation, seed=0, with_ref=False):
    rng = np.random.default_rng(seed + 100)
    seq = sequence_batch(*make_rollout(seed))
    old_logp, _ = LOGPROB_FN(nnx.split(model)[1], seq["tokens"], seq["valid"], seq["positions"])
    old_logp = np.asarray(old_logp) + rng.normal(0, 0.1, size=old_logp.shape).astype(np.float32)
    adv_nr = rng.normal(size=(N, R)).astype(np.float32)
    batch = dict(
        seq,
        advantages=place_response(adv_nr, P) * seq["loss_mask"],
        old_logp=old_logp * seq["loss_mask"],
        loss_weights=loss_weights(seq["loss_mask"], aggregation),
    )
    if with_ref:
        batch["ref_logp"] = (old_logp + rng.normal(0, 0.2, size=old_logp.shape)).astype(np.float32)
    return batch


def reference_weights(mask, aggregation):
    """Aggregation weights from their definitions, independent of `loss_weights`."""
    lengths = mask.sum(1, keepdims=True)
    nonempty = (lengths > 0).sum()
    if aggregation == "token_mean":
        return mask / mask.sum()
    if aggregation == "seq_mean_token_mean":
        return mask / np.maximum(lengths, 1) / nonempty
    if aggregation == "seq_mean_token_sum":
        return mask / nonempty
    return mask / (mask.shape[1] * mask.shape[0])


@jax.jit
def _reference_terms(params, tokens, valid, old_logp, adv, ref_logp, agg_weights, coefs):
    """Full-logits PPO-clip (+ k3 KL) loss with explicit aggregation weights, and its gradient."""
    clip_low, clip_high, kl_coef, temperature = coefs

    def loss_fn(p):
        model = nnx.merge(GRAPHDEF, p)
        hidden, _ = model(tokens, positions_from_mask(valid), causal_attention_mask(valid))
        logq = jax.nn.log_softmax(model.unembed(hidden)[:, :-1] / temperature, axis=-1)
        logp = jnp.take_along_axis(logq, tokens[:, 1:, None], axis=-1)[..., 0]
        logp = jnp.concatenate([jnp.zeros((tokens.shape[0], 1)), logp], axis=1)
        ratio = jnp.exp(logp - old_logp)
        tok = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1 - clip_low, 1 + clip_high))
        d = ref_logp - logp
        tok = tok + kl_coef * (jnp.exp(d) - d - 1)
        return jnp.sum(tok * agg_weights)

    return jax.value_and_grad(loss_fn)(params)


def reference_loss_and_grads(params, batch, cfg):
    ref_logp = batch.get("ref_logp", np.zeros_like(batch["old_logp"]))
    kl_coef = cfg.kl_coef if cfg.kl_in_loss else 0.0
    coefs = jnp.asarray([cfg.clip_low, cfg.clip_high, kl_coef, cfg.temperature], jnp.float32)
    weights = reference_weights(batch["loss_mask"], cfg.aggregation).astype(np.float32)
    return _reference_terms(params, batch["tokens"], batch["valid"], batch["old_logp"], batch["advantages"],
                            ref_logp, weights, coefs)


def capture_gradients() -> optax.GradientTransformation:
    """An "optimizer" that leaves the parameters alone and keeps the last gradient as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


_STEPS = {}


def step_gradients(params, batch, cfg, micro_batches, mesh=None, ref_params=None):
    """(gradient, metrics, state) of one train step; steps are cached so tests share compilations."""
    if mesh is not None:
        params = jax.device_put(params, param_shardings(params, mesh, "train"))
    optimizer = capture_gradients()
    key = (cfg, None if mesh is None else tuple(mesh.shape.items()))
    if key not in _STEPS:
        _STEPS[key] = make_train_step(GRAPHDEF, optimizer, cfg, mesh=mesh)
    state = init_train_state(params, optimizer)
    new_state, metrics = _STEPS[key](state, split_micro_batches(batch, micro_batches), ref_params)
    return new_state.opt_state, jax.tree.map(float, metrics), new_state


def assert_trees_close(a, b, rtol, atol):
    """Leafwise closeness; `atol` is relative to the largest magnitude in each leaf of `b` (float32 sums in
    a different order differ by a few ulps of the largest term, not of the smallest element)."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        y = np.asarray(y)
        np.testing.assert_allclose(np.asarray(x), y, rtol=rtol, atol=atol * max(np.abs(y).max(), 1e-12))


def test_accumulation_equals_full_batch_and_reference():
    model = make_model()
    params = nnx.split(model)[1]
    for aggregation in AGGREGATIONS:
        cfg = LossConfig(clip_high=0.28, logprob_chunk_size=4)  # aggregation lives in the weights only
        batch = make_batch(model, aggregation)
        ref_cfg = dataclasses.replace(cfg, aggregation=aggregation)
        want_loss, want_grads = reference_loss_and_grads(params, batch, ref_cfg)
        full_grads, full_metrics, _ = step_gradients(params, batch, cfg, 1)
        micro_grads, micro_metrics, _ = step_gradients(params, batch, cfg, 4)
        assert_trees_close(full_grads, want_grads, rtol=1e-4, atol=1e-5)
        assert_trees_close(micro_grads, full_grads, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(full_metrics["loss"], float(want_loss), rtol=1e-5, err_msg=aggregation)
        for key in full_metrics:
            np.testing.assert_allclose(micro_metrics[key], full_metrics[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{aggregation}: {key}")
        np.testing.assert_allclose(full_metrics["tokens"], batch["loss_mask"].sum())
        np.testing.assert_allclose(full_metrics["grad_norm"], float(optax.global_norm(want_grads)), rtol=1e-4)


def test_kl_in_loss_from_ref_params_matches_precomputed_ref_logp():
    model, ref_model = make_model(0), make_model(1)
    cfg = LossConfig(kl_in="loss", kl_coef=0.3, kl_estimator="k3", logprob_chunk_size=4)
    batch = make_batch(model, cfg.aggregation)
    params, ref_params = nnx.split(model)[1], nnx.split(ref_model)[1]
    ref_logp, _ = LOGPROB_FN(
        ref_params, batch["tokens"], batch["valid"], batch["positions"]
    )
    with_ref = dict(batch, ref_logp=np.asarray(ref_logp))
    grads_inside, metrics, _ = step_gradients(params, batch, cfg, 2, ref_params=ref_params)
    grads_given, _, _ = step_gradients(params, with_ref, cfg, 2)
    assert_trees_close(grads_inside, grads_given, rtol=1e-5, atol=1e-6)
    assert metrics["kl"] > 0
    _, want = reference_loss_and_grads(params, with_ref, cfg)
    assert_trees_close(grads_given, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_step_equals_single_device(shape):
    model = make_model()
    params = nnx.split(model)[1]
    cfg = LossConfig(dual_clip=3.0, logprob_chunk_size=4)
    batch = make_batch(model, "seq_mean_token_mean", seed=3)
    want_grads, want_metrics, _ = step_gradients(params, batch, cfg, 1)
    mesh = make_mesh(*shape)
    got_grads, got_metrics, new_state = step_gradients(params, batch, cfg, 1, mesh=mesh)
    assert_trees_close(got_grads, want_grads, rtol=1e-4, atol=1e-5)
    for key in want_metrics:
        np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-4, atol=1e-6, err_msg=key)
    expected = param_shardings(params, mesh, "train")
    for got, want in zip(jax.tree.leaves(state_shardings(new_state).params), jax.tree.leaves(expected)):
        assert got.is_equivalent_to(want, len(want.spec) or 1), (got, want)


def test_adamw_state_keeps_shardings_over_steps():
    model = make_model()
    mesh = make_mesh(2, 2, 2)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, param_shardings(params, mesh, "train"))
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=1, weight_decay=0.1))
    state = init_train_state(params, optimizer)
    shardings = state_shardings(state)
    cfg = LossConfig(logprob_chunk_size=4)
    step = make_train_step(graphdef, optimizer, cfg, mesh=mesh)
    batch = split_micro_batches(make_batch(model, cfg.aggregation), 2)
    for _ in range(2):
        state, metrics = step(state, batch)
    assert int(state.step) == 2
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    for got, want in zip(jax.tree.leaves(state_shardings(state)), jax.tree.leaves(shardings)):
        assert got == want


def test_logprob_fn_sharded_matches_model_and_layout_lines_up_with_sampler():
    model = make_model(2)
    prompt_ids, prompt_mask, response_ids, response_mask = make_rollout(5)
    seq = sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask)
    np.testing.assert_array_equal(seq["positions"], np.asarray(positions_from_mask(seq["valid"])))
    graphdef, params = nnx.split(model)
    mesh = make_mesh(4, 2, 1)
    sharded = jax.device_put(params, param_shardings(params, mesh, "train"))
    logp, entropy = make_logprob_fn(graphdef, temperature=0.9, chunk_size=3, mesh=mesh)(
        sharded, seq["tokens"], seq["valid"], seq["positions"]
    )
    # Independent check: score each response token by running the model on its own prefix only.
    for i in (1, 5):
        ctx = [int(x) for x, m in zip(prompt_ids[i], prompt_mask[i]) if m]
        for j in range(int(response_mask[i].sum())):
            toks = jnp.asarray([ctx])
            hidden, _ = model(toks, jnp.arange(len(ctx))[None], causal_attention_mask(jnp.ones_like(toks)))
            logq = jax.nn.log_softmax(model.unembed(hidden)[0, -1] / 0.9)
            np.testing.assert_allclose(float(logp[i, P + j]), float(logq[response_ids[i, j]]), rtol=1e-4)
            want_entropy = -float(jnp.sum(jnp.exp(logq) * logq))
            np.testing.assert_allclose(float(entropy[i, P + j]), want_entropy, rtol=1e-4)
            ctx.append(int(response_ids[i, j]))
    assert np.all(np.asarray(logp)[~seq["valid"]] == 0)


def test_bad_batches_are_rejected():
    model = make_model()
    graphdef, params = nnx.split(model)
    optimizer = optax.sgd(0.1)
    batch = split_micro_batches(make_batch(model, "token_mean"), 2)
    step = make_train_step(graphdef, optimizer, LossConfig(kl_in="loss", kl_coef=0.1))
    with pytest.raises(ValueError, match="ref_logp"):
        step(init_train_state(params, optimizer), batch)
    step = make_train_step(graphdef, optimizer, LossConfig())
    with pytest.raises(ValueError, match="missing"):
        step(init_train_state(params, optimizer), {k: v for k, v in batch.items() if k != "advantages"})
    with pytest.raises(ValueError, match="divisible"):
        make_train_step(graphdef, optimizer, LossConfig(), mesh=make_mesh(8, 1, 1))(
            init_train_state(params, optimizer), split_micro_batches(make_batch(model, "token_mean"), 2)
        )


def test_train_flops_per_token():
    cfg = get_preset("qwen2.5-0.5b")
    n = cfg.num_params()
    want = 6 * n + 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * 1024
    assert train_flops_per_token(cfg, 1024) == pytest.approx(want)
    untied = cfg.replace(tie_embeddings=False)
    # Untied: the lm_head matmul replaces the tied unembedding; the input embedding is only a lookup.
    assert train_flops_per_token(untied, 1024) == pytest.approx(want)
