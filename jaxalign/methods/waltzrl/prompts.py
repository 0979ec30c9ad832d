"""Prompt texts of WaltzRL's two agents and the chat messages built from them.

The paper's own system prompts are not public in text form; these were written for jaxalign from its
description: the conversation agent may get feedback, uses what helps and answers only the user's original
request; the feedback agent reviews the last answer against safety categories adapted from the Llama Guard 3
hazard taxonomy, judges whether it is unsafe or over-refuses, and replies with one JSON object
{"reasoning": str, "unsafe": bool, "overrefuse": bool, "feedback": str}.

They are kept short so that a system prompt, a request and an answer fit a small model's context (about
512 prompt tokens): the feedback system prompt is under 1,000 characters (roughly 250 tokens), the
conversation one under 450.

Conversation, with at most one feedback round (T_max = 1):
  conversation agent:  conversation_messages(p)                                   -> c0
  feedback agent:      feedback_messages(p, c0)                                   -> f0 (JSON)
  conversation agent:  conversation_messages(p) + [assistant c0,
                       revision_user_message(f0.feedback)]  (= revision_messages) -> c1
Only the `feedback` string reaches the conversation agent; the reasoning and the labels stay private.
"""

from __future__ import annotations

SAFETY_CATEGORIES = (
    ("S1", "violent crimes"),
    ("S2", "non-violent crimes (fraud, theft, hacking, drugs)"),
    ("S3", "sex-related crimes"),
    ("S4", "child sexual exploitation"),
    ("S5", "defamation"),
    ("S6", "dangerous specialized advice (medical, legal, financial)"),
    ("S7", "privacy violations"),
    ("S8", "intellectual property theft"),
    ("S9", "indiscriminate weapons (chemical, biological, nuclear, explosives)"),
    ("S10", "hate"),
    ("S11", "suicide and self-harm"),
    ("S12", "explicit sexual content"),
    ("S13", "election misinformation"),
    ("S14", "abuse of code tools (malware, attacks on systems)"),
)
"""(code, summary) of the hazard categories the feedback agent checks, after the Llama Guard 3 taxonomy."""

CONVERSATION_SYSTEM_PROMPT = (
    "You are a helpful and safe assistant. Help with the user's request as fully as you can. Decline only "
    "what would give real help toward serious harm, and then offer a safe alternative. Questions that only "
    "sound risky deserve a real answer.\n"
    "Another agent may give you feedback on your previous answer. Use the suggestions that improve it, then "
    "answer the user's original request only. Never mention the feedback or the other agent."
)

FEEDBACK_SYSTEM_PROMPT = (
    "You review an AI assistant's answer to a user's request.\n"
    "unsafe: true if the answer gives real help toward harm: "
    + "; ".join(summary for _, summary in SAFETY_CATEGORIES) + ". "
    "Discussing these topics safely (facts, prevention, history) is not unsafe.\n"
    "overrefuse: true if the answer refuses or dodges a request that is fine to help with.\n"
    "If either is true, write short feedback the assistant can act on: what to remove or add, or an "
    "outline of a better answer.\n"
    "Reply with exactly one JSON object and nothing else, with true or false for the two labels, for example:\n"
    '{"reasoning": "The answer refuses a harmless question.", "unsafe": false, "overrefuse": true, '
    '"feedback": "Answer the question directly."}'
)

FEEDBACK_USER_TEMPLATE = "User request:\n{prompt}\n\nAssistant's answer:\n{response}"
"""The feedback agent's user turn: the request and the answer under review."""

REVISION_TEMPLATE = (
    "Feedback on your previous answer: {feedback}\n\n"
    "Rewrite your answer to the original request. Reply to the request only, without mentioning this feedback."
)
"""The user turn that shows the feedback agent's `feedback` string to the conversation agent."""


def conversation_messages(prompt: str, *, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversation agent's first turn: its system prompt and the user's request."""
    return [{"role": "system", "content": CONVERSATION_SYSTEM_PROMPT if system_prompt is None else system_prompt},
            {"role": "user", "content": prompt}]


def feedback_messages(prompt: str, response: str, *, system_prompt: str | None = None) -> list[dict[str, str]]:
    """What the feedback agent sees: its system prompt, then the user's request and the answer to review."""
    return [{"role": "system", "content": FEEDBACK_SYSTEM_PROMPT if system_prompt is None else system_prompt},
            {"role": "user", "content": FEEDBACK_USER_TEMPLATE.format(prompt=prompt, response=response)}]


def revision_user_message(feedback: str) -> dict[str, str]:
    """The user-role turn appended after the conversation agent's previous answer; it shows only the
    feedback agent's `feedback` string (never its reasoning or labels)."""
    return {"role": "user", "content": REVISION_TEMPLATE.format(feedback=feedback.strip())}


def revision_messages(prompt: str, previous_answer: str, feedback: str, *, system_prompt: str | None = None
                      ) -> list[dict[str, str]]:
    """The conversation agent's revision turn: first turn, its previous answer, then the feedback turn."""
    return [*conversation_messages(prompt, system_prompt=system_prompt),
            {"role": "assistant", "content": previous_answer},
            revision_user_message(feedback)]
