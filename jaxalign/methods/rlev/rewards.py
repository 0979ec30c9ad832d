"""RLEV's reward maths (jittable), its evaluation metrics, the EOS-by-value analysis and the routing of samples
to the model verifier. See `jaxalign.methods.rlev` for the formulas."""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.methods.rlev.config import REWARD_MODES

# Reward maths (pure, jittable)


def value_scale(value_n: jax.Array, *, mode: str, alpha: float, uniform_scale: float = 1.0) -> jax.Array:
    """The scale s(x) per sample for a reward mode (see `jaxalign.methods.rlev`)."""
    value_n = jnp.asarray(value_n, jnp.float32)
    if mode in ("human", "random"):  # "random" differs only in which values the examples carry
        return 1.0 + jnp.minimum(alpha * value_n, 1.0)
    if mode == "multiplicative":
        return 1.0 + alpha * value_n
    if mode == "correctness":
        return jnp.ones_like(value_n)
    if mode == "uniform":
        return jnp.full_like(value_n, uniform_scale)
    raise ValueError(f"unknown RLEV reward mode {mode!r}; known: {', '.join(REWARD_MODES)}")


@functools.partial(jax.jit, static_argnames=("mode",))
def rlev_rewards(
    correct_n: jax.Array, value_n: jax.Array, alpha: float, uniform_scale: float, *, mode: str
) -> tuple[jax.Array, jax.Array]:
    """(rewards_n, scale_n) with rewards_n = s(x) * correct; a NaN `correct` (failed verifier) counts as 0."""
    correct_n = jnp.nan_to_num(jnp.asarray(correct_n, jnp.float32), nan=0.0)
    scale_n = value_scale(value_n, mode=mode, alpha=alpha, uniform_scale=uniform_scale)
    return scale_n * correct_n, scale_n


# Metrics (NumPy, host side)


