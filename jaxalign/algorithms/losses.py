"""Policy losses, loss aggregation weights and additive loss metrics.

Aggregation is expressed as per-token weights computed once on the host over the whole mini-batch
(`loss_weights`). The loss of any subset of tokens (a micro-batch, a data shard) is then
`sum(weight_t * per_token_loss_t)`, so summing micro-batch losses and gradients gives exactly the
full-mini-batch loss and gradient, whatever the aggregation mode, micro-batch count or sharding.

Per-token objective (minimised) for a response token with advantage A, log-prob `logp` under the policy
being trained, `old_logp` under the policy that produced the advantages and `ratio = exp(logp - old_logp)`:

    loss_t = tis_t * pg_t + kl_coef * KL_t(pi || ref) [kl_in == "loss"] - entropy_coef * H_t

with `pg_t` from `POLICY_LOSSES[cfg.policy_loss]` and `tis_t` the truncated importance weight between the
trainer's old log-probs and the sampler's log-probs (see `policy_objective`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxalign.algorithms.kl import KL_ESTIMATORS, kl_divergence

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant")
KL_PLACEMENTS = ("reward", "loss", "none")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The policy (and value) objective.

    Attributes:
      policy_loss: a name in `POLICY_LOSSES` ("ppo_clip" | "pg").
      clip_low, clip_high: PPO ratio clip range [1 - clip_low, 1 + clip_high] (clip-higher when unequal).
      dual_clip: None or c > 1: for negative advantages the loss is capped at -c * A (verl uses 3).
      kl_in: "reward" (the advantage estimator folds KL into the reward), "loss" (added here) or "none".
      kl_estimator: "k1" | "k2" | "k3" for the KL loss term.
      kl_coef: the KL loss coefficient (used when kl_in == "loss").
      entropy_coef: entropy bonus coefficient (0 = off; entropy is still reported).
      aggregation: "token_mean" | "seq_mean_token_mean" | "seq_mean_token_sum" | "constant".
      constant_normalizer: the constant of "constant" aggregation (None = the response width t).
      tis_cap: cap of the truncated importance weight exp(old_logp - sampler_logp); None = off.
      value_clip: None or the clip range of the value prediction around the old values.
      value_coef: weight of the value loss in a critic objective.
      logprob_chunk_size: time steps per chunk when computing log-probs (the logits of only one chunk exist).
      temperature: the sampling temperature; log-probs are taken under log_softmax(logits / temperature).
    """

    policy_loss: str = "ppo_clip"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_in: str = "none"
    kl_estimator: str = "k3"
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    aggregation: str = "seq_mean_token_mean"
    constant_normalizer: float | None = None
    tis_cap: float | None = None
    value_clip: float | None = None
    value_coef: float = 0.5
    logprob_chunk_size: int = 256
    temperature: float = 1.0

    def __post_init__(self):
        if self.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"unknown policy_loss {self.policy_loss!r}; choose from {sorted(POLICY_LOSSES)}")
        if not (0.0 <= self.clip_low < 1.0) or self.clip_high < 0.0:
            raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be None or > 1, got {self.dual_clip}")
        if self.kl_in not in KL_PLACEMENTS:
            raise ValueError(f"kl_in must be one of {KL_PLACEMENTS}, got {self.kl_in!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.kl_coef < 0 or self.entropy_coef < 0 or self.value_coef < 0:
            raise ValueError("kl_coef, entropy_coef and value_coef must be >= 0")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.constant_normalizer is not None and self.constant_normalizer <= 0:
            raise ValueError(f"constant_normalizer must be > 0, got {self.constant_normalizer}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be None or > 0, got {self.tis_cap}")
        if self.value_clip is not None and self.value_clip <= 0:
            raise ValueError(f"value_clip must be None or > 0, got {self.value_clip}")
        if self.logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {self.logprob_chunk_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_in == "loss" and self.kl_coef > 0


# ---------------------------------------------------------------------------------------------------------
# Aggregation weights (host side).


def loss_weights(mask_nt, mode: str, constant: float | None = None) -> jax.Array:
    """Per-token weights float32 [n, t] over a whole mini-batch such that sum(weights * loss) aggregates.

    With L_i the number of loss tokens of row i, S the number of rows with L_i > 0 and N all rows:

    * "token_mean":          w = mask / sum_i L_i                (every token of the mini-batch counts once)
    * "seq_mean_token_mean": w = mask / (L_i * S)                (mean over each sequence, then over sequences)
    * "seq_mean_token_sum":  w = mask / S                        (sum over each sequence, mean over sequences)
    * "constant":            w = mask / (constant * N)           (Dr.GRPO; constant defaults to t, the width)

    Rows without loss tokens get weight 0 and are not counted in S. An all-empty mini-batch gives all zeros.
    Jittable (the learner computes it on device, per mini-batch); `mode` and `constant` are static.
    """
    mask_nt = jnp.asarray(mask_nt, jnp.float32)
    if mask_nt.ndim != 2:
        raise ValueError(f"mask_nt must be [n, t], got shape {mask_nt.shape}")
    lengths_n = mask_nt.sum(axis=1)
    num_seqs = jnp.count_nonzero(lengths_n).astype(jnp.float32)
    if mode == "token_mean":
        weights = mask_nt / jnp.maximum(lengths_n.sum(), 1.0)
    elif mode == "seq_mean_token_mean":
        weights = mask_nt / (jnp.maximum(lengths_n, 1.0)[:, None] * jnp.maximum(num_seqs, 1.0))
    elif mode == "seq_mean_token_sum":
        weights = mask_nt / jnp.maximum(num_seqs, 1.0)
    elif mode == "constant":
        constant = float(mask_nt.shape[1]) if constant is None else float(constant)
        if constant <= 0:
            raise ValueError(f"the constant normaliser must be > 0, got {constant}")
        weights = mask_nt / (constant * max(mask_nt.shape[0], 1))
    else:
        raise ValueError(f"unknown aggregation {mode!r}; choose from {AGGREGATIONS}")
    return weights


# ---------------------------------------------------------------------------------------------------------
# Policy losses.

PolicyLossFn = Callable[["LossConfig", jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register(name: str):
    """Decorator adding `fn(cfg, logp_nt, old_logp_nt, advantages_nt) -> (loss_nt, clipped_nt)` to
    `POLICY_LOSSES`; `clipped_nt` is 1.0 where a clip decided the value (for the clip fraction)."""

    def wrap(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} registered twice")
        POLICY_LOSSES[name] = fn
        return fn

    return wrap


# Bound on |logp - old_logp| before `exp` in the PPO ratio: exp(20) ~ 4.9e8 is finite in float32, whereas
# a log-ratio above ~88.7 overflows to inf and the unselected branch of the clip then back-propagates
# 0 * inf = NaN into the whole update.
MAX_LOG_RATIO = 20.0


def ppo_ratio(logp_nt, old_logp_nt) -> jax.Array:
    """exp(clip(logp - old_logp, -MAX_LOG_RATIO, MAX_LOG_RATIO)): the PPO importance ratio, exact for
    |log-ratio| <= 20 (ratios in [2e-9, 4.9e8]); beyond that it is held at the bound with zero gradient (a
    token that far off-policy is clipped by PPO anyway, or is dropped instead of overflowing)."""
    return jnp.exp(jnp.clip(logp_nt - old_logp_nt, -MAX_LOG_RATIO, MAX_LOG_RATIO))


@register("ppo_clip")
def ppo_clip_loss(cfg, logp_nt, old_logp_nt, advantages_nt):
    """PPO clipped surrogate with clip-higher and optional dual clip:

        ratio = exp(clip(logp - old_logp, -20, 20))     (`ppo_ratio`, `MAX_LOG_RATIO`)
        loss  = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))
        loss  = min(loss, -c * A)   where A < 0, when dual_clip = c is set

    `clipped` marks tokens where the clipped branch (or the dual clip) is active, i.e. the gradient is 0.
    The gradient with respect to logp is -A * ratio where the unclipped branch is active and 0 elsewhere;
    finite at any log-ratio (with |log-ratio| > 20 it is 0).
    """
    ratio_nt = ppo_ratio(logp_nt, old_logp_nt)
    unclipped_nt = -advantages_nt * ratio_nt
    clipped_ratio_nt = jnp.clip(ratio_nt, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    clipped_nt = -advantages_nt * clipped_ratio_nt
    loss_nt = jnp.maximum(unclipped_nt, clipped_nt)
    is_clipped_nt = clipped_nt > unclipped_nt
    if cfg.dual_clip is not None:
        cap_nt = -cfg.dual_clip * advantages_nt
        dual_active_nt = (advantages_nt < 0) & (loss_nt > cap_nt)
        loss_nt = jnp.where(dual_active_nt, cap_nt, loss_nt)
        is_clipped_nt = is_clipped_nt | dual_active_nt
    return loss_nt, is_clipped_nt.astype(jnp.float32)


@register("pg")
def policy_gradient_loss(cfg, logp_nt, old_logp_nt, advantages_nt):
    """Plain policy gradient (REINFORCE), loss = -A * logp; exact for one update per rollout."""
    del cfg, old_logp_nt
    return -advantages_nt * logp_nt, jnp.zeros_like(logp_nt)


def truncated_importance_weight(old_logp_nt, sampler_logp_nt, cap: float) -> jax.Array:
    """min(exp(old_logp - sampler_logp), cap), without gradient: corrects for the sampler's numerics
    differing from the trainer's when the tokens were drawn from the sampler's distribution."""
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(old_logp_nt - sampler_logp_nt), cap))


def value_loss(values_nt, old_values_nt, returns_nt, value_clip: float | None) -> jax.Array:
    """Per-token critic loss 0.5 * (V - R)^2; with clipping (PPO), V_clip = V_old + clip(V - V_old, +-c) and
    the loss is 0.5 * max((V - R)^2, (V_clip - R)^2)."""
    loss_nt = jnp.square(values_nt - returns_nt)
    if value_clip is not None:
        clipped_nt = old_values_nt + jnp.clip(values_nt - old_values_nt, -value_clip, value_clip)
        loss_nt = jnp.maximum(loss_nt, jnp.square(clipped_nt - returns_nt))
    return 0.5 * loss_nt


# ---------------------------------------------------------------------------------------------------------
# The full per-token objective with additive metrics.

METRIC_SUMS = (
    "loss", "pg_loss", "kl_sum", "entropy_sum", "clipped_sum", "ratio_sum", "adv_sum", "adv_sq_sum",
    "tokens", "tis_sum",
)  # fmt: skip
METRIC_MAXES = ("ratio_max", "adv_max")
METRIC_MINS = ("ratio_min", "adv_min")


def policy_objective(
    cfg: LossConfig,
    logp_nt,
    old_logp_nt,
    advantages_nt,
    weights_nt,
    mask_nt,
    *,
    ref_logp_nt=None,
    entropy_nt=None,
    sampler_logp_nt=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(loss, metrics)` for a micro-batch: loss = sum(weights * loss_t) with loss_t as in the module doc.

    metrics are additive over micro-batches and shards: "loss" and "pg_loss" are already weighted sums
    (the aggregated objective); `*_sum` and "tokens" are plain sums over loss tokens (divide by "tokens" for
    token means); `*_max` / `*_min` combine with max / min. `ref_logp_nt` is required when KL is in the loss,
    `sampler_logp_nt` when `tis_cap` is set.
    """
    mask_nt = mask_nt.astype(jnp.float32)
    weights_nt = weights_nt.astype(jnp.float32) * mask_nt
    pg_nt, clipped_nt = POLICY_LOSSES[cfg.policy_loss](cfg, logp_nt, old_logp_nt, advantages_nt)
    tis_nt = jnp.ones_like(pg_nt)
    if cfg.tis_cap is not None:
        if sampler_logp_nt is None:
            raise ValueError("tis_cap is set: the batch needs the sampler's log-probs ('sampler_logp')")
        tis_nt = truncated_importance_weight(old_logp_nt, sampler_logp_nt, cfg.tis_cap)
    loss_nt = tis_nt * pg_nt
    pg_loss = jnp.sum(weights_nt * loss_nt)
    kl_nt = jnp.zeros_like(pg_nt)
    if cfg.kl_in_loss:
        if ref_logp_nt is None:
            raise ValueError("kl_in='loss' needs the reference log-probs ('ref_logp' or ref_params)")
        kl_nt = kl_divergence(cfg.kl_estimator, logp_nt, ref_logp_nt)
        loss_nt = loss_nt + cfg.kl_coef * kl_nt
    if entropy_nt is None:
        entropy_nt = jnp.zeros_like(pg_nt)
    elif cfg.entropy_coef > 0:
        loss_nt = loss_nt - cfg.entropy_coef * entropy_nt
    loss = jnp.sum(weights_nt * loss_nt)

    ratio_nt = jax.lax.stop_gradient(ppo_ratio(logp_nt, old_logp_nt))
    on = mask_nt > 0
    big = jnp.float32(jnp.finfo(jnp.float32).max)
    sg = jax.lax.stop_gradient
    metrics = {
        "loss": sg(loss),
        "pg_loss": sg(pg_loss),
        "kl_sum": sg(jnp.sum(kl_nt * mask_nt)),
        "entropy_sum": sg(jnp.sum(entropy_nt * mask_nt)),
        "clipped_sum": jnp.sum(clipped_nt * mask_nt),
        "ratio_sum": jnp.sum(ratio_nt * mask_nt),
        "adv_sum": jnp.sum(advantages_nt * mask_nt),
        "adv_sq_sum": jnp.sum(jnp.square(advantages_nt) * mask_nt),
        "tokens": jnp.sum(mask_nt),
        "tis_sum": jnp.sum(tis_nt * mask_nt),
        "ratio_max": jnp.max(jnp.where(on, ratio_nt, -big)),
        "adv_max": jnp.max(jnp.where(on, advantages_nt, -big)),
        "ratio_min": jnp.min(jnp.where(on, ratio_nt, big)),
        "adv_min": jnp.min(jnp.where(on, advantages_nt, big)),
    }
    return loss, metrics


def combine_metrics(a: dict[str, jax.Array], b: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Merges two metric dicts of `policy_objective` (sums add, maxes max, mins min)."""
    out = {}
    for key in a:
        if key in METRIC_MAXES:
            out[key] = jnp.maximum(a[key], b[key])
        elif key in METRIC_MINS:
            out[key] = jnp.minimum(a[key], b[key])
        else:
            out[key] = a[key] + b[key]
    return out


def finalize_metrics(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Turns combined metric sums into reportable values: token means for KL, entropy, clip fraction,
    ratio, importance weight and advantage (mean, std), plus the weighted loss values and extremes."""
    tokens = jnp.maximum(sums["tokens"], 1.0)
    adv_mean = sums["adv_sum"] / tokens
    has = sums["tokens"] > 0
    return {
        "loss": sums["loss"],
        "pg_loss": sums["pg_loss"],
        "kl": sums["kl_sum"] / tokens,
        "entropy": sums["entropy_sum"] / tokens,
        "clip_frac": sums["clipped_sum"] / tokens,
        "ratio_mean": sums["ratio_sum"] / tokens,
        "ratio_max": jnp.where(has, sums["ratio_max"], 0.0),
        "ratio_min": jnp.where(has, sums["ratio_min"], 0.0),
        "tis_mean": sums["tis_sum"] / tokens,
        "adv_mean": adv_mean,
        "adv_std": jnp.sqrt(jnp.maximum(sums["adv_sq_sum"] / tokens - jnp.square(adv_mean), 0.0)),
        "adv_max": jnp.where(has, sums["adv_max"], 0.0),
        "adv_min": jnp.where(has, sums["adv_min"], 0.0),
        "tokens": sums["tokens"],
    }


# ---------------------------------------------------------------------------------------------------------
# Supervised fine-tuning (`jaxalign sft`): one more entry of the registry, so SFT runs through the same
# `train_step`, micro-batching, sharding and aggregation weights as RL.


@register("sft")
def sft_loss(cfg, logp_nt, old_logp_nt, advantages_nt):
    """Next-token negative log-likelihood, loss = -logp (advantages and old log-probs are not used).

    With the loss mask on the assistant tokens and "token_mean" aggregation, `sum(weights * loss)` is the
    cross-entropy averaged over every assistant token of the batch; `logp` must be taken at temperature 1.
    """
    del cfg, old_logp_nt, advantages_nt
    return -logp_nt, jnp.zeros_like(logp_nt)
