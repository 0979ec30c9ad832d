"""WaltzRL's config section (`waltzrl`): data, protocol, rewards, reduction and judge settings."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxalign.methods.waltzrl.judges import JUDGE_KINDS

FEEDBACK_REWARD_MODES = ("dir_label", "no_dir", "dir_only")
CONVERSATION_SAMPLE_MODES = ("mix", "tau_a", "tau_b")


@dataclasses.dataclass(frozen=True)
class WaltzRLConfig:
    """Attributes:
      dataset, wildjailbreak, orbench, max_examples, eval_fraction, skip_malformed: the data
        (`jaxalign.methods.waltzrl.data.load_waltzrl_data`).
      t_max: feedback rounds at most (the paper: 1). 0 = no feedback agent: single-agent RL of the
        conversation agent on R_c (the paper's single-model RL baseline).
      shared_policy: one agent (`policy`) plays both roles instead of two separate agents.
      alpha, lam, gamma: the feedback reward's DIR, label and format weights (lam is 0 in stage 2).
      feedback_reward: "dir_label" (the paper), "no_dir" or "dir_only" (ablations).
      conversation_sample: "mix" (tau_A with probability p_tau_a, else tau_B), "tau_a" or "tau_b".
      feedback_prefix: text the feedback agent's reply starts with (context, not trained on; parsed with the
        reply), e.g. '{"reasoning": "' for a small model that does not open the JSON object on its own.
        "" (the paper) by default.
      feedback_stop: a string that ends the feedback reply, e.g. "}" (the object is flat); "" = none.
      judge, judge_model, judge_max_new_tokens, judge_dtype: the safety judge ("rule" needs no model).
      seed: the reduction's random choices (per step, folded with the step).
    """

    dataset: str = "embedded"
    wildjailbreak: Any = None
    orbench: Any = None
    max_examples: int = 0
    eval_fraction: float = 0.2
    skip_malformed: bool = False
    t_max: int = 1
    shared_policy: bool = False
    alpha: float = 0.65
    lam: float = 0.25
    gamma: float = 0.1
    feedback_reward: str = "dir_label"
    conversation_sample: str = "mix"
    p_tau_a: float = 0.5
    feedback_prefix: str = ""
    feedback_stop: str = ""
    judge: str = "rule"
    judge_model: str = ""
    judge_max_new_tokens: int = 64
    judge_dtype: str = "bfloat16"
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.t_max, int) or self.t_max < 0:
            raise ValueError(f"waltzrl.t_max must be an int >= 0 (0 = no feedback agent), got {self.t_max!r}")
        if self.feedback_reward not in FEEDBACK_REWARD_MODES:
            raise ValueError(f"waltzrl.feedback_reward={self.feedback_reward!r}; known: {', '.join(FEEDBACK_REWARD_MODES)}")
        if self.conversation_sample not in CONVERSATION_SAMPLE_MODES:
            raise ValueError(f"waltzrl.conversation_sample={self.conversation_sample!r}; known: "
                             f"{', '.join(CONVERSATION_SAMPLE_MODES)}")
        if not 0.0 <= self.p_tau_a <= 1.0:
            raise ValueError(f"waltzrl.p_tau_a must be in [0, 1], got {self.p_tau_a}")
        if self.judge not in JUDGE_KINDS:
            raise ValueError(f"waltzrl.judge={self.judge!r}; known: {', '.join(JUDGE_KINDS)}")
        if self.judge != "rule" and not self.judge_model:
            raise ValueError(f"waltzrl.judge={self.judge!r} needs waltzrl.judge_model (an HF directory or .gguf)")
        if self.judge == "rule" and self.judge_model:
            raise ValueError("waltzrl.judge='rule' uses no model; clear waltzrl.judge_model or pick a model judge")
        if self.shared_policy and self.t_max == 0:
            raise ValueError("waltzrl.shared_policy needs a feedback role (t_max >= 1)")

    @property
    def roles(self) -> dict[str, str]:
        """Role -> agent name."""
        if self.t_max == 0:
            return {"conversation": "conversation"}
        if self.shared_policy:
            return {"conversation": "policy", "feedback": "policy"}
        return {"conversation": "conversation", "feedback": "feedback"}
