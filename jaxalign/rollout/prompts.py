"""Turning user prompts (strings or chat messages) into token ids for the sampler."""

from __future__ import annotations

from typing import Any


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
