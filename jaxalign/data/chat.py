"""Chat conversations for supervised fine-tuning: loading, validation and tokenisation with assistant masks.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`. Sources
(`load_conversations`):

* a `.jsonl` file with one `{"messages": [...]}` object per line (the field name is `messages_field`);
* `"embedded:<name>"`: a set generated in code and registered with `register_embedded_chat(name, build)`,
  where `build(seed) -> [{"messages": [...]}, ...]`. Methods register their sets when their package is
  imported (`jaxalign.methods` is imported before the name is looked up);
* a Hugging Face dataset (a local .json/.parquet/.csv file, a dataset folder or a hub name read from the
  local cache) with a messages column, through `jaxalign.data.loaders.load_rows`.

Every row is checked (`check_messages`); a malformed row is an error naming the file and row (line for
JSONL) and what is accepted. `encode_conversation` renders the conversation with the tokenizer's chat
template and marks the tokens the model writes: each assistant turn's content and its end-of-turn token.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

from jaxalign.config import ConfigError
from jaxalign.data.schemas import InvalidRowError

ROLES = ("system", "user", "assistant")
EMBEDDED_PREFIX = "embedded:"

_EMBEDDED: dict[str, Callable[[int], list[dict]]] = {}


class ChatDataError(InvalidRowError, ConfigError):
    """A conversation row (or the chat template) cannot be used; the message names the row and the fix."""


def register_embedded_chat(name: str, build: Callable[[int], list[dict]]) -> None:
    """Makes `build(seed) -> [{"messages": [...]}, ...]` loadable as `sft.data="embedded:<name>"`."""
    if not name or ":" in name:
        raise ValueError(f"embedded chat set name {name!r} must be non-empty and contain no ':'")
    if name in _EMBEDDED and _EMBEDDED[name] is not build:
        raise ValueError(f"embedded chat set {name!r} registered twice")
    _EMBEDDED[name] = build


def embedded_chat_names() -> list[str]:
    """The registered embedded sets (after the methods' packages registered theirs)."""
    import jaxalign.methods  # noqa: F401  (methods register their sets on import)

    return sorted(_EMBEDDED)


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """The conversation as clean `{"role", "content"}` dicts; a `ChatDataError` naming `where` otherwise.

    Accepted: a non-empty list of messages, each with a role out of `ROLES` and a string content; a user
    message before the first assistant message; at least one assistant message (the trained turns).
    Other keys of a message are dropped.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatDataError(f"{where}: the messages must be a non-empty list of {{\"role\", \"content\"}} "
                            f"objects, got {_short(messages)}")
    clean = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatDataError(f"{where}: messages[{index}] must be an object with \"role\" and \"content\", "
                                f"got {_short(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ChatDataError(f"{where}: messages[{index}].role is {_short(role)}; accepted: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ChatDataError(f"{where}: messages[{index}].content must be a string, got {_short(content)}")
        clean.append({"role": role, "content": content})
    roles = [m["role"] for m in clean]
    if "assistant" not in roles:
        raise ChatDataError(f"{where}: no assistant message (roles: {', '.join(roles)}); SFT trains on the "
                            "assistant turns, so each conversation needs at least one")
    if "user" not in roles[: roles.index("assistant")]:
        raise ChatDataError(f"{where}: messages[{roles.index('assistant')}] is an assistant message before any "
                            "user message; a conversation starts with a user message (after an optional system one)")
    return clean


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_conversations(source: str, *, messages_field: str = "messages", split: str = "train",
                       seed: int = 0) -> list[list[dict[str, str]]]:
    """Every conversation of `source` (see the module docstring), checked; errors name the row."""
    if source.startswith(EMBEDDED_PREFIX):
        name = source[len(EMBEDDED_PREFIX):]
        names = embedded_chat_names()
        if name not in _EMBEDDED:
            raise ConfigError(f"sft.data={source!r}: no embedded chat set {name!r}; registered: "
                              + (", ".join(f"{EMBEDDED_PREFIX}{n}" for n in names) or "none"))
        rows = [(f"embedded set {name!r} row {i}", row) for i, row in enumerate(_EMBEDDED[name](seed))]
    elif source.endswith(".jsonl"):
        rows = _read_jsonl(source)
    else:
        rows = [(f"{source} ({split}) row {i}", row) for i, row in enumerate(_read_dataset(source, split))]
    conversations = []
    for place, row in rows:
        if not isinstance(row, dict) or messages_field not in row:
            fields = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise ChatDataError(f"{place}: no {messages_field!r} field (found: {fields}); set "
                                "sft.messages_field to the column that holds the conversation")
        conversations.append(check_messages(row[messages_field], place))
    if not conversations:
        raise ConfigError(f"sft.data={source!r} holds no conversations")
    return conversations


def _read_jsonl(path: str) -> list[tuple[str, Any]]:
    """(`path:line`, parsed object) of every non-blank line."""
    if not os.path.isfile(path):
        raise ConfigError(f"sft.data={path!r} does not exist; give a .jsonl file of {{\"messages\": [...]}} rows")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ChatDataError(f"{path}:{number}: not JSON ({e})") from None
    return rows


def _read_dataset(source: str, split: str) -> list[dict]:
    from jaxalign.data.loaders import load_rows

    try:
        return load_rows(source, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"sft.data={source!r} could not be loaded as a dataset: {e}") from None


def encode_conversation(tokenizer, messages: Sequence[dict[str, str]], where: str = "conversation"
                        ) -> tuple[list[int], list[int]]:
    """`(ids, mask)` of a conversation rendered with the tokenizer's chat template; mask 1 on the tokens
    the model writes: each assistant turn's content and its end-of-turn token.

    The assistant spans are found by rendering prefixes: turn k spans from the end of
    `render(messages[:k], add_generation_prompt=True)` to the end of `render(messages[:k + 1])`, and both
    must be prefixes of the whole rendering (a template that rewrites earlier turns is an error). Each span
    and each text between spans is tokenised on its own, so a turn's prompt has exactly the ids the sampler
    gets for it (`apply_chat_template(..., add_generation_prompt=True)`). Inside a span, template text
    after the last end-of-turn (eos) token, such as a newline, stays context (mask 0); a template without an
    eos token in its assistant turns trains the whole span. Text after the last assistant turn is left out.
    """
    hf = tokenizer.hf
    if not getattr(hf, "chat_template", None):
        raise ConfigError("the model's tokenizer has no chat template; SFT renders conversations with it")

    def render(part, generation_prompt):
        try:
            return hf.apply_chat_template(list(part), add_generation_prompt=generation_prompt, tokenize=False)
        except Exception as e:  # a template may reject a conversation (e.g. roles out of order)
            raise ChatDataError(f"{where}: the chat template cannot render it ({type(e).__name__}: {e})") from None

    full = render(messages, False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, through = render(messages[:index], True), render(messages[: index + 1], False)
        if not (full.startswith(prompt) and full.startswith(through) and len(through) > len(prompt)):
            raise ChatDataError(
                f"{where}: the chat template does not render the conversation up to messages[{index}] as a "
                "prefix of the whole conversation, so the assistant tokens cannot be located; use a model "
                "whose template renders earlier turns unchanged")
        if spans and len(prompt) < spans[-1][1]:
            raise ChatDataError(f"{where}: the assistant turns overlap in the rendered conversation")
        spans.append((len(prompt), len(through)))
    eos = set(tokenizer.eos_token_ids)
    ids: list[int] = []
    mask: list[int] = []
    cursor = 0
    for start, end in spans:
        context = tokenizer.encode(full[cursor:start]) if start > cursor else []
        turn = tokenizer.encode(full[start:end])
        last_eos = max((i for i, t in enumerate(turn) if t in eos), default=len(turn) - 1)
        ids += context + turn
        mask += [0] * len(context) + [1] * (last_eos + 1) + [0] * (len(turn) - last_eos - 1)
        cursor = end
    return [int(t) for t in ids], mask
