"""GTAlign: game-theoretic alignment, trained on a mutual-welfare reward (Zhu et al., 2025).

The policy reasons about a 2 x 3 game between the user (definite DQ or vague VQ question) and itself
(direct answer DA, clarifying question CQ, answer + follow-up AQ) in four tagged blocks (`game`),
then acts. Every response is scored from both sides, with eps = 1e-4:

    U = eps + 0.5 A_user + 0.2 band(response words; 20, 500) + 0.3 exp(-reasoning chars / 500)
    L = eps + 0.2 F + 0.2 P + 0.4 A_llm + 0.2 band(all words; 500, 1000)                 llm_terms="main"
    L = eps + 0.2 PO + 0.2 P + 0.2 F + 0.35 A_llm + 0.05 band(all words; 500, 1000)     llm_terms="pareto"
    reward = W = sqrt(U * L)                                                             reward="welfare"

F is the format (the four blocks, the payoff parses), P the payoff matrix's quality, PO whether the analysis
names an action on the matrix's Pareto frontier, A the answer terms. A response whose `<response>` or
`<payoff>` block cannot be parsed gets reward 0 and is still trained on (that is how the format is learnt).
Ablations: reward "linear" ((U + L) / 2), "user" (U), "llm" (L). With `normalize="zscore"` rewards are
standardised per data source within each batch (the reference's mixed-data run).

Answer terms are checked by rules, per data source, or with `judge="model"` by model judges run on
jaxalign's sampler (`judges`: writing 0-4 and safety 0/0.5/1 sources, which need it, the judged PO, and a
math-equivalence judge where the math rules cannot decide; default judge model: the policy's base model):
  * math (`math`, `math-hard`, `minerva`): A_user = A_llm = the `<response>` answer equals the reference
    (math-verify);
  * ambiguity (`ambiguity`, `ambig_qa`, `abg-coqa`): A = 1 when the `<response>` fits the question: it
    asks or spells out several readings for an ambiguous one, it answers (a follow-up question on top is
    fine) for a clear one.
With llm_terms="pareto" a reply without an `<analyze>` block gets reward 0 (the reference's ablation
tasks). PO is decided by a rule in place of the reference's judge, on its levels 1 / 0.5 / 0: the key the
analysis chooses is on the frontier of its own matrix / is dominated but its action is a frontier action /
it chooses nothing or a dominated action (`game.pareto_score`).

`coldstart` writes the SFT cold-start chats (registered as the embedded chat set "gtalign_coldstart").

Layout: `config` (GTAlignConfig, the accepted names, the feature names), `game` (the block format and the
payoff matrix), `prompts` (with `game_messages`), `data` (file rows and the embedded offline set), `rewards`
(pool features, U/L/W, the z-score), `judges` (the model judges), `steer` (inference-time pricing steering
and the `jaxalign steer` command) and `method` (GTAlignMethod, registered as "gtalign"). Public names are
re-exported here (the steering function itself: `jaxalign.methods.gtalign.steer.steer`).
"""

from jaxalign.methods.gtalign import coldstart, game  # coldstart registers its chat set for `jaxalign sft`
from jaxalign.methods.gtalign.config import (
    ACTIONS,
    AMBIGUITY_SOURCES,
    EPS,
    FEATURES,
    LLM_TERMS,
    MATH_SOURCES,
    NORMALIZATIONS,
    REWARD_MODES,
    GTAlignConfig,
)
from jaxalign.methods.gtalign.data import example_from_row, load_splits, make_gtalign_set
from jaxalign.methods.gtalign.method import GTAlignMethod
from jaxalign.methods.gtalign.prompts import (
    EARLIER_QUESTION,
    GAME_PREFIX,
    STEERED_ANALYZE,
    SYSTEM_PROMPT,
    game_messages,
)
from jaxalign.methods.gtalign.rewards import (
    GTAlignFeatures,
    gtalign_features,
    gtalign_rewards,
    welfare_terms,
    zscore_by_source,
)
from jaxalign.methods.gtalign.steer import PAYOFF_END, SteeredReply

__all__ = [
    "ACTIONS",
    "AMBIGUITY_SOURCES",
    "EARLIER_QUESTION",
    "EPS",
    "FEATURES",
    "GAME_PREFIX",
    "GTAlignConfig",
    "GTAlignFeatures",
    "GTAlignMethod",
    "LLM_TERMS",
    "MATH_SOURCES",
    "NORMALIZATIONS",
    "PAYOFF_END",
    "REWARD_MODES",
    "STEERED_ANALYZE",
    "SYSTEM_PROMPT",
    "SteeredReply",
    "coldstart",
    "example_from_row",
    "game",
    "game_messages",
    "gtalign_features",
    "gtalign_rewards",
    "load_splits",
    "make_gtalign_set",
    "welfare_terms",
    "zscore_by_source",
]
