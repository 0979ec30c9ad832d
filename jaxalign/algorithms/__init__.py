"""RL maths shared by every method: advantage estimators, policy losses, KL estimators, chunked log-probs."""

from jaxalign.algorithms.advantages import (
    ESTIMATORS,
    AdvantageConfig,
    compute_advantages,
    equal_reward_groups,
    group_ids,
)
from jaxalign.algorithms.kl import KL_ESTIMATORS, kl_divergence
from jaxalign.algorithms.losses import (
    AGGREGATIONS,
    POLICY_LOSSES,
    LossConfig,
    finalize_metrics,
    loss_weights,
    policy_objective,
    value_loss,
)
