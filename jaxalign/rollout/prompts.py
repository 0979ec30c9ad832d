"""Turning user prompts (strings or chat messages) into token ids for the sampler."""

from __future__ import annotations

from typing import Any, Sequence


def as_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A string becomes one user message; a list of role/content dicts is checked and returned."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise TypeError(f"a prompt must be a string or a non-empty list of messages, got {type(prompt).__name__}")
    for message in prompt:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"chat messages need 'role' and 'content' keys, got {message!r}")
    return prompt


def encode_text(tokenizer, text: str) -> list[int]:
    """Plain token ids of `text` (no special tokens added by the tokenizer's encode)."""
    return [int(t) for t in tokenizer.encode(text)]


def encode_prompt(tokenizer, prompt: str | list[dict[str, Any]], *, chat: bool) -> list[int]:
    """Chat template with the generation prompt when `chat`; otherwise the plain encoding of a string."""
    if chat:
        return [int(t) for t in tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True)]
    if not isinstance(prompt, str):
        raise TypeError("chat=False needs string prompts (messages need the chat template)")
    return encode_text(tokenizer, prompt)


_TURN_SENTINEL = "\u2063jaxalign-turn-end\u2063"


def turn_context(tokenizer, context_ids: Sequence[int], response_ids: Sequence[int],
                 messages: list[dict[str, Any]], new_messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of the next turn's context, built without re-tokenising what was generated.

    `context_ids + response_ids` is the conversation so far exactly as the agents saw and wrote it (the
    response as sampled, a generated end-of-turn token included); `messages` is the same conversation as
    role/content messages, its last one the assistant message that `response_ids` wrote. The result
    appends the chat template's tokens that close that assistant turn (unless the response already ends
    with them) and open `new_messages`, with the generation prompt. Earlier turns are never re-rendered,
    so the ids an agent sampled are the ids it is trained on, turn separators included.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("turn_context: the conversation must end with the assistant message of response_ids")
    rendered = tokenizer.hf.apply_chat_template(
        [*messages[:-1], {**messages[-1], "content": _TURN_SENTINEL}, *as_messages(list(new_messages))],
        add_generation_prompt=True, tokenize=False,
    )
    if rendered.count(_TURN_SENTINEL) != 1:
        raise ValueError("turn_context: the chat template does not render the assistant content verbatim")
    tail = rendered.split(_TURN_SENTINEL, 1)[1]
    response_ids = [int(t) for t in response_ids]
    if response_ids and response_ids[-1] in tokenizer.eos_token_ids:
        end_text = tokenizer.hf.convert_ids_to_tokens(response_ids[-1])
        if isinstance(end_text, str) and tail.startswith(end_text):
            tail = tail[len(end_text):]
    return [int(t) for t in context_ids] + response_ids + encode_text(tokenizer, tail)
