"""The learned critic: value loss vs NumPy, value layout, exact accumulation, sharding invariance, the
shared-trunk gradient split, and PPO + GAE(1, 1) with a critic on a toy bandit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxalign.algorithms.advantages import AdvantageConfig, compute_advantages
from jaxalign.train.batching import place_response, response_columns, sequence_batch, split_micro_batches
from jaxalign.algorithms.losses import LossConfig, loss_weights
from jaxalign.models import Transformer, causal_attention_mask, get_preset, positions_from_mask
from jaxalign.models.value import (
    ActorCritic,
    ValueModel,
    actor_critic_from_policy,
    value_model_from_policy,
)
from jaxalign.sharding import make_mesh, param_shardings
from jaxalign.train.critic import (
    finalize_value_metrics,
    make_actor_critic_train_step,
    make_critic_train_step,
    make_value_fn,
    value_objective,
)
from jaxalign.algorithms.optim import OptimConfig, make_optimizer
from jaxalign.train.state import init_train_state, state_shardings
from jaxalign.train.step import make_logprob_fn, make_train_step

N, P, R = 8, 4, 6
CFG = get_preset("tiny", vocab_size=64, num_layers=1, hidden_size=32, intermediate_size=64, head_dim=8)
UNTIED = CFG.replace(tie_embeddings=False)


def make_value_model(seed=0, cfg=CFG):
    return ValueModel(cfg, rngs=nnx.Rngs(seed), head_init_std=1.0)


VALUE_GRAPHDEF = nnx.split(make_value_model())[0]


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


def make_critic_batch(values, aggregation, seed=0):
    """A critic batch around the current `values`: old values off by N(0, 0.3) (so with a clip of 0.2-0.5
    the clip is active on some tokens and not on others) and returns off by N(0, 1)."""
    rng = np.random.default_rng(seed + 7)
    seq = sequence_batch(*make_rollout(seed))
    mask = seq["loss_mask"]
    values = np.asarray(values, np.float32)
    old_values = (values + rng.normal(0, 0.3, size=mask.shape)).astype(np.float32) * mask
    returns = (values + rng.normal(0, 1.0, size=mask.shape)).astype(np.float32) * mask
    return dict(seq, returns=returns, old_values=old_values, loss_weights=loss_weights(mask, aggregation))


def reference_weights(mask, aggregation):
    lengths = mask.sum(1, keepdims=True)
    if aggregation == "token_mean":
        return mask / mask.sum()
    assert aggregation == "seq_mean_token_mean"
    return mask / np.maximum(lengths, 1) / (lengths > 0).sum()


def numpy_value_loss(values, old_values, returns, weights, mask, clip):
    """Weighted PPO value loss, its clip indicator and d loss / d values, from the definitions."""
    err = values - returns
    loss_t = err**2
    grad_t = err
    clipped = np.zeros_like(values, dtype=bool)
    if clip is not None:
        v_clip = old_values + np.clip(values - old_values, -clip, clip)
        clipped = (v_clip - returns) ** 2 > loss_t
        inside = np.abs(values - old_values) < clip
        grad_t = np.where(clipped, (v_clip - returns) * inside, err)
        loss_t = np.maximum(loss_t, (v_clip - returns) ** 2)
    w = weights * mask
    return float(np.sum(w * 0.5 * loss_t)), clipped & (mask > 0), w * grad_t


@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_objective_matches_numpy(clip):
    rng = np.random.default_rng(1)
    n, t = 6, 7
    mask = (rng.random((n, t)) < 0.7).astype(np.float32)
    mask[2] = 0
    values, old_values, returns = (rng.normal(size=(n, t)).astype(np.float32) for _ in range(3))
    old_values = (values + rng.normal(0, 0.3, size=(n, t))).astype(np.float32)
    weights = loss_weights(mask, "seq_mean_token_mean")
    want_loss, want_clipped, want_grad = numpy_value_loss(values, old_values, returns, weights, mask, clip)

    def loss_fn(v):
        return value_objective(clip, v, old_values, returns, weights, mask)

    (loss, sums), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(values))
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-7)
    metrics = jax.tree.map(float, finalize_value_metrics(sums))
    on = mask > 0
    assert (clip is not None) == (want_clipped.sum() > 0)
    np.testing.assert_allclose(metrics["vf_clip_frac"], want_clipped.sum() / on.sum(), rtol=1e-6)
    np.testing.assert_allclose(metrics["value_mean"], values[on].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["return_mean"], returns[on].mean(), rtol=1e-5)
    err = returns[on] - values[on]
    np.testing.assert_allclose(metrics["value_rmse"], np.sqrt(np.mean(err**2)), rtol=1e-5)
    np.testing.assert_allclose(metrics["explained_var"], 1 - err.var() / returns[on].var(), rtol=1e-4)


def test_value_layout_matches_prefix_forward_and_sharded_value_fn():
    model = make_value_model(2)
    prompt_ids, prompt_mask, response_ids, response_mask = make_rollout(5)
    seq = sequence_batch(prompt_ids, prompt_mask, response_ids, response_mask)
    graphdef, params = nnx.split(model)
    mesh = make_mesh(4, 2, 1)
    sharded = jax.device_put(params, param_shardings(params, mesh, "train"))
    values = np.asarray(make_value_fn(graphdef, mesh=mesh)(sharded, seq["tokens"], seq["valid"],
                                                           seq["positions"]))
    kernel, bias = np.asarray(params["head"]["kernel"][...]), float(params["head"]["bias"][...])
    # Independent check: the value of response token j is the head on the last hidden state of the prefix
    # that precedes it (prompt tokens and response tokens < j), computed on that prefix alone.
    for i in (1, 5, 6):
        ctx = [int(x) for x, m in zip(prompt_ids[i], prompt_mask[i]) if m]
        for j in range(int(response_mask[i].sum())):
            toks = jnp.asarray([ctx])
            hidden, _ = model.backbone(toks, jnp.arange(len(ctx))[None], causal_attention_mask(jnp.ones_like(toks)))
            want = float(np.asarray(hidden[0, -1], np.float64) @ kernel + bias)
            np.testing.assert_allclose(values[i, P + j], want, rtol=1e-4, atol=1e-5)
            ctx.append(int(response_ids[i, j]))
    assert np.all(values[~seq["valid"]] == 0) and np.all(values[:, 0] == 0)
    assert np.abs(values[seq["loss_mask"] > 0]).min() > 0


def test_from_policy_copies_the_trunk_and_drops_an_untied_lm_head():
    policy = Transformer(UNTIED, rngs=nnx.Rngs(3))
    policy_state = nnx.state(policy)
    value_model = value_model_from_policy(policy, head_init_std=0.5)
    actor_critic = actor_critic_from_policy(policy)
    value_state, ac_state = nnx.state(value_model), nnx.state(actor_critic)
    assert "lm_head" not in value_state["backbone"] and "lm_head" in ac_state["policy"]
    for name in ("embedding", "final_norm", "layers"):
        for a, b in zip(jax.tree.leaves(value_state["backbone"][name]), jax.tree.leaves(policy_state[name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()  # copies: donation-safe
    for a, b in zip(jax.tree.leaves(ac_state["policy"]), jax.tree.leaves(policy_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.std(value_state["head"]["kernel"][...])) > 0
    np.testing.assert_array_equal(np.asarray(ac_state["value_head"]["kernel"][...]), 0.0)
    # The shared-trunk model's policy part is a plain Transformer for the sampler and the log-probs.
    policy_graphdef = nnx.split(policy)[0]
    toks = jnp.asarray([[3, 4, 5]])
    valid = jnp.ones_like(toks, bool)
    want, _ = policy(toks, positions_from_mask(valid), causal_attention_mask(valid))
    got, _ = nnx.merge(policy_graphdef, ac_state["policy"])(toks, positions_from_mask(valid),
                                                            causal_attention_mask(valid))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    with pytest.raises(ValueError, match="same ModelConfig"):
        value_model_from_policy(_mismatched_policy())


def _mismatched_policy():
    """A Transformer whose parameters do not fit its own config's critic (an extra, foreign entry)."""
    policy = Transformer(CFG, rngs=nnx.Rngs(0))
    policy.extra_head = nnx.Param(jnp.zeros((3,)), logical_axes=("norm",))
    return policy


