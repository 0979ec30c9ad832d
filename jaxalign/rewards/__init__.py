"""Host-side rewards: a child-process pool, rule-based verifiers and model judges.

Nothing here imports jax, so the pool's child processes (which import these modules to unpickle feature
functions) start fast.
"""

from jaxalign.rewards.judges import EquivalenceJudge, JudgeVerdict, judge_messages, parse_yes_no
from jaxalign.rewards.pool import RewardPool, RewardResult, collect_features, validate_features
from jaxalign.rewards.verifiers import correctness_features, extract_answer, final_step, math_equal, option_letter

__all__ = [
    "EquivalenceJudge",
    "JudgeVerdict",
    "RewardPool",
    "RewardResult",
    "collect_features",
    "correctness_features",
    "extract_answer",
    "final_step",
    "judge_messages",
    "math_equal",
    "option_letter",
    "parse_yes_no",
    "validate_features",
]
