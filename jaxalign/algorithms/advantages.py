"""Advantage estimators: from sequence rewards (and optionally per-token KL and values) to per-token advantages.

Every estimator is a pure, jittable jnp function registered by name in `ESTIMATORS`; the training loop calls
`compute_advantages(name, cfg, rewards_n, group_ids_n, mask_nt, ...)`. Conventions shared by all of them:

* Sample `i` belongs to the group `group_ids_n[i]` (all samples of one prompt share an id). Ids must lie in
  `[0, n)`; `group_ids(n, group_size)` builds the usual contiguous layout `i // group_size`.
* `mask_nt` marks the response tokens that are trained on; every output is exactly 0 where the mask is 0, and
  a row without any response token (an empty response) gets all zeros.
* `valid_n` (optional, bool [n], default all True) marks the samples that count: a failed sample (its
  reward could not be computed; the loop fills in its group's mean) gets all-zero outputs and takes no part
  in any statistic: group means, stds and sizes (RLOO's k, GRPO's std), the batch std and token whitening
  see only the valid samples.
* A group of size 1 (one valid sample) has no baseline: its group-relative advantage is 0.
* A group whose rewards are all equal carries no learning signal and gets advantage exactly 0. "Equal" is
  relative to the batch: max - min <= `cfg.equal_reward_tol` * max |r| over the batch's valid samples. This
  guards against a spread of, say, 1e-9 being divided by a std of 1e-9 + eps and turning float noise into
  advantages of order 1, while rewards in small units (a group [0, 5e-7] in a batch of such rewards) keep
  their signal.
* Standard deviations use the unbiased (n - 1) estimator when `cfg.unbiased_std` (verl, TRL and OpenRLHF
  all do), else the population (n) estimator.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.algorithms.kl import KL_ESTIMATORS, kl_divergence

STD_NORMALIZATIONS = ("group", "batch", "none")


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    """How sequence rewards become per-token advantages.

    Attributes:
      estimator: a name in `ESTIMATORS`.
      std_normalization: GRPO only: divide by the std of the rewards of the "group", of the whole "batch",
        or not at all ("none").
      eps: added to every std before dividing (verl 1e-6, TRL 1e-4, OpenRLHF 1e-9).
      unbiased_std: use the (n - 1) std estimator.
      equal_reward_tol: a group whose rewards span at most this fraction of the batch's largest |reward|
        gets advantage 0 (relative, so the reward's units do not matter).
      kl_coef: beta of the per-token KL penalty folded into the reward; only the estimators with a per-token
        reward take it (`KL_IN_REWARD_ESTIMATORS`); the group estimators reject it (use KL in the loss).
      kl_estimator: "k1" | "k2" | "k3" estimator of that KL between the old (sampling) policy and the
        reference, see `kl.kl_divergence`.
      gamma: discount for reward-to-go (REINFORCE++) and GAE; "reinforce_pp_baseline" needs 1 (see there).
      lam: GAE lambda.
      whiten: REINFORCE++ and GAE: whiten the advantages over all valid tokens of the batch.
    """

    estimator: str = "grpo"
    std_normalization: str = "group"
    eps: float = 1e-6
    unbiased_std: bool = True
    equal_reward_tol: float = 1e-6
    kl_coef: float = 0.0
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 1.0
    whiten: bool = True

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown advantage estimator {self.estimator!r}; choose from {sorted(ESTIMATORS)}")
        if self.std_normalization not in STD_NORMALIZATIONS:
            raise ValueError(
                f"std_normalization must be one of {STD_NORMALIZATIONS}, got {self.std_normalization!r}"
            )
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.eps < 0 or self.equal_reward_tol < 0 or self.kl_coef < 0:
            raise ValueError("eps, equal_reward_tol and kl_coef must be >= 0")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={self.gamma}, lam={self.lam}")


EstimatorFn = Callable[..., tuple[jax.Array, jax.Array]]
ESTIMATORS: dict[str, EstimatorFn] = {}

# Estimators with a per-token reward, where `kl_coef` folds a KL penalty in. The others (grpo, dr_grpo, rloo)
# see only sequence rewards and would ignore it: KL goes in the loss with them.
KL_IN_REWARD_ESTIMATORS = ("reinforce_pp", "reinforce_pp_baseline", "gae")


def check_estimator_config(name: str, cfg: AdvantageConfig) -> None:
    """Raises ValueError for settings the estimator `name` would silently ignore or misuse."""
    if cfg.kl_coef > 0 and name not in KL_IN_REWARD_ESTIMATORS:
        raise ValueError(
            f"kl_coef={cfg.kl_coef} puts a KL penalty in the per-token reward, but the estimator {name!r} uses "
            f"sequence rewards only and would ignore it; put the KL term in the loss instead (LossConfig "
            f"kl_in='loss' with kl_coef={cfg.kl_coef}) and set the advantage's kl_coef to 0")
    if name == "reinforce_pp_baseline" and cfg.gamma != 1.0:
        raise ValueError(
            f"reinforce_pp_baseline needs gamma=1 (got {cfg.gamma}): its group-mean baseline is a baseline of "
            "the undiscounted sequence reward, and the reference implementations ignore gamma for it; use "
            "gamma=1, or reinforce_pp / gae for discounted returns")


def register(name: str):
    """Decorator adding an estimator `fn(cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt, ref_logp_nt,
    values_nt, *, valid_n) -> (advantages_nt, returns_nt)` to `ESTIMATORS` (`valid_n` bool [n]: the samples
    that count in group and batch statistics; `compute_advantages` has zeroed the others' rewards and mask)."""

    def wrap(fn: EstimatorFn) -> EstimatorFn:
        if name in ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} registered twice")
        ESTIMATORS[name] = fn
        return fn

    return wrap


def compute_advantages(
    name: str,
    cfg: AdvantageConfig,
    rewards_n,
    group_ids_n,
    mask_nt,
    old_logp_nt=None,
    ref_logp_nt=None,
    values_nt=None,
    valid_n=None,
) -> tuple[jax.Array, jax.Array]:
    """Per-token `(advantages_nt, returns_nt)` float32 for the estimator `name` (jittable, `name` static).

    `returns_nt` is the value-function target for GAE; for the other estimators it equals the advantages.
    `old_logp_nt` / `ref_logp_nt` are needed when `cfg.kl_coef > 0` (REINFORCE++ and GAE), `values_nt` by
    "gae". `valid_n` (bool [n]; None = all) marks the samples that count (see the module docstring): the
    others get zeros and are left out of every statistic, whatever their reward (NaN included).
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; choose from {sorted(ESTIMATORS)}")
    check_estimator_config(name, cfg)
    rewards_n = jnp.asarray(rewards_n, jnp.float32)
    mask_nt = jnp.asarray(mask_nt, jnp.float32)
    if rewards_n.ndim != 1 or mask_nt.ndim != 2 or mask_nt.shape[0] != rewards_n.shape[0]:
        raise ValueError(f"expected rewards_n [n] and mask_nt [n, t]; got {rewards_n.shape} and {mask_nt.shape}")
    group_ids_n = jnp.asarray(group_ids_n, jnp.int32)
    if group_ids_n.shape != rewards_n.shape:
        raise ValueError(f"group_ids_n {group_ids_n.shape} must match rewards_n {rewards_n.shape}")
    valid_n = jnp.ones(rewards_n.shape, bool) if valid_n is None else jnp.asarray(valid_n, bool)
    if valid_n.shape != rewards_n.shape:
        raise ValueError(f"valid_n {valid_n.shape} must match rewards_n {rewards_n.shape}")
    rewards_n = jnp.where(valid_n, rewards_n, 0.0)
    mask_nt = mask_nt * valid_n[:, None]
    advantages_nt, returns_nt = ESTIMATORS[name](
        cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt, ref_logp_nt, values_nt, valid_n=valid_n
    )
    return advantages_nt * mask_nt, returns_nt * mask_nt


def group_ids(num_samples: int, group_size: int) -> np.ndarray:
    """Contiguous group ids `i // group_size` for `num_samples` samples."""
    if group_size < 1 or num_samples % group_size:
        raise ValueError(f"num_samples={num_samples} is not a positive multiple of group_size={group_size}")
    return np.arange(num_samples, dtype=np.int32) // group_size


def equal_reward_groups(rewards_n: np.ndarray, group_ids_n: np.ndarray, tol: float,
                        valid_n: np.ndarray | None = None) -> np.ndarray:
    """Host-side (NumPy): bool [n], True for samples whose group's valid rewards are all equal in the
    estimators' sense (max - min <= tol * max |r| over the valid samples of the batch): the group-relative
    estimators give these samples advantage 0, so they carry no learning signal.
    """
    rewards_n = np.asarray(rewards_n, np.float64)
    group_ids_n = np.asarray(group_ids_n)
    if rewards_n.shape != group_ids_n.shape or rewards_n.ndim != 1:
        raise ValueError(f"rewards_n {rewards_n.shape} and group_ids_n {group_ids_n.shape} must be equal 1-D")
    valid_n = np.ones(rewards_n.shape, bool) if valid_n is None else np.asarray(valid_n, bool)
    _, inverse = np.unique(group_ids_n, return_inverse=True)
    num_groups = int(inverse.max()) + 1 if inverse.size else 0
    max_g = np.full(num_groups, -np.inf)
    min_g = np.full(num_groups, np.inf)
    np.maximum.at(max_g, inverse, np.where(valid_n, rewards_n, -np.inf))
    np.minimum.at(min_g, inverse, np.where(valid_n, rewards_n, np.inf))
    scale = float(np.max(np.abs(rewards_n[valid_n]))) if valid_n.any() else 0.0
    return (max_g - min_g <= tol * scale)[inverse]


# ---------------------------------------------------------------------------------------------------------
# Group statistics (segment reductions: group ids need not be contiguous, everything stays jittable).


def _group_stats(rewards_n, group_ids_n, valid_n, unbiased: bool):
    """Per-sample statistics of its group's valid samples: (mean, std, size, max - min). A group without
    valid samples has size 0 and spread -inf."""
    n = rewards_n.shape[0]
    weight_n = valid_n.astype(jnp.float32)
    count_g = jax.ops.segment_sum(weight_n, group_ids_n, num_segments=n)
    sum_g = jax.ops.segment_sum(weight_n * rewards_n, group_ids_n, num_segments=n)
    mean_g = sum_g / jnp.maximum(count_g, 1.0)
    mean_n = mean_g[group_ids_n]
    sq_g = jax.ops.segment_sum(weight_n * jnp.square(rewards_n - mean_n), group_ids_n, num_segments=n)
    dof_g = jnp.maximum(count_g - 1.0, 1.0) if unbiased else jnp.maximum(count_g, 1.0)
    std_n = jnp.sqrt(sq_g / dof_g)[group_ids_n]
    spread_n = (
        jax.ops.segment_max(jnp.where(valid_n, rewards_n, -jnp.inf), group_ids_n, num_segments=n)
        - jax.ops.segment_min(jnp.where(valid_n, rewards_n, jnp.inf), group_ids_n, num_segments=n)
    )[group_ids_n]
    return mean_n, std_n, count_g[group_ids_n], spread_n


def _informative(cfg: AdvantageConfig, rewards_n, valid_n, count_n, spread_n):
    """True for valid samples in groups of >= 2 valid samples whose rewards are not all equal (relative to
    the batch's largest |reward|, see the module docstring); the others get exactly 0 (even with eps = 0,
    where an equal group's 0 / 0 would be NaN)."""
    scale = jnp.max(jnp.where(valid_n, jnp.abs(rewards_n), 0.0))
    return (count_n >= 2) & (spread_n > cfg.equal_reward_tol * scale) & valid_n


def _masked_whiten(x_nt, mask_nt, eps: float, unbiased: bool):
    """(x - mean) / (std + eps) with mean and std over the masked tokens; 0 where masked."""
    count = jnp.sum(mask_nt)
    mean = jnp.sum(x_nt * mask_nt) / jnp.maximum(count, 1.0)
    dof = jnp.maximum(count - 1.0, 1.0) if unbiased else jnp.maximum(count, 1.0)
    std = jnp.sqrt(jnp.sum(jnp.square(x_nt - mean) * mask_nt) / dof)
    return (x_nt - mean) / (std + eps) * mask_nt


def _last_token_onehot(mask_nt):
    """One-hot [n, t] of the last masked-in token of each row (all zeros for an empty row)."""
    t = mask_nt.shape[1]
    idx_t = jnp.arange(t)
    last_n = jnp.max(jnp.where(mask_nt > 0, idx_t, -1), axis=1)
    return (idx_t[None, :] == last_n[:, None]).astype(jnp.float32) * mask_nt


def _token_rewards(cfg: AdvantageConfig, seq_rewards_n, mask_nt, old_logp_nt, ref_logp_nt):
    """Sequence reward on the last response token minus `kl_coef * KL(old || ref)` on every response token."""
    rewards_nt = seq_rewards_n[:, None] * _last_token_onehot(mask_nt)
    if cfg.kl_coef > 0:
        if old_logp_nt is None or ref_logp_nt is None:
            raise ValueError("kl_coef > 0 puts KL in the reward: pass old_logp_nt and ref_logp_nt")
        kl_nt = kl_divergence(
            cfg.kl_estimator, jnp.asarray(old_logp_nt, jnp.float32), jnp.asarray(ref_logp_nt, jnp.float32)
        )
        rewards_nt = rewards_nt - cfg.kl_coef * kl_nt * mask_nt
    return rewards_nt


def _reverse_masked_scan(step, init, xs_tn):
    """Runs `carry, out = step(carry, x_t)` from the last time step to the first."""
    _, out_tn = jax.lax.scan(step, init, xs_tn, reverse=True)
    return out_tn


def discounted_reward_to_go(rewards_nt, mask_nt, gamma: float):
    """G_t = r_t + gamma * G_next over masked-in tokens; masked tokens are skipped (they neither add reward
    nor discount) and get 0."""

    def step(next_return_n, x):
        r_n, m_n = x
        g_n = r_n + gamma * next_return_n
        return jnp.where(m_n > 0, g_n, next_return_n), g_n * m_n

    init = jnp.zeros(rewards_nt.shape[0], jnp.float32)
    return _reverse_masked_scan(step, init, (rewards_nt.T, mask_nt.T)).T


def generalized_advantage(rewards_nt, values_nt, mask_nt, gamma: float, lam: float):
    """GAE over masked-in tokens (masked tokens skipped; the value after the last token is 0):
    delta_t = r_t + gamma * V_next - V_t,  A_t = delta_t + gamma * lam * A_next."""

    def step(carry, x):
        next_value_n, next_adv_n = carry
        r_n, v_n, m_n = x
        adv_n = r_n + gamma * next_value_n - v_n + gamma * lam * next_adv_n
        keep = m_n > 0
        carry = (jnp.where(keep, v_n, next_value_n), jnp.where(keep, adv_n, next_adv_n))
        return carry, adv_n * m_n

    zeros_n = jnp.zeros(rewards_nt.shape[0], jnp.float32)
    return _reverse_masked_scan(step, (zeros_n, zeros_n), (rewards_nt.T, values_nt.T, mask_nt.T)).T


# ---------------------------------------------------------------------------------------------------------
# Estimators.


@register("grpo")
def grpo(cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt=None, ref_logp_nt=None, values_nt=None, *,
         valid_n=None):
    """GRPO: A_i = (r_i - mean_g(r)) / (std + eps), the same for every token of sample i.

    std is the std of the rewards of i's group (`std_normalization="group"`, which cancels any positive
    per-group scale of the rewards), of all rewards in the batch ("batch"), or 1 ("none", i.e. Dr.GRPO);
    every statistic over valid samples only. Groups of size 1 and groups with all-equal rewards get 0.
    """
    valid_n = _all_valid(rewards_n) if valid_n is None else valid_n
    mean_n, std_n, count_n, spread_n = _group_stats(rewards_n, group_ids_n, valid_n, cfg.unbiased_std)
    centered_n = rewards_n - mean_n
    if cfg.std_normalization == "group":
        centered_n = centered_n / (std_n + cfg.eps)
    elif cfg.std_normalization == "batch":
        weight_n = valid_n.astype(jnp.float32)
        count = jnp.sum(weight_n)
        dof = jnp.maximum(count - 1.0, 1.0) if cfg.unbiased_std else jnp.maximum(count, 1.0)
        batch_mean = jnp.sum(weight_n * rewards_n) / jnp.maximum(count, 1.0)
        batch_std = jnp.sqrt(jnp.sum(weight_n * jnp.square(rewards_n - batch_mean)) / dof)
        centered_n = centered_n / (batch_std + cfg.eps)
    adv_n = jnp.where(_informative(cfg, rewards_n, valid_n, count_n, spread_n), centered_n, 0.0)
    adv_nt = adv_n[:, None] * mask_nt
    return adv_nt, adv_nt


@register("dr_grpo")
def dr_grpo(cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt=None, ref_logp_nt=None, values_nt=None, *,
            valid_n=None):
    """Dr.GRPO: A_i = r_i - mean_g(r) (no std division). Pair it with the "constant" loss aggregation."""
    return grpo(dataclasses.replace(cfg, std_normalization="none"), rewards_n, group_ids_n, mask_nt,
                valid_n=valid_n)


@register("rloo")
def rloo(cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt=None, ref_logp_nt=None, values_nt=None, *,
         valid_n=None):
    """RLOO: A_i = r_i - (1/(k-1)) sum_{j != i in g} r_j = k/(k-1) (r_i - mean_g(r)), with k the number of
    valid samples of the group (a failed sample is neither in the sum nor in k).

    Groups of size 1 and groups with all-equal rewards get 0.
    """
    valid_n = _all_valid(rewards_n) if valid_n is None else valid_n
    mean_n, _, count_n, spread_n = _group_stats(rewards_n, group_ids_n, valid_n, cfg.unbiased_std)
    scale_n = count_n / jnp.maximum(count_n - 1.0, 1.0)
    informative_n = _informative(cfg, rewards_n, valid_n, count_n, spread_n)
    adv_n = jnp.where(informative_n, scale_n * (rewards_n - mean_n), 0.0)
    adv_nt = adv_n[:, None] * mask_nt
    return adv_nt, adv_nt


def _all_valid(rewards_n):
    return jnp.ones(rewards_n.shape, bool)


def _reinforce_pp_tokens(cfg, seq_rewards_n, mask_nt, old_logp_nt, ref_logp_nt):
    rewards_nt = _token_rewards(cfg, seq_rewards_n, mask_nt, old_logp_nt, ref_logp_nt)
    returns_nt = discounted_reward_to_go(rewards_nt, mask_nt, cfg.gamma)
    adv_nt = _masked_whiten(returns_nt, mask_nt, cfg.eps, cfg.unbiased_std) if cfg.whiten else returns_nt
    return adv_nt, adv_nt


@register("reinforce_pp")
def reinforce_pp(cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt=None, ref_logp_nt=None, values_nt=None, *,
                 valid_n=None):
    """REINFORCE++: per-token reward = r_i on the last response token minus kl_coef * KL_t(old || ref) on
    every response token; A_t = sum_{s >= t} gamma^(s-t) reward_s (reward-to-go, gamma = 1 by default); then
    whitened, (A - mean) / (std + eps), over all response tokens of the batch (`compute_advantages` has
    already taken failed samples out of `mask_nt`). No group baseline.
    """
    return _reinforce_pp_tokens(cfg, rewards_n, mask_nt, old_logp_nt, ref_logp_nt)


@register("reinforce_pp_baseline")
def reinforce_pp_baseline(
    cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt=None, ref_logp_nt=None, values_nt=None, *, valid_n=None
):
    """REINFORCE++-baseline: the mean of the group's valid rewards is subtracted from each sequence reward
    (r_i - mean_g(r)), then exactly as `reinforce_pp` (KL reward-to-go, batch whitening). Needs gamma = 1
    (`check_estimator_config`): the baseline is one of the undiscounted sequence reward."""
    valid_n = _all_valid(rewards_n) if valid_n is None else valid_n
    mean_n, _, _, _ = _group_stats(rewards_n, group_ids_n, valid_n, cfg.unbiased_std)
    return _reinforce_pp_tokens(cfg, rewards_n - mean_n, mask_nt, old_logp_nt, ref_logp_nt)


@register("gae")
def gae(cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt=None, ref_logp_nt=None, values_nt=None, *,
        valid_n=None):
    """PPO's GAE(gamma, lambda) with a learned critic: the per-token reward is r_i on the last response
    token (minus kl_coef * KL_t when KL is in the reward); delta_t = reward_t + gamma V_{t+1} - V_t with
    V = 0 after the last token; A_t = delta_t + gamma lam A_{t+1}. Returns (critic targets) = A + V, taken
    before the advantages are whitened over the batch's response tokens (failed samples already masked out).
    """
    if values_nt is None:
        raise ValueError("the 'gae' estimator needs values_nt from the critic")
    values_nt = jnp.asarray(values_nt, jnp.float32) * mask_nt
    rewards_nt = _token_rewards(cfg, rewards_n, mask_nt, old_logp_nt, ref_logp_nt)
    adv_nt = generalized_advantage(rewards_nt, values_nt, mask_nt, cfg.gamma, cfg.lam)
    returns_nt = (adv_nt + values_nt) * mask_nt
    if cfg.whiten:
        adv_nt = _masked_whiten(adv_nt, mask_nt, cfg.eps, cfg.unbiased_std)
    return adv_nt, returns_nt