def capture_gradients() -> optax.GradientTransformation:
    """An "optimizer" that leaves the parameters alone and keeps the last gradient as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


_STEPS = {}


def critic_gradients(graphdef, params, batch, cfg, micro_batches, mesh=None, kind="critic"):
    """(gradient, metrics, new state) of one critic / actor-critic step; steps cached across tests."""
    if mesh is not None:
        params = jax.device_put(params, param_shardings(params, mesh, "train"))
    optimizer = capture_gradients()
    key = (kind, cfg, None if mesh is None else tuple(mesh.shape.items()), id(graphdef))
    if key not in _STEPS:
        make = {"critic": make_critic_train_step, "actor_critic": make_actor_critic_train_step,
                "policy": make_train_step}[kind]
        _STEPS[key] = make(graphdef, optimizer, cfg, mesh=mesh)
    state = init_train_state(params, optimizer)
    new_state, metrics = _STEPS[key](state, split_micro_batches(batch, micro_batches))
    return new_state.opt_state, jax.tree.map(float, metrics), new_state


@jax.jit
def _reference_value_terms(params, tokens, valid, old_values, returns, weights, clip):
    """Full-batch clipped value loss written from scratch (backbone + head, explicit shift) and its grad."""

    def loss_fn(p):
        model = nnx.merge(VALUE_GRAPHDEF, p)
        hidden, _ = model.backbone(tokens, positions_from_mask(valid), causal_attention_mask(valid))
        head = hidden.astype(jnp.float32) @ p["head"]["kernel"][...] + p["head"]["bias"][...]
        pair_valid = jnp.pad(valid[:, 1:] & valid[:, :-1], ((0, 0), (1, 0)))  # False at column 0
        values = jnp.pad(head[:, :-1], ((0, 0), (1, 0))) * pair_valid.astype(jnp.float32)
        v_clip = old_values + jnp.clip(values - old_values, -clip, clip)
        loss_t = 0.5 * jnp.maximum((values - returns) ** 2, (v_clip - returns) ** 2)
        return jnp.sum(weights * loss_t)

    return jax.value_and_grad(loss_fn)(params)


def assert_trees_close(a, b, rtol, atol):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        y = np.asarray(y)
        np.testing.assert_allclose(np.asarray(x), y, rtol=rtol, atol=atol * max(np.abs(y).max(), 1e-12))


def value_batch(model, aggregation, seed=0):
    graphdef, params = nnx.split(model)
    seq = sequence_batch(*make_rollout(seed))
    values = make_value_fn(graphdef)(params, seq["tokens"], seq["valid"], seq["positions"])
    return make_critic_batch(values, aggregation, seed)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_critic_accumulation_equals_full_batch_and_reference(aggregation):
    model = make_value_model()
    params = nnx.split(model)[1]
    cfg = LossConfig(value_clip=0.2)
    batch = value_batch(model, aggregation)
    weights = reference_weights(batch["loss_mask"], aggregation).astype(np.float32)
    want_loss, want_grads = _reference_value_terms(params, batch["tokens"], batch["valid"],
                                                   batch["old_values"], batch["returns"], weights, 0.2)
    full_grads, full_metrics, _ = critic_gradients(VALUE_GRAPHDEF, params, batch, cfg, 1)
    micro_grads, micro_metrics, _ = critic_gradients(VALUE_GRAPHDEF, params, batch, cfg, 4)
    assert_trees_close(full_grads, want_grads, rtol=1e-4, atol=1e-5)
    assert_trees_close(micro_grads, full_grads, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full_metrics["value_loss"], float(want_loss), rtol=1e-5)
    np.testing.assert_allclose(full_metrics["loss"], float(want_loss), rtol=1e-5)
    for key in full_metrics:
        np.testing.assert_allclose(micro_metrics[key], full_metrics[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(full_metrics["tokens"], batch["loss_mask"].sum())
    np.testing.assert_allclose(full_metrics["grad_norm"], float(optax.global_norm(want_grads)), rtol=1e-4)
    assert 0 < full_metrics["vf_clip_frac"] < 1  # the clip is exercised on both sides


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2)])
def test_sharded_critic_step_equals_single_device(shape):
    model = make_value_model(1)
    params = nnx.split(model)[1]
    cfg = LossConfig(value_clip=0.5)
    batch = value_batch(model, "seq_mean_token_mean", seed=3)
    want_grads, want_metrics, _ = critic_gradients(VALUE_GRAPHDEF, params, batch, cfg, 2)
    mesh = make_mesh(*shape)
    got_grads, got_metrics, new_state = critic_gradients(VALUE_GRAPHDEF, params, batch, cfg, 2, mesh=mesh)
    assert_trees_close(got_grads, want_grads, rtol=1e-4, atol=1e-5)
    for key in want_metrics:
        np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-4, atol=1e-6, err_msg=key)
    expected = param_shardings(params, mesh, "train")
    for got, want in zip(jax.tree.leaves(state_shardings(new_state).params), jax.tree.leaves(expected)):
        assert got.is_equivalent_to(want, len(want.spec) or 1), (got, want)


def test_actor_critic_step_is_policy_step_plus_scaled_critic_step():
    """Shared trunk: the combined gradient is the policy gradient plus value_coef times the gradient of the
    same value loss on a separate critic holding the same trunk and head; an untied lm_head gets only the
    policy gradient and the head only the (scaled) value gradient. Checked single-device and sharded."""
    actor_critic = ActorCritic(UNTIED, rngs=nnx.Rngs(4), head_init_std=1.0)
    ac_graphdef, ac_params = nnx.split(actor_critic)
    policy_graphdef = nnx.split(actor_critic.policy)[0]
    value_model = value_model_from_policy(actor_critic.policy)
    value_graphdef, value_params = nnx.split(value_model)
    value_params["head"] = jax.tree.map(jnp.array, ac_params["value_head"])
    cfg = LossConfig(value_clip=0.3, value_coef=0.7, dual_clip=3.0, aggregation="token_mean",
                     logprob_chunk_size=4)
    seq = sequence_batch(*make_rollout(2))
    rng = np.random.default_rng(9)
    values = make_value_fn(ac_graphdef)(ac_params, seq["tokens"], seq["valid"], seq["positions"])
    critic_part = make_critic_batch(values, cfg.aggregation, seed=2)
    old_logp, _ = make_logprob_fn(policy_graphdef, chunk_size=4)(ac_params["policy"], seq["tokens"],
                                                                 seq["valid"], seq["positions"])
    mask = seq["loss_mask"]
    policy_part = dict(
        seq, loss_weights=critic_part["loss_weights"],
        advantages=rng.normal(size=mask.shape).astype(np.float32) * mask,
        old_logp=(np.asarray(old_logp) + rng.normal(0, 0.1, size=mask.shape)).astype(np.float32) * mask,
    )
    batch = dict(policy_part, returns=critic_part["returns"], old_values=critic_part["old_values"])
    got, metrics, _ = critic_gradients(ac_graphdef, ac_params, batch, cfg, 2, kind="actor_critic")
    pol, pol_metrics, _ = critic_gradients(policy_graphdef, ac_params["policy"], policy_part, cfg, 2,
                                           kind="policy")
    val, val_metrics, _ = critic_gradients(value_graphdef, value_params, critic_part, cfg, 2)
    coef = cfg.value_coef
    for name in ("embedding", "final_norm", "layers"):
        want = jax.tree.map(lambda p, v: p + coef * v, pol[name], val["backbone"][name])
        assert_trees_close(got["policy"][name], want, rtol=1e-4, atol=1e-5)
    assert_trees_close(got["policy"]["lm_head"], pol["lm_head"], rtol=1e-4, atol=1e-5)
    assert_trees_close(got["value_head"], jax.tree.map(lambda v: coef * v, val["head"]), rtol=1e-4, atol=1e-5)
    for key in ("loss", "pg_loss", "clip_frac"):
        np.testing.assert_allclose(metrics[key], pol_metrics[key], rtol=1e-5, atol=1e-7, err_msg=key)
    for key in ("value_loss", "vf_clip_frac", "explained_var"):
        np.testing.assert_allclose(metrics[key], val_metrics[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert 0 < metrics["vf_clip_frac"] < 1 and 0 < metrics["clip_frac"] < 1
    np.testing.assert_allclose(metrics["total_loss"], pol_metrics["loss"] + coef * val_metrics["value_loss"],
                               rtol=1e-5)
    sharded, sharded_metrics, _ = critic_gradients(ac_graphdef, ac_params, batch, cfg, 2, mesh=make_mesh(2, 2, 2),
                                                   kind="actor_critic")
    assert_trees_close(sharded, got, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sharded_metrics["total_loss"], metrics["total_loss"], rtol=1e-5)


def test_bad_critic_batches_are_rejected():
    model = make_value_model()
    graphdef, params = nnx.split(model)
    optimizer = optax.sgd(0.1)
    batch = split_micro_batches(value_batch(model, "token_mean"), 2)
    step = make_critic_train_step(graphdef, optimizer, LossConfig(value_clip=0.2))
    with pytest.raises(ValueError, match="old_values"):
        step(init_train_state(params, optimizer), {k: v for k, v in batch.items() if k != "old_values"})
    with pytest.raises(ValueError, match="missing"):
        step(init_train_state(params, optimizer), {k: v for k, v in batch.items() if k != "returns"})
    with pytest.raises(ValueError, match="unknown"):
        step(init_train_state(params, optimizer), dict(batch, advantages=batch["returns"]))
    ac_graphdef, ac_params = nnx.split(ActorCritic(CFG, rngs=nnx.Rngs(0)))
    ac_step = make_actor_critic_train_step(ac_graphdef, optimizer, LossConfig(kl_in="loss", kl_coef=0.1))
    full = dict(batch, advantages=batch["returns"], old_logp=batch["returns"])
    with pytest.raises(ValueError, match="ref_logp"):
        ac_step(init_train_state(ac_params, optimizer), full)
    policy_graphdef, policy_params = nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="no value head"):
        make_value_fn(policy_graphdef)(policy_params, batch["tokens"][0], batch["valid"][0], batch["positions"][0])


# ---------------------------------------------------------------------------------------------------------
# End to end: PPO-clip + GAE(gamma=1, lambda=1) with a learned critic on a two-token bandit.

VOCAB, PROMPTS, REPEATS, PROMPT_LEN, RESP_LEN, STEPS = 16, 4, 8, 3, 2, 14
POLICY_LR, CRITIC_LR = 1e-2, 1e-2
TARGET = np.array([1, 5, 9, 13])
BANDIT_CFG = get_preset("tiny", vocab_size=VOCAB, num_layers=1, hidden_size=32, intermediate_size=64,
                        head_dim=8)
BANDIT_POLICY = Transformer(BANDIT_CFG, rngs=nnx.Rngs(0))
POLICY_GRAPHDEF, POLICY_INIT = nnx.split(BANDIT_POLICY)
BANDIT_PROMPTS = np.random.default_rng(0).integers(0, VOCAB, size=(PROMPTS, PROMPT_LEN)).astype(np.int32)
BANDIT_LOSS = LossConfig(aggregation="token_mean", dual_clip=3.0, value_clip=0.5, value_coef=0.5,
                         logprob_chunk_size=4)
GAE = AdvantageConfig(estimator="gae", gamma=1.0, lam=1.0, whiten=True)


@jax.jit
def next_token_logits(policy_params, ids_bt):
    model = nnx.merge(POLICY_GRAPHDEF, policy_params)
    valid = jnp.ones_like(ids_bt, dtype=bool)
    hidden, _ = model(ids_bt, positions_from_mask(valid), causal_attention_mask(valid))
    return model.unembed(hidden)[:, -1]


def expected_reward(policy_params, per_prompt=False):
    """Exact E[reward] (reward = fraction of the two response tokens in TARGET), averaged over prompts
    (or [PROMPTS] per prompt)."""
    probs1 = np.asarray(jax.nn.softmax(next_token_logits(policy_params, jnp.asarray(BANDIT_PROMPTS)), -1))
    first = np.repeat(BANDIT_PROMPTS, VOCAB, axis=0)
    second_ctx = np.concatenate([first, np.tile(np.arange(VOCAB), PROMPTS)[:, None]], axis=1).astype(np.int32)
    probs2 = np.asarray(jax.nn.softmax(next_token_logits(policy_params, jnp.asarray(second_ctx)), -1))
    hit2 = probs2[:, TARGET].sum(-1).reshape(PROMPTS, VOCAB)
    hit1 = probs1[:, TARGET].sum(-1)
    reward_p = 0.5 * (hit1 + np.sum(probs1 * hit2, axis=-1))
    return reward_p if per_prompt else float(np.mean(reward_p))


def run_bandit(mode, seed=0):
    policy_opt = make_optimizer(OptimConfig(learning_rate=POLICY_LR, grad_clip_norm=1.0))
    critic_opt = make_optimizer(OptimConfig(learning_rate=CRITIC_LR, grad_clip_norm=1.0))
    if mode == "separate":
        policy_state = init_train_state(jax.tree.map(jnp.array, POLICY_INIT), policy_opt)
        critic = value_model_from_policy(BANDIT_POLICY)
        critic_graphdef, critic_params = nnx.split(critic)
        critic_state = init_train_state(critic_params, critic_opt)
        policy_step = make_train_step(POLICY_GRAPHDEF, policy_opt, BANDIT_LOSS)
        critic_step = make_critic_train_step(critic_graphdef, critic_opt, BANDIT_LOSS)
    else:
        critic = actor_critic_from_policy(BANDIT_POLICY)
        critic_graphdef, ac_params = nnx.split(critic)
        critic_state = init_train_state(ac_params, policy_opt)
        joint_step = make_actor_critic_train_step(critic_graphdef, policy_opt, BANDIT_LOSS)
    value_fn = make_value_fn(critic_graphdef)
    logprob_fn = make_logprob_fn(POLICY_GRAPHDEF, chunk_size=4)
    key = jax.random.key(seed)
    n = PROMPTS * REPEATS
    prompts = np.repeat(BANDIT_PROMPTS, REPEATS, axis=0)
    value_losses = []
    for _ in range(STEPS):
        policy_params = policy_state.params if mode == "separate" else critic_state.params["policy"]
        ids = prompts
        for _ in range(RESP_LEN):
            key, sample_key = jax.random.split(key)
            logits = next_token_logits(policy_params, jnp.asarray(ids))
            ids = np.concatenate([ids, np.asarray(jax.random.categorical(sample_key, logits))[:, None]], 1)
        response = ids[:, PROMPT_LEN:].astype(np.int32)
        rewards = np.isin(response, TARGET).mean(axis=1).astype(np.float32)
        seq = sequence_batch(prompts, np.ones_like(prompts, bool), response, np.ones_like(response, bool))
        old_logp, _ = logprob_fn(policy_params, seq["tokens"], seq["valid"], seq["positions"])
        values = value_fn(critic_state.params, seq["tokens"], seq["valid"], seq["positions"])
        mask_nr = np.ones_like(response, np.float32)
        adv_nr, returns_nr = compute_advantages("gae", GAE, rewards, np.arange(n), mask_nr,
                                                values_nt=response_columns(values, PROMPT_LEN))
        batch = dict(
            seq,
            advantages=place_response(np.asarray(adv_nr), PROMPT_LEN),
            old_logp=np.asarray(old_logp) * seq["loss_mask"],
            loss_weights=loss_weights(seq["loss_mask"], BANDIT_LOSS.aggregation),
        )
        critic_batch = dict(seq, loss_weights=batch["loss_weights"],
                            returns=place_response(np.asarray(returns_nr), PROMPT_LEN),
                            old_values=np.asarray(values) * seq["loss_mask"])
        if mode == "separate":
            policy_state, _ = policy_step(policy_state, split_micro_batches(batch, 2))
            critic_state, metrics = critic_step(critic_state, split_micro_batches(critic_batch, 2))
        else:
            joint = dict(batch, returns=critic_batch["returns"], old_values=critic_batch["old_values"])
            critic_state, metrics = joint_step(critic_state, split_micro_batches(joint, 2))
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["value_loss"]))
        value_losses.append(float(metrics["value_loss"]))
    final_policy = policy_state.params if mode == "separate" else critic_state.params["policy"]
    # The critic's value of each prompt's start state (the first response column; it sees the prompt only).
    start = np.concatenate([BANDIT_PROMPTS, np.zeros((PROMPTS, 1), np.int32)], axis=1)
    valid = np.ones_like(start, bool)
    start_values = np.asarray(value_fn(critic_state.params, start, valid, positions_from_mask(valid)))
    return final_policy, value_losses, start_values[:, PROMPT_LEN]


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_gae_with_critic_reward_rises_and_value_loss_falls(mode):
    """GTAlign's setting in miniature: one critic (separate, or a head on the policy's trunk), GAE with
    gamma = lambda = 1 and whitened advantages, PPO-clip with dual clip and value clip 0.5. The policy
    improves, the critic's loss falls, and its value of each prompt's start state approaches the exact
    expected reward of the final policy from that prompt (the critic starts at 0)."""
    before = expected_reward(POLICY_INIT)
    final_policy, value_losses, start_values = run_bandit(mode)
    after_p = expected_reward(final_policy, per_prompt=True)
    assert 0.15 < before < 0.35
    assert after_p.mean() > before + 0.25, (mode, before, after_p)
    first, last = np.mean(value_losses[:3]), np.mean(value_losses[-3:])
    assert last < 0.5 * first, (mode, value_losses)
    np.testing.assert_allclose(start_values, after_p, atol=0.15, err_msg=mode)
