"""RL maths shared by every method: advantage estimators, policy losses, KL estimators, chunked log-probs."""

from jaxalign.algorithms.advantages import (
    ESTIMATORS,
    AdvantageConfig,
    compute_advantages,
    equal_reward_groups,
    group_ids,
)
from jaxalign.algorithms.kl import KL_ESTIMATORS, kl_divergence
from jaxalign.algorithms.logprobs import logprobs_from_hidden, sequence_logprobs
from jaxalign.algorithms.losses import (
    AGGREGATIONS,
    POLICY_LOSSES,
    LossConfig,
    finalize_metrics,
    loss_weights,
    policy_objective,
    value_loss,
)

__all__ = [
    "AGGREGATIONS",
    "ESTIMATORS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "AdvantageConfig",
    "LossConfig",
    "compute_advantages",
    "equal_reward_groups",
    "finalize_metrics",
    "group_ids",
    "kl_divergence",
    "logprobs_from_hidden",
    "loss_weights",
    "policy_objective",
    "sequence_logprobs",
    "value_loss",
]
