"""Policy losses, KL estimators, aggregation weights and metrics against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms.kl import kl_divergence
from jaxalign.algorithms.losses import (
    AGGREGATIONS,
    LossConfig,
    combine_metrics,
    finalize_metrics,
    loss_weights,
    policy_objective,
    value_loss,
)


def make_inputs(seed=0, n=6, t=5):
    rng = np.random.default_rng(seed)
    mask = (rng.uniform(size=(n, t)) > 0.3).astype(np.float32)
    mask[0] = 0.0  # an empty row
    old = rng.normal(-1.5, 0.5, size=(n, t)).astype(np.float32)
    logp = old + rng.normal(0.0, 0.4, size=(n, t)).astype(np.float32)
    ref = old + rng.normal(0.0, 0.3, size=(n, t)).astype(np.float32)
    sampler = old + rng.normal(0.0, 0.2, size=(n, t)).astype(np.float32)
    adv = rng.normal(size=(n, t)).astype(np.float32)
    ent = rng.uniform(0.0, 2.0, size=(n, t)).astype(np.float32)
    return mask, old, logp, ref, sampler, adv, ent


def ref_ppo_token(logp, old, a, cl, ch, dual):
    r = np.exp(logp - old)
    loss = max(-a * r, -a * min(max(r, 1 - cl), 1 + ch))
    if dual is not None and a < 0:
        loss = min(loss, -dual * a)
    return loss


def ref_weights(mask, mode, constant=None):
    n, t = mask.shape
    w = np.zeros((n, t))
    lengths = mask.sum(1)
    seqs = sum(1 for L in lengths if L > 0)
    for i in range(n):
        for k in range(t):
            if mask[i, k] == 0:
                continue
            if mode == "token_mean":
                w[i, k] = 1.0 / lengths.sum()
            elif mode == "seq_mean_token_mean":
                w[i, k] = 1.0 / (lengths[i] * seqs)
            elif mode == "seq_mean_token_sum":
                w[i, k] = 1.0 / seqs
            else:
                w[i, k] = 1.0 / ((constant or t) * n)
    return w


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_loss_weights_match_reference(mode):
    mask = make_inputs(1)[0]
    np.testing.assert_allclose(loss_weights(mask, mode, None), ref_weights(mask, mode), rtol=1e-6)
    if mode == "constant":
        np.testing.assert_allclose(loss_weights(mask, mode, 64.0), ref_weights(mask, mode, 64.0), rtol=1e-6)


def test_loss_weights_aggregate_as_documented():
    mask, *_ = make_inputs(2)
    x = np.random.default_rng(0).normal(size=mask.shape)
    rows = [x[i][mask[i] > 0] for i in range(mask.shape[0]) if mask[i].sum() > 0]
    assert np.isclose((loss_weights(mask, "token_mean") * x).sum(), np.concatenate(rows).mean())
    assert np.isclose((loss_weights(mask, "seq_mean_token_mean") * x).sum(), np.mean([r.mean() for r in rows]))
    assert np.isclose((loss_weights(mask, "seq_mean_token_sum") * x).sum(), np.mean([r.sum() for r in rows]))
    assert np.all(loss_weights(np.zeros((3, 4)), "token_mean") == 0)
    with pytest.raises(ValueError, match="aggregation"):
        loss_weights(mask, "sum")


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators(estimator):
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(size=(2, 50))
    got = np.asarray(kl_divergence(estimator, jnp.asarray(logp), jnp.asarray(ref)))
    want = {"k1": logp - ref, "k2": 0.5 * (logp - ref) ** 2, "k3": np.exp(ref - logp) - (ref - logp) - 1}
    np.testing.assert_allclose(got, want[estimator], rtol=1e-5, atol=1e-6)


def test_kl_estimators_are_unbiased_or_not_on_samples():
    # Sampled from p: E[k1] = E[k3] = KL(p || q); k2 is biased.
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.5, 0.3])
    true_kl = np.sum(p * np.log(p / q))
    for est in ("k1", "k3"):
        vals = np.asarray(kl_divergence(est, jnp.log(p), jnp.log(q)))
        np.testing.assert_allclose(np.sum(p * vals), true_kl, rtol=1e-5)


CASES = [
    LossConfig(aggregation="token_mean"),
    LossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, aggregation="seq_mean_token_mean"),
    LossConfig(kl_in="loss", kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01, aggregation="seq_mean_token_sum"),
    LossConfig(kl_in="loss", kl_coef=0.05, kl_estimator="k1", tis_cap=1.5, aggregation="constant"),
    LossConfig(policy_loss="pg", kl_in="loss", kl_coef=0.2, kl_estimator="k2", aggregation="token_mean"),
]


def ref_objective(cfg, mask, old, logp, ref, sampler, adv, ent):
    w = ref_weights(mask, cfg.aggregation, cfg.constant_normalizer)
    total, pg_total, clipped = 0.0, 0.0, 0
    for i, k in zip(*np.nonzero(mask)):
        if cfg.policy_loss == "pg":
            pg = -adv[i, k] * logp[i, k]
        else:
            pg = ref_ppo_token(logp[i, k], old[i, k], adv[i, k], cfg.clip_low, cfg.clip_high, cfg.dual_clip)
            r = np.exp(logp[i, k] - old[i, k])
            unclipped = -adv[i, k] * r
            clipped += int(not np.isclose(pg, unclipped, rtol=1e-6, atol=1e-7))
        if cfg.tis_cap is not None:
            pg *= min(np.exp(old[i, k] - sampler[i, k]), cfg.tis_cap)
        tok = pg
        if cfg.kl_in == "loss":
            d = logp[i, k] - ref[i, k]
            kl = {"k1": d, "k2": 0.5 * d * d, "k3": np.exp(-d) - 1 + d}[cfg.kl_estimator]
            tok += cfg.kl_coef * kl
        tok -= cfg.entropy_coef * ent[i, k]
        total += w[i, k] * tok
        pg_total += w[i, k] * pg
    return total, pg_total, clipped


@pytest.mark.parametrize("case", range(len(CASES)))
def test_policy_objective_matches_reference(case):
    cfg = CASES[case]
    mask, old, logp, ref, sampler, adv, ent = make_inputs(case + 10)
    weights = loss_weights(mask, cfg.aggregation, cfg.constant_normalizer)
    loss, metrics = policy_objective(
        cfg, logp, old, adv, weights, mask, ref_logp_nt=ref, entropy_nt=ent, sampler_logp_nt=sampler
    )
    want_loss, want_pg, want_clipped = ref_objective(cfg, mask, old, logp, ref, sampler, adv, ent)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["pg_loss"]), want_pg, rtol=1e-5, atol=1e-6)
    if cfg.policy_loss == "ppo_clip":
        assert float(metrics["clipped_sum"]) == want_clipped
    fin = finalize_metrics(metrics)
    on = mask > 0
    np.testing.assert_allclose(float(fin["entropy"]), ent[on].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(fin["ratio_max"]), np.exp(logp - old)[on].max(), rtol=1e-5)
    np.testing.assert_allclose(float(fin["adv_std"]), adv[on].std(), rtol=1e-4)


def test_ppo_gradient_is_zero_where_clipped_and_dual_clip_caps():
    cfg = LossConfig(clip_low=0.2, clip_high=0.3, dual_clip=3.0, aggregation="token_mean")
    old = np.zeros((1, 4), np.float32)
    logp = np.log(np.array([[1.5, 0.5, 5.0, 1.0]], np.float32))
    adv = np.array([[1.0, -1.0, -1.0, 2.0]], np.float32)
    mask = np.ones((1, 4), np.float32)
    w = loss_weights(mask, "token_mean")

    def f(lp):
        return policy_objective(cfg, lp, old, adv, w, mask)[0]

    grad = np.asarray(jax.grad(f)(jnp.asarray(logp)))
    # token 0: ratio 1.5 > 1.3 with A > 0 -> clipped, no gradient; token 1: ratio 0.5 < 0.8 with A < 0 ->
    # clipped; token 2: ratio 5 with A < 0 -> dual clip caps the loss at 3, no gradient; token 3: ratio 1.
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0, -2.0 / 4]], atol=1e-7)
    loss, metrics = policy_objective(cfg, logp, old, adv, w, mask)
    np.testing.assert_allclose(float(loss), (-1.3 + 0.8 + 3.0 - 2.0) / 4, rtol=1e-6)
    assert float(metrics["clipped_sum"]) == 3.0


def ppo_grad_formula(log_ratio, a, clip_low, clip_high, dual):
    """d loss / d logp of one PPO-clip token, by hand: -A * ratio where the unclipped branch decides the loss
    (A > 0 and ratio < 1 + clip_high, or A < 0 and ratio > 1 - clip_low, and not capped by the dual clip at
    ratio > c), else 0."""
    r = np.exp(np.float64(log_ratio))
    unclipped = (a > 0 and r < 1 + clip_high) or (a < 0 and r > 1 - clip_low)
    if dual is not None and a < 0 and r > dual:
        unclipped = False
    return -a * r if unclipped else 0.0


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_ppo_gradient_at_extreme_ratios_matches_the_formula(dual_clip):
    """Log-ratios far beyond exp's float32 range (~88.7) give the formula's gradient, not NaN; inside the
    documented bound |log-ratio| <= 20 the gradient is exact, beyond it the ratio is held (gradient 0)."""
    cfg = LossConfig(clip_low=0.2, clip_high=0.28, dual_clip=dual_clip, aggregation="token_mean")
    log_ratio = np.array([100.0, 100.0, 90.0, -100.0, -100.0, 15.0, 15.0, 0.1, -0.1, 19.0], np.float32)
    adv = np.array([1.0, -1.0, 2.0, 1.0, -1.0, -1.0, 0.5, 1.0, -1.0, -0.5], np.float32)
    old = np.full((1, log_ratio.size), -3.0, np.float32)
    logp, adv, mask = old + log_ratio[None], adv[None], np.ones_like(old)
    w = loss_weights(mask, "token_mean")

    grad = np.asarray(jax.grad(lambda lp: policy_objective(cfg, lp, old, adv, w, mask)[0])(jnp.asarray(logp)))
    assert np.all(np.isfinite(grad))
    want = np.array([ppo_grad_formula(d, a, 0.2, 0.28, dual_clip) for d, a in zip(log_ratio, adv[0])])
    inside = np.abs(log_ratio) <= 20.0
    np.testing.assert_allclose(grad[0, inside], want[inside] / log_ratio.size, rtol=1e-5, atol=1e-12)
    # Beyond the bound the formula's gradient is 0 (clipped, dual-capped) or ~0 (ratio e^-100), and so is the
    # library's, except for A < 0 without dual clip (token 1): the formula's -A * e^100 overflows float32 and
    # the held ratio gives 0 instead.
    np.testing.assert_array_equal(grad[0, ~inside], 0.0)
    differs = np.abs(want) > 1e30
    assert differs.tolist() == [False, dual_clip is None] + [False] * 8
    np.testing.assert_allclose(grad[0, ~differs], want[~differs] / log_ratio.size, rtol=1e-5, atol=1e-30)
    loss, metrics = policy_objective(cfg, logp, old, adv, w, mask)
    assert np.isfinite(float(loss)) and np.isfinite(float(metrics["ratio_sum"]))
    assert float(finalize_metrics(metrics)["ratio_max"]) == pytest.approx(np.exp(20.0), rel=1e-5)


def test_metrics_combine_across_splits():
    cfg = CASES[2]
    mask, old, logp, ref, sampler, adv, ent = make_inputs(7)
    w = loss_weights(mask, cfg.aggregation)
    kw = dict(ref_logp_nt=ref, entropy_nt=ent)
    full_loss, full = policy_objective(cfg, logp, old, adv, w, mask, **kw)
    parts = [
        policy_objective(cfg, logp[s], old[s], adv[s], w[s], mask[s], ref_logp_nt=ref[s], entropy_nt=ent[s])
        for s in (slice(0, 2), slice(2, 6))
    ]
    merged = combine_metrics(parts[0][1], parts[1][1])
    np.testing.assert_allclose(float(parts[0][0] + parts[1][0]), float(full_loss), rtol=1e-5)
    for key, value in finalize_metrics(merged).items():
        np.testing.assert_allclose(float(value), float(finalize_metrics(full)[key]), rtol=1e-5, atol=1e-6)


def test_value_loss():
    v = np.array([1.0, 2.0, -1.0])
    old = np.array([0.0, 2.5, -1.0])
    ret = np.array([2.0, 1.0, 0.0])
    got = np.asarray(value_loss(v, old, ret, 0.5))
    clipped = old + np.clip(v - old, -0.5, 0.5)
    np.testing.assert_allclose(got, 0.5 * np.maximum((v - ret) ** 2, (clipped - ret) ** 2))
    np.testing.assert_allclose(np.asarray(value_loss(v, old, ret, None)), 0.5 * (v - ret) ** 2)


def test_config_validation():
    with pytest.raises(ValueError, match="dual_clip"):
        LossConfig(dual_clip=0.5)
    with pytest.raises(ValueError, match="policy_loss"):
        LossConfig(policy_loss="dpo")
    with pytest.raises(ValueError, match="kl_in"):
        LossConfig(kl_in="both")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_objective(LossConfig(kl_in="loss", kl_coef=0.1), *([np.zeros((1, 2), np.float32)] * 5))
