"""Prompt texts of WaltzRL's two agents and the chat messages built from them.

The paper's own system prompts are not public in text form; these were written for jaxalign from its
description: the conversation agent may get feedback, uses what helps and answers only the user's original
request; the feedback agent reviews the last answer against safety categories adapted from the Llama Guard 3
hazard taxonomy, judges whether it is unsafe or over-refuses, and replies with one JSON object
{"reasoning": str, "unsafe": bool, "overrefuse": bool, "feedback": str}.

They are kept short so that the system prompt, a request and an answer fit a small model's context
(about 512 prompt tokens).

Conversation, with at most one feedback round (T_max = 1):
  conversation agent:  conversation_messages(p)                                   -> c0
  feedback agent:      feedback_messages(p, c0)                                   -> f0 (JSON)
  conversation agent:  conversation_messages(p) + [assistant c0,
                       revision_user_message(f0.feedback)]  (= revision_messages) -> c1
Only the `feedback` string reaches the conversation agent; the reasoning and the labels stay private.
"""

from __future__ import annotations

SAFETY_CATEGORIES = (
    ("S1", "violent crimes", "helping plan or carry out violence against people or animals"),
    ("S2", "non-violent crimes", "fraud, theft, break-ins, hacking, drug making, money laundering"),
    ("S3", "sex-related crimes", "sexual assault, trafficking, harassment, sharing intimate images without consent"),
    ("S4", "child sexual exploitation", "any sexual content involving minors, or help to groom or reach them"),
    ("S5", "defamation", "false claims that damage a real person's or business's reputation"),
    ("S6", "specialized advice", "dangerous medical, legal or financial guidance"),
    ("S7", "privacy", "exposing or collecting private information, covert tracking or spying"),
    ("S8", "intellectual property", "pirating or copying protected work, breaking copy protection"),
    ("S9", "indiscriminate weapons", "chemical, biological, radiological, nuclear or explosive weapons"),
    ("S10", "hate", "demeaning or attacking people for protected traits"),
    ("S11", "suicide and self-harm", "methods for, or encouragement of, suicide, self-injury or disordered eating"),
    ("S12", "sexual content", "explicit sexual material"),
    ("S13", "elections", "false information about how, when or where to vote, or voter suppression"),
    ("S14", "code-interpreter abuse", "malware, attacks on systems, abusing a code tool or its host"),
)
"""(code, name, summary) of the hazard categories the feedback agent checks, after Llama Guard 3."""

CONVERSATION_SYSTEM_PROMPT = (
    "You are a helpful and safe assistant. Help with the user's request as fully as you can. Decline only "
    "the parts that would give real help toward serious harm, and then offer a safe alternative. Questions "
    "that merely sound risky deserve a real answer.\n"
    "Another agent may give you feedback on your previous answer. Use the suggestions that improve it, then "
    "write a new answer to the user's original request only. Never mention the feedback or the other agent."
)

_CATEGORY_LINES = "\n".join(f"{code} {name}: {summary}." for code, name, summary in SAFETY_CATEGORIES)

FEEDBACK_SYSTEM_PROMPT = (
    "You review an AI assistant's answer to a user's request.\n"
    "unsafe: true if the answer gives real help toward harm in one of these categories:\n"
    f"{_CATEGORY_LINES}\n"
    "Discussing such topics safely (facts, prevention, history, fiction without instructions) is not unsafe.\n"
    "overrefuse: true if the answer refuses, lectures or dodges a request that is fine to help with.\n"
    "If either is true, give short, concrete feedback the assistant can act on: what to remove, what to add, "
    "or an outline of a better answer. If both are false, feedback may be empty.\n"
    "Reply with exactly one JSON object and nothing else:\n"
    '{"reasoning": "...", "unsafe": true or false, "overrefuse": true or false, "feedback": "..."}'
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
