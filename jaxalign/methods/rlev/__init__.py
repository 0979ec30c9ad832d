"""RLEV: reinforcement learning with explicit human values (Yu et al., 2025).

Each prompt x carries a human value v(x) in (0, 1]: its points' share of its exam's total. The reward of a
response y is

    r(x, y) = s(x) * 1[y correct],     s(x) = 1 + min(alpha * v(x), 1),     alpha = 10 by default,

so correct answers earn between 1 and 2, more for questions that matter more. Ablations (config `reward`):
"correctness" (s = 1, the RLVR baseline), "uniform" (every correct answer gets the training set's mean s),
"random" (values shuffled across the training set with a fixed seed) and "multiplicative" (s = 1 + alpha*v,
unclipped). Value sources (config `value_source`): "ground_truth" (score / total), "weak" (the paper's
difficulty buckets) and "predicted" (a model asked for the question's points, see `ScorePredictor`).

Verification (config `verifier`): "rule" (answer extraction + math equivalence in the reward pool), "model"
(a judge model says YES/NO on the response's final step against the reference, as in the paper) or
"rule_or_model" (the rules first; the judge only for samples they cannot decide: no extractable answer, or
a mismatch against a non-numeric reference). The judge is `rlev.judge_model`, loaded on the policy's mesh
with its own sampler when the loop calls `setup`; the policy's weights never judge.

Choice of estimator. s(x) is constant within a prompt's group of samples, so GRPO with per-group std
normalisation cancels it exactly: (s*c_i - mean(s*c)) / std(s*c) = (c_i - mean(c)) / std(c). With that
estimator RLEV is the correctness baseline. The RLEV configs therefore use REINFORCE++ (advantages whitened
over the whole batch, so prompts keep their relative scale), RLOO (leave-one-out baseline, no division)
or GRPO without the std division (Dr.GRPO-style).

Evaluation metrics (percentages, as in the paper): Acc; H-Acc = sum of v over correct responses / sum of v
over all responses; mean response length in tokens; value density = H-Acc% / mean length; accuracy on the
top-20% and bottom-20% value prompts. `eos_probability_by_value` supports the paper's EOS analysis.

Layout: `config` (RLEVConfig and the accepted names), `exam` (the embedded offline exam set), `data` (splits,
value sources, the score predictor), `prompts`, `rewards` (reward maths, metrics, EOS analysis, judge
routing) and `method` (RLEVMethod, registered as "rlev"). Every public name is re-exported here.
"""

from jaxalign.methods.rlev.config import (
    HUB_DATASETS,
    JUDGE_DTYPES,
    REWARD_MODES,
    VALUE_SOURCES,
    VERIFIERS,
    RLEVConfig,
)
from jaxalign.methods.rlev.data import (
    MIN_SCORE_FRACTION,
    ScorePredictor,
    build_score_predictor,
    load_splits,
    parse_predicted_score,
    score_predictor_messages,
    training_values,
)
from jaxalign.methods.rlev.exam import LEVELS, make_exam_set
from jaxalign.methods.rlev.method import RLEVMethod
from jaxalign.methods.rlev.prompts import (
    BRIEF_POLICY_SYSTEM_PROMPT,
    POLICY_SYSTEM_PROMPT,
    SCORE_PREDICTOR_SYSTEM_PROMPT,
)
from jaxalign.methods.rlev.rewards import (
    EOSByValue,
    eos_probability_by_value,
    judge_mask,
    rlev_metrics,
    rlev_rewards,
    value_extreme_masks,
    value_scale,
)

__all__ = [
    "BRIEF_POLICY_SYSTEM_PROMPT",
    "EOSByValue",
    "HUB_DATASETS",
    "JUDGE_DTYPES",
    "LEVELS",
    "MIN_SCORE_FRACTION",
    "POLICY_SYSTEM_PROMPT",
    "REWARD_MODES",
    "RLEVConfig",
    "RLEVMethod",
    "SCORE_PREDICTOR_SYSTEM_PROMPT",
    "ScorePredictor",
    "VALUE_SOURCES",
    "VERIFIERS",
    "build_score_predictor",
    "eos_probability_by_value",
    "judge_mask",
    "load_splits",
    "make_exam_set",
    "parse_predicted_score",
    "rlev_metrics",
    "rlev_rewards",
    "score_predictor_messages",
    "training_values",
    "value_extreme_masks",
    "value_scale",
]