def value_extreme_masks(value_n: np.ndarray, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the `fraction` highest- and lowest-value samples (at least one each; stable on ties)."""
    value_n = np.asarray(value_n, np.float64)
    count = max(1, int(round(fraction * len(value_n))))
    order = np.argsort(value_n, kind="stable")
    top, bottom = np.zeros(len(value_n), bool), np.zeros(len(value_n), bool)
    top[order[-count:]] = True
    bottom[order[:count]] = True
    return top, bottom


def rlev_metrics(correct_n: np.ndarray, value_n: np.ndarray, lengths_n: np.ndarray) -> dict[str, float]:
    """Acc, H-Acc, response length, value density and top/bottom-20%-value accuracy (percentages)."""
    correct_n = np.nan_to_num(np.asarray(correct_n, np.float64), nan=0.0)
    value_n = np.asarray(value_n, np.float64)
    lengths_n = np.asarray(lengths_n, np.float64)
    if not len(correct_n) == len(value_n) == len(lengths_n) or len(correct_n) == 0:
        raise ValueError(
            f"metrics need equal, non-zero numbers of samples; got correct {len(correct_n)}, values "
            f"{len(value_n)}, lengths {len(lengths_n)}"
        )
    acc = 100.0 * correct_n.mean()
    h_acc = 100.0 * float((value_n * correct_n).sum() / value_n.sum())
    mean_length = float(lengths_n.mean())
    top, bottom = value_extreme_masks(value_n)
    return {
        "acc": float(acc),
        "h_acc": h_acc,
        "resp_length": mean_length,
        "value_density": h_acc / mean_length if mean_length > 0 else float("nan"),
        "acc_top20_value": float(100.0 * correct_n[top].mean()),
        "acc_bottom20_value": float(100.0 * correct_n[bottom].mean()),
    }


def value_buckets(value_n: np.ndarray, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges [num_buckets + 1], bucket_n): equal-count buckets by value rank, 0 = lowest values. Equal
    values may straddle a boundary (ties go by position), so no bucket is empty even when many questions
    share a value; `edges` are the value quantiles, for display."""
    value_n = np.asarray(value_n, np.float64)
    edges = np.quantile(value_n, np.linspace(0.0, 1.0, num_buckets + 1))
    bucket_n = np.empty(len(value_n), np.int64)
    bucket_n[np.argsort(value_n, kind="stable")] = np.arange(len(value_n)) * num_buckets // max(len(value_n), 1)
    return edges, bucket_n


def length_value_slope(lengths_n: np.ndarray, value_n: np.ndarray) -> float:
    """Least-squares slope of response length (tokens) against the prompt's value percentile (0 = lowest
    value, 1 = highest; ties share their mean rank): how many more tokens the policy spends on the most
    valuable prompts than on the least. Percentiles, not raw values, so a few very valuable questions do not
    dominate the fit. NaN with fewer than two distinct values."""
    lengths_n, value_n = np.asarray(lengths_n, np.float64), np.asarray(value_n, np.float64)
    if len(value_n) < 2 or np.ptp(value_n) == 0:
        return float("nan")
    order = np.argsort(value_n, kind="stable")
    ranks = np.empty(len(value_n))
    ranks[order] = np.arange(len(value_n), dtype=np.float64)
    for v in np.unique(value_n):  # mean rank for ties
        tied = value_n == v
        ranks[tied] = ranks[tied].mean()
    x = ranks / (len(value_n) - 1)
    x_c = x - x.mean()
    return float((x_c * (lengths_n - lengths_n.mean())).sum() / (x_c ** 2).sum())


def eos_value_metrics(eos_prob_nt: np.ndarray, mask_nt: np.ndarray, value_n: np.ndarray, *,
                      num_buckets: int = 5) -> dict[str, float]:
    """Eval metrics of the paper's termination analysis: per value quintile (q1 = lowest), the mean response
    length `length_q<i>` and the mean EOS probability over response positions `eos_prob_q<i>`; and
    `length_value_slope` (see `length_value_slope`)."""
    mask_nt = np.asarray(mask_nt, bool)
    lengths_n = mask_nt.sum(axis=1).astype(np.float64)
    eos = eos_probability_by_value(eos_prob_nt, mask_nt, value_n, num_buckets=num_buckets)
    _, bucket_n = value_buckets(value_n, num_buckets)
    out = {"length_value_slope": length_value_slope(lengths_n, value_n)}
    for b in range(num_buckets):
        in_b = bucket_n == b
        out[f"length_q{b + 1}"] = float(lengths_n[in_b].mean()) if in_b.any() else float("nan")
        out[f"eos_prob_q{b + 1}"] = float(eos.mean_eos_prob_b[b])
    return out


@dataclasses.dataclass(frozen=True)
class EOSByValue:
    """Mean EOS probability per value bucket (rows: lowest to highest value), overall and per position bin."""

    bucket_edges: np.ndarray  # [num_buckets + 1] value quantiles
    mean_eos_prob_b: np.ndarray  # [num_buckets]
    mean_eos_prob_bp: np.ndarray  # [num_buckets, num_position_bins]; position = token index / response length
    num_samples_b: np.ndarray


def eos_probability_by_value(
    eos_prob_nt: np.ndarray, mask_nt: np.ndarray, value_n: np.ndarray, *, num_buckets: int = 5,
    num_position_bins: int = 10,
) -> EOSByValue:
    """The paper's EOS analysis: how likely stopping is, by prompt value and by relative position.

    `eos_prob_nt` is the policy's probability of EOS at each response position and `mask_nt` the response
    mask. Samples are bucketed by value rank (`value_buckets`); NaN marks an empty cell.
    """
    eos_prob_nt, mask_nt = np.asarray(eos_prob_nt, np.float64), np.asarray(mask_nt, bool)
    value_n = np.asarray(value_n, np.float64)
    if eos_prob_nt.shape != mask_nt.shape or eos_prob_nt.shape[0] != len(value_n):
        raise ValueError(f"shapes disagree: eos {eos_prob_nt.shape}, mask {mask_nt.shape}, values {value_n.shape}")
    edges, bucket_n = value_buckets(value_n, num_buckets)
    lengths_n = mask_nt.sum(axis=1)
    position_nt = np.arange(mask_nt.shape[1])[None, :] / np.maximum(lengths_n, 1)[:, None]
    position_bin_nt = np.minimum((position_nt * num_position_bins).astype(int), num_position_bins - 1)
    sums = np.zeros((num_buckets, num_position_bins))
    counts = np.zeros((num_buckets, num_position_bins))
    rows, cols = np.nonzero(mask_nt)
    np.add.at(sums, (bucket_n[rows], position_bin_nt[rows, cols]), eos_prob_nt[rows, cols])
    np.add.at(counts, (bucket_n[rows], position_bin_nt[rows, cols]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_position = sums / counts
        overall = sums.sum(axis=1) / counts.sum(axis=1)
    return EOSByValue(edges, overall, per_position, np.bincount(bucket_n, minlength=num_buckets))


# Verification routing


def judge_mask(verifier: str, features: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """bool [n]: the samples the model judge verifies. Never the samples the reward pool failed on (a NaN
    feature, or no features at all); with "rule_or_model" only those the rules left undecided (the
    `rule_decided` feature of `rule_features` below 0.5)."""
    pool_ok_n = np.ones(n, bool)
    for values in features.values():
        pool_ok_n &= ~np.isnan(np.asarray(values, np.float64))
    if not features:
        pool_ok_n[:] = False
    if verifier != "rule_or_model":
        return pool_ok_n
    if features and "rule_decided" not in features:
        raise KeyError("rlev.verifier='rule_or_model' needs the 'rule_decided' feature of rule_features")
    return pool_ok_n & (np.nan_to_num(np.asarray(features.get("rule_decided", np.zeros(n)))) < 0.5)
