"""Advantage estimators against loop-based NumPy references written here, and hand values for failed
samples, rewards in small units and the settings an estimator rejects."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxalign.algorithms.advantages import (
    ESTIMATORS,
    AdvantageConfig,
    compute_advantages,
    KL_IN_REWARD_ESTIMATORS,
    equal_reward_groups,
    group_ids,
)

# ----------------------------------------------------------------------------------------------------------
# NumPy references (plain loops over groups and tokens).


def ref_std(x, unbiased):
    x = np.asarray(x, np.float64)
    if len(x) < 2 and unbiased:
        return 0.0
    return float(np.std(x, ddof=1 if unbiased else 0))


def ref_group_scalar(rewards, gids, cfg, kind, valid=None):
    """Group-relative advantages over the valid samples only (failed ones: 0, in no statistic); "equal" is
    max - min <= tol * the largest |reward| of the valid samples."""
    valid = np.ones(len(rewards), bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros(len(rewards))
    batch_std = ref_std([rewards[j] for j in range(len(rewards)) if valid[j]], cfg.unbiased_std)
    scale = max((abs(rewards[j]) for j in range(len(rewards)) if valid[j]), default=0.0)
    for i in range(len(rewards)):
        if not valid[i]:
            continue
        members = [j for j in range(len(rewards)) if gids[j] == gids[i] and valid[j]]
        r = np.array([rewards[j] for j in members], np.float64)
        if len(members) < 2 or r.max() - r.min() <= cfg.equal_reward_tol * scale:
            continue
        if kind == "rloo":
            out[i] = rewards[i] - (r.sum() - rewards[i]) / (len(members) - 1)
            continue
        centered = rewards[i] - r.mean()
        if kind == "grpo" and cfg.std_normalization == "group":
            centered /= ref_std(r, cfg.unbiased_std) + cfg.eps
        elif kind == "grpo" and cfg.std_normalization == "batch":
            centered /= batch_std + cfg.eps
        out[i] = centered
    return out


def ref_kl(old, ref, est):
    lr = old - ref
    return {"k1": lr, "k2": 0.5 * lr**2, "k3": np.exp(-lr) - 1 + lr}[est]


def ref_whiten(x, mask, cfg):
    vals = x[mask > 0]
    if vals.size == 0:
        return np.zeros_like(x)
    std = ref_std(vals, cfg.unbiased_std) if vals.size > 1 else 0.0
    return np.where(mask > 0, (x - vals.mean()) / (std + cfg.eps), 0.0)


def ref_token_rewards(seq_r, mask, old, ref, cfg):
    n, t = mask.shape
    rew = np.zeros((n, t))
    for i in range(n):
        pos = [k for k in range(t) if mask[i, k] > 0]
        for k in pos:
            if cfg.kl_coef > 0:
                rew[i, k] -= cfg.kl_coef * ref_kl(old[i, k], ref[i, k], cfg.kl_estimator)
        if pos:
            rew[i, pos[-1]] += seq_r[i]
    return rew


def ref_reinforce_pp(seq_r, mask, old, ref, cfg):
    n, t = mask.shape
    rew = ref_token_rewards(seq_r, mask, old, ref, cfg)
    ret = np.zeros((n, t))
    for i in range(n):
        pos = [k for k in range(t) if mask[i, k] > 0]
        for a, k in enumerate(pos):
            ret[i, k] = sum(cfg.gamma ** (b - a) * rew[i, pos[b]] for b in range(a, len(pos)))
    return ref_whiten(ret, mask, cfg) if cfg.whiten else ret


def ref_gae(seq_r, mask, old, ref, values, cfg):
    n, t = mask.shape
    rew = ref_token_rewards(seq_r, mask, old, ref, cfg)
    adv = np.zeros((n, t))
    for i in range(n):
        pos = [k for k in range(t) if mask[i, k] > 0]
        deltas = []
        for a, k in enumerate(pos):
            v_next = values[i, pos[a + 1]] if a + 1 < len(pos) else 0.0
            deltas.append(rew[i, k] + cfg.gamma * v_next - values[i, k])
        for a, k in enumerate(pos):
            adv[i, k] = sum((cfg.gamma * cfg.lam) ** (b - a) * deltas[b] for b in range(a, len(pos)))
    returns = np.where(mask > 0, adv + values, 0.0)
    if cfg.whiten:
        adv = ref_whiten(adv, mask, cfg)
    return adv, returns


def reference(name, cfg, rewards, gids, mask, old, ref, values, valid=None):
    valid = np.ones(len(rewards), bool) if valid is None else np.asarray(valid, bool)
    mask = mask * valid[:, None]  # a failed sample has no trained token
    if name in ("grpo", "dr_grpo", "rloo"):
        c = dataclasses.replace(cfg, std_normalization="none") if name == "dr_grpo" else cfg
        adv_n = ref_group_scalar(rewards, gids, c, "rloo" if name == "rloo" else "grpo", valid)
        adv = adv_n[:, None] * mask
        return adv, adv
    if name == "reinforce_pp":
        adv = ref_reinforce_pp(rewards, mask, old, ref, cfg)
        return adv, adv
    if name == "reinforce_pp_baseline":
        base = np.array([np.mean([rewards[j] for j in range(len(rewards)) if gids[j] == gids[i] and valid[j]]
                                 or [0.0]) for i in range(len(rewards))])  # fmt: skip
        adv = ref_reinforce_pp(np.where(valid, rewards - base, 0.0), mask, old, ref, cfg)
        return adv, adv
    return ref_gae(np.where(valid, rewards, 0.0), mask, old, ref, values, cfg)


def make_batch(seed, n=12, t=7, group_size=4):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=n).astype(np.float32)
    gids = group_ids(n, group_size)
    lengths = rng.integers(0, t + 1, size=n)
    lengths[1] = 0  # an empty response
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    mask[2, 1] = 0.0  # a hole inside a response (e.g. an environment token)
    old = rng.normal(scale=0.5, size=(n, t)).astype(np.float32) - 2.0
    ref = old + rng.normal(scale=0.2, size=(n, t)).astype(np.float32)
    values = rng.normal(size=(n, t)).astype(np.float32)
    return rewards, gids, mask, old, ref, values


CONFIGS = [
    AdvantageConfig(),
    AdvantageConfig(std_normalization="batch", eps=1e-4),
    AdvantageConfig(std_normalization="none", unbiased_std=False),
    AdvantageConfig(kl_coef=0.1, kl_estimator="k1", gamma=0.9, lam=0.8),
    AdvantageConfig(kl_coef=0.05, kl_estimator="k3", whiten=False),
    AdvantageConfig(kl_coef=0.05, kl_estimator="k2", unbiased_std=False),
]


def usable(name, cfg):
    """`cfg` without what `name` rejects (tested below): KL in the reward where there is no per-token
    reward, a discount for the group baseline of reinforce_pp_baseline."""
    if name not in ("reinforce_pp", "reinforce_pp_baseline", "gae"):
        cfg = dataclasses.replace(cfg, kl_coef=0.0)
    return dataclasses.replace(cfg, gamma=1.0) if name == "reinforce_pp_baseline" else cfg


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("cfg_index", range(len(CONFIGS)))
def test_estimators_match_numpy_reference(name, cfg_index):
    cfg = usable(name, CONFIGS[cfg_index])
    rewards, gids, mask, old, ref, values = make_batch(cfg_index)
    rewards[4:8] = 0.5  # a group with all-equal rewards
    adv, ret = compute_advantages(name, cfg, rewards, gids, mask, old, ref, values)
    want_adv, want_ret = reference(name, cfg, rewards.astype(np.float64), gids, mask, old, ref, values)
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=2e-5, atol=2e-5)
    assert np.all(np.asarray(adv)[mask == 0] == 0.0)
    assert np.all(np.asarray(adv)[1] == 0.0)  # the empty response


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("cfg_index", [0, 1, 4])
def test_failed_samples_are_left_out_of_every_statistic(name, cfg_index):
    """valid_n False (a failed sample, its reward filled with the group mean as the loop does, or NaN) gives
    the same advantages for the others as if the sample did not exist, and zeros for itself."""
    cfg = usable(name, CONFIGS[cfg_index])
    rewards, gids, mask, old, ref, values = make_batch(cfg_index + 20)
    valid = np.ones(len(rewards), bool)
    valid[[0, 5, 6, 11]] = False  # groups of 4 with 3, 2 and 3 valid samples left
    rewards[0] = np.mean(rewards[1:4])  # what fill_failed_rewards puts in
    rewards[11] = np.nan  # a raw failed reward must not leak either
    adv, ret = compute_advantages(name, cfg, rewards, gids, mask, old, ref, values, valid_n=valid)
    want_adv, want_ret = reference(name, cfg, rewards.astype(np.float64), gids, mask, old, ref, values, valid)
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=2e-5, atol=2e-5)
    assert np.all(np.asarray(adv)[~valid] == 0.0) and np.all(np.isfinite(np.asarray(adv)))


def test_failed_sample_does_not_count_in_rloo_k_or_the_grpo_std():
    # rewards [1, 0, 1, failed]; the failed one carries its group's mean 2/3 (fill_failed_rewards).
    rewards = np.array([1.0, 0.0, 1.0, 2.0 / 3.0], np.float32)
    gids, mask = np.zeros(4, np.int32), np.ones((4, 2), np.float32)
    valid = np.array([True, True, True, False])

    def adv(name, cfg=AdvantageConfig(eps=0.0)):
        return np.asarray(compute_advantages(name, cfg, rewards, gids, mask, valid_n=valid)[0])[:, 0]

    # RLOO: 1 - (0 + 1) / 2 = 0.5, 0 - (1 + 1) / 2 = -1 (k = 3, not 4, which would give 0.444 and -0.889).
    np.testing.assert_allclose(adv("rloo"), [0.5, -1.0, 0.5, 0.0], rtol=1e-6)
    # GRPO: mean 2/3, unbiased std over [1, 0, 1] = sqrt(1/3) (not the 4-sample std 0.471).
    s = np.sqrt(1.0 / 3.0)
    np.testing.assert_allclose(adv("grpo"), [(1 / 3) / s, (-2 / 3) / s, (1 / 3) / s, 0.0], rtol=1e-5)
    np.testing.assert_allclose(adv("dr_grpo"), [1 / 3, -2 / 3, 1 / 3, 0.0], rtol=1e-5, atol=1e-7)
    # GRPO with the batch std: the batch is the three valid samples, the same std here.
    batch = AdvantageConfig(eps=0.0, std_normalization="batch")
    np.testing.assert_allclose(adv("grpo", batch), [(1 / 3) / s, (-2 / 3) / s, (1 / 3) / s, 0.0], rtol=1e-5)
    # A group left with one valid sample has no baseline.
    alone = np.array([True, False, False, False])
    got = compute_advantages("rloo", AdvantageConfig(), rewards, gids, mask, valid_n=alone)[0]
    assert np.all(np.asarray(got) == 0.0)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_rewards_in_small_units_keep_their_signal(name):
    # Rewards in units of 1e-7: the group [0, 5e-7] is not "all equal", the tolerance is relative.
    units = np.array([0.0, 5.0, 3.0, 1.0, 2.0, 1.0, 4.0, 0.0])
    gids, mask = group_ids(8, 4), np.ones((8, 3), np.float32)
    cfg = AdvantageConfig(eps=0.0)
    small = np.asarray(compute_advantages(name, cfg, (units * 1e-7).astype(np.float32), gids, mask)[0])[:, 0]
    want = ref_group_scalar(units * 1e-7, gids, dataclasses.replace(
        cfg, std_normalization="none" if name == "dr_grpo" else "group"), "rloo" if name == "rloo" else "grpo")
    assert np.all(np.abs(small) > 0)
    np.testing.assert_allclose(small, want, rtol=1e-4)
    # By hand: RLOO of group 0 = 1e-7 * [0 - 3, 5 - 4/3*..]; its first sample: 0 - (5 + 3 + 1) / 3 units.
    if name == "rloo":
        assert small[0] == pytest.approx(-3e-7, rel=1e-5)
    # Float noise relative to the batch's rewards still counts as equal: a one-ulp spread next to rewards of
    # 1 gives exactly 0 (also with eps = 0, where the group std is 0).
    noisy = np.array([1.0, np.nextafter(np.float32(1), np.float32(2)), 1.0, 1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
    got = np.asarray(compute_advantages(name, cfg, noisy, gids, mask)[0])
    assert np.all(got[:4] == 0.0) and np.all(got[4:] != 0.0)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_degenerate_groups_get_exactly_zero(name):
    mask = np.ones((7, 3), np.float32)
    gids = np.array([0, 0, 0, 1, 1, 1, 2])  # last group has a single sample
    rewards = np.array([1.0, 1.0, 1.0, 0.3, 0.3 + 1e-9, 0.3 - 1e-9, 5.0], np.float32)
    cfg = AdvantageConfig(eps=1e-9, equal_reward_tol=1e-6)
    adv, _ = compute_advantages(name, cfg, rewards, gids, mask)
    assert np.all(np.asarray(adv) == 0.0)
    # Without the tolerance a 1e-9 spread would be blown up by a tiny std: the guard is what keeps it at 0.
    rewards64 = np.array([0.3, 0.3 + 1e-9, 0.3 - 1e-9])
    assert abs((rewards64[1] - rewards64.mean()) / (rewards64.std(ddof=1) + 1e-9)) > 0.4


def test_grpo_group_std_cancels_per_group_scale_but_others_do_not():
    rng = np.random.default_rng(0)
    n, g = 16, 4
    gids = group_ids(n, g)
    rewards = rng.normal(size=n).astype(np.float32)
    scale = np.repeat(rng.uniform(0.5, 4.0, size=n // g), g).astype(np.float32)
    mask = np.ones((n, 5), np.float32)
    cfg = AdvantageConfig(eps=0.0)
    a, _ = compute_advantages("grpo", cfg, rewards, gids, mask)
    b, _ = compute_advantages("grpo", cfg, rewards * scale, gids, mask)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    for name in ("rloo", "reinforce_pp", "dr_grpo"):
        a, _ = compute_advantages(name, cfg, rewards, gids, mask)
        b, _ = compute_advantages(name, cfg, rewards * scale, gids, mask)
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-2, name


def test_jittable_with_static_name():
    rewards, gids, mask, old, ref, values = make_batch(3)
    valid = np.arange(len(rewards)) % 5 != 2
    fn = jax.jit(compute_advantages, static_argnums=(0, 1))
    for name in sorted(ESTIMATORS):
        cfg = AdvantageConfig(kl_coef=0.1 if name in KL_IN_REWARD_ESTIMATORS else 0.0)
        got = fn(name, cfg, rewards, gids, mask, old, ref, values, valid)
        want = compute_advantages(name, cfg, rewards, gids, mask, old, ref, values, valid)
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-6, atol=1e-6)


def test_equal_reward_groups():
    rewards = np.array([1.0, 1.0, 0.0, 1.0, 2.0, 2.0 + 1e-9, 7.0])
    gids = np.array([0, 0, 1, 1, 5, 5, 9])
    np.testing.assert_array_equal(
        equal_reward_groups(rewards, gids, 1e-6), [True, True, False, False, True, True, True]
    )
    # Relative to the largest |reward|: the same pattern in units of 1e-7 is not all-equal noise.
    np.testing.assert_array_equal(
        equal_reward_groups(rewards * 1e-7, gids, 1e-6), [True, True, False, False, True, True, True]
    )
    np.testing.assert_array_equal(equal_reward_groups(np.array([0.0, 5e-7]), np.zeros(2), 1e-6), [False, False])
    # A failed sample does not make its group look informative.
    np.testing.assert_array_equal(
        equal_reward_groups(np.array([1.0, 1.0, 0.0]), np.zeros(3), 1e-6, valid_n=np.array([1, 1, 0], bool)),
        [True, True, True])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_reject_kl_in_the_reward(name):
    mask = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="kl_in='loss'"):
        compute_advantages(name, AdvantageConfig(kl_coef=0.05), np.arange(4.0), np.zeros(4), mask, mask, mask)


def test_reinforce_pp_baseline_rejects_a_discount():
    mask = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="gamma=1"):
        compute_advantages("reinforce_pp_baseline", AdvantageConfig(gamma=0.9), np.arange(4.0), np.zeros(4), mask)
    compute_advantages("reinforce_pp", AdvantageConfig(gamma=0.9), np.arange(4.0), np.zeros(4), mask)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="estimator"):
        AdvantageConfig(estimator="ppo")
    with pytest.raises(ValueError, match="std_normalization"):
        AdvantageConfig(std_normalization="token")
    with pytest.raises(ValueError, match="values_nt"):
        compute_advantages("gae", AdvantageConfig(), np.ones(2), np.zeros(2), np.ones((2, 3)))
    with pytest.raises(ValueError, match="old_logp_nt"):
        compute_advantages("reinforce_pp", AdvantageConfig(kl_coef=0.1), np.ones(2), np.zeros(2), np.ones((2, 3)))
    with pytest.raises(ValueError, match="group_size"):
        group_ids(10, 3)
