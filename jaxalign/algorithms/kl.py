"""Per-token estimators of KL(pi || pi_ref) from the log-probs of the sampled tokens (Schulman's k1, k2, k3).

With `log_ratio = logp - ref_logp` for a token sampled from pi:

* k1 = log_ratio                                   (unbiased, can be negative, high variance)
* k2 = 0.5 * log_ratio ** 2                        (biased, always >= 0, low variance)
* k3 = exp(-log_ratio) - 1 + log_ratio             (unbiased, always >= 0; "low-var KL" in verl)
     = exp(ref_logp - logp) - (ref_logp - logp) - 1
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_divergence(estimator: str, logp, ref_logp) -> jax.Array:
    """Elementwise KL estimate (same shape as the inputs) for `estimator` in ("k1", "k2", "k3")."""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    if estimator == "k3":
        # Clamp the exponent so one badly off-policy token cannot produce inf; the value is exact inside.
        neg = jnp.clip(-log_ratio, -20.0, 20.0)
        return jnp.exp(neg) - neg - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; choose from {KL_ESTIMATORS}")
