"""Prompt texts of the GTAlign method, written for jaxalign from the paper's specification of the format,
and `game_messages`, the chat that asks the policy to play the game."""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You are a helpful assistant that works with the user toward the answer they actually need. You take "
    "the initiative: when a request is clear you answer it; when it is unclear you find out what is missing "
    "before spending effort on a guess."
)

GAME_PREFIX = (
    "Before you reply, treat this exchange as a game between the user and you. The user either asked a "
    "definite question (DQ) or a vague one (VQ). You can give a direct answer (DA), ask one clarifying "
    "question (CQ), or answer and add one focused follow-up question (AQ).\n\n"
    "Write exactly four blocks, in this order, and nothing outside them:\n"
    "<thinking>Two to five sentences, no numbers: is the question DQ or VQ, and how would DA, CQ and AQ "
    "affect both sides (risk of a wrong answer, ambiguity resolved, the user's time and effort, tokens "
    "spent, satisfaction, chance of success)?</thinking>\n"
    "<payoff>Strict JSON (no comments, no trailing commas) with exactly the six keys DQ_AQ, DQ_CQ, DQ_DA, "
    "VQ_AQ, VQ_CQ, VQ_DA. Each maps to {{\"LLM\": number, \"user\": number}}: your payoff and the user's, "
    "higher is better, 0 is neutral, negatives allowed, roughly between -5.0 and 5.0 with at most one "
    "decimal, for example \"DQ_DA\": {{\"LLM\": 3.1, \"user\": 3.4}}.</payoff>\n"
    "<analyze>Find the Pareto frontier of the six (LLM, user) points and list the pairs no other pair beats "
    "for both sides. Pick one: the highest LLM + user; on a tie the higher user payoff; then the higher LLM "
    "payoff. Name the chosen key, for example DQ_DA.</analyze>\n"
    "<response>Carry out the chosen action and do not mention payoffs. DA: a concise, direct answer only. "
    "CQ: exactly one clarifying question, the one that resolves the most. AQ: a brief answer followed by "
    "exactly one focused follow-up question.</response>\n\n"
    "Question: {question}"
)
"""The user-turn instruction; `{question}` is the user's (last) question."""

EARLIER_QUESTION = "Earlier in this conversation the user asked: {question}\n\n"
"""Put before GAME_PREFIX for multi-turn rows: the first user question gives the context."""

STEERED_ANALYZE = (
    "The payoffs above are the ones that apply now. "
)
"""Start of the `<analyze>` block when generation resumes after a steered payoff matrix."""


def game_messages(question: str, *, first_question: str | None = None, system_prompt: str | None = None
                  ) -> list[dict[str, str]]:
    """The chat messages that ask the policy to play the game on `question`."""
    user = GAME_PREFIX.format(question=question)
    if first_question:
        user = EARLIER_QUESTION.format(question=first_question) + user
    return [{"role": "system", "content": SYSTEM_PROMPT if system_prompt is None else system_prompt},
            {"role": "user", "content": user}]
