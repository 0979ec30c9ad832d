"""Parsers from raw dataset rows to value-weighted examples.

Every example is a dict with at least:
  prompt (str)   the question shown to the policy
  answer (str)   the reference answer
  value (float)  the question's human value v in (0, 1]
  score, total   the raw points and the exam's total points (value = score / total)
  exam_id (str)  the exam (or group) the question belongs to
  source (str)   which schema/dataset it came from
and optionally difficulty (str), the WebInstruct-style difficulty label used for weak values.

Schemas:
  * RLEV (`sarosavo/RLEV`): query, label, score, total. `query` is a chat-template JSON list of messages
    (a JSON string or an already-decoded list) or a plain string; the prompt is its last user message.
  * WebInstruct-verified: question, answer, difficulty; the value is the paper's weak label
    (primary 1, junior high 2, senior high 4, university 6, PhD 8, divided by 100, total 100).

A malformed row raises `InvalidRowError` naming the row index, or, with `skip_invalid=True`, is skipped
and counted in the returned `ParseReport`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable, Iterable, Mapping

DIFFICULTY_POINTS = {
    "primary school": 1,
    "junior high school": 2,
    "senior high school": 4,
    "university": 6,
    "phd": 8,
}
"""The RLEV paper's weak point values per WebInstruct difficulty label (out of a total of 100)."""

WEAK_VALUE_TOTAL = 100.0

_DIFFICULTY_ALIASES = {
    "primaryschool": "primary school",
    "primary": "primary school",
    "elementaryschool": "primary school",
    "juniorhighschool": "junior high school",
    "juniorhigh": "junior high school",
    "middleschool": "junior high school",
    "seniorhighschool": "senior high school",
    "seniorhigh": "senior high school",
    "highschool": "senior high school",
    "university": "university",
    "college": "university",
    "undergraduate": "university",
    "phd": "phd",
    "graduate": "phd",
}


class InvalidRowError(ValueError):
    """A dataset row does not fit its schema; the message names the row index and the problem."""


@dataclasses.dataclass(frozen=True)
class ParseReport:
    """How many rows were read, kept and skipped (with the first few reasons)."""

    num_rows: int
    num_kept: int
    num_skipped: int
    skipped_reasons: tuple[str, ...] = ()


def normalise_difficulty(label: Any) -> str:
    """Maps a difficulty label such as "Senior High School" or "PhD" to a key of `DIFFICULTY_POINTS`."""
    if not isinstance(label, str):
        raise ValueError(f"difficulty must be a string, got {type(label).__name__}")
    key = re.sub(r"[^a-z]", "", label.lower())
    if key not in _DIFFICULTY_ALIASES:
        raise ValueError(f"unknown difficulty {label!r}; known: {', '.join(DIFFICULTY_POINTS)}")
    return _DIFFICULTY_ALIASES[key]


def weak_value(difficulty: Any) -> float:
    """The paper's weak value for a difficulty label: points / 100 (0.01 ... 0.08)."""
    return DIFFICULTY_POINTS[normalise_difficulty(difficulty)] / WEAK_VALUE_TOTAL


def _number(row: Mapping[str, Any], field: str) -> float:
    value = row.get(field)
    if value is None:
        raise ValueError(f"missing field {field!r}")
    if isinstance(value, bool):
        raise ValueError(f"field {field!r} is a bool, expected a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"field {field!r} is {value!r}, not a number") from None
    if not isinstance(value, (int, float)):
        raise ValueError(f"field {field!r} is {type(value).__name__}, expected a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"field {field!r} is {value}, not finite")
    return value


def _text(row: Mapping[str, Any], field: str, *, allow_numbers: bool = False) -> str:
    value = row.get(field)
    if value is None:
        raise ValueError(f"missing field {field!r}")
    if allow_numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise ValueError(f"field {field!r} is empty")
    return value.strip()


def prompt_from_query(query: Any) -> tuple[str, str | None]:
    """(user prompt, system prompt or None) from an RLEV `query`: a message list, its JSON, or plain text."""
    if query is None:
        raise ValueError("missing field 'query'")
    messages = query
    if isinstance(query, str):
        stripped = query.strip()
        if stripped.startswith("["):
            try:
                messages = json.loads(stripped)
            except json.JSONDecodeError:
                messages = stripped  # a plain question that happens to start with "["
        else:
            messages = stripped
    if isinstance(messages, str):
        if not messages:
            raise ValueError("field 'query' is empty")
        return messages, None
    if not isinstance(messages, list):
        raise ValueError(f"field 'query' is {type(query).__name__}, expected a message list or a string")
    user, system = None, None
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"query message {position} is not a {{role, content}} dict")
        if message["role"] == "user":
            user = message["content"]
        elif message["role"] == "system":
            system = message["content"]
    if not isinstance(user, str) or not user.strip():
        raise ValueError("query has no non-empty user message")
    return user.strip(), system


def _rlev_example(row: Mapping[str, Any], index: int, source: str) -> dict[str, Any]:
    prompt, system = prompt_from_query(row.get("query"))
    answer = _text(row, "label", allow_numbers=True)
    score, total = _number(row, "score"), _number(row, "total")
    if total <= 0:
        raise ValueError(f"total is {total}, must be > 0")
    if not 0 < score <= total:
        raise ValueError(f"score is {score}, must be in (0, total={total}]")
    example = {
        "prompt": prompt,
        "answer": answer,
        "score": score,
        "total": total,
        "value": score / total,
        "exam_id": str(row.get("exam_id", row.get("exam", f"{source}-unknown"))),
        "source": source,
        "row_index": index,
    }
    if system is not None:
        example["query_system"] = system
    if "difficulty" in row and row["difficulty"] is not None:
        example["difficulty"] = normalise_difficulty(row["difficulty"])
    return example


def _webinstruct_example(row: Mapping[str, Any], index: int, source: str) -> dict[str, Any]:
    prompt = _text(row, "question")
    answer = _text(row, "answer", allow_numbers=True)
    if "difficulty" not in row or row["difficulty"] is None:
        raise ValueError("missing field 'difficulty'")
    difficulty = normalise_difficulty(row["difficulty"])
    points = float(DIFFICULTY_POINTS[difficulty])
    return {
        "prompt": prompt,
        "answer": answer,
        "score": points,
        "total": WEAK_VALUE_TOTAL,
        "value": points / WEAK_VALUE_TOTAL,
        "difficulty": difficulty,
        "exam_id": f"{source}-{difficulty}",
        "source": source,
        "row_index": index,
    }


SCHEMAS: dict[str, Callable[[Mapping[str, Any], int, str], dict[str, Any]]] = {
    "rlev": _rlev_example,
    "webinstruct": _webinstruct_example,
}


def detect_schema(row: Mapping[str, Any]) -> str:
    """Guesses the schema of a row from its field names."""
    if {"query", "label"} <= set(row):
        return "rlev"
    if {"question", "answer", "difficulty"} <= set(row):
        return "webinstruct"
    raise ValueError(
        f"cannot tell the schema of a row with fields {sorted(row)}; expected RLEV (query, label, score, "
        f"total) or WebInstruct-verified (question, answer, difficulty)"
    )


def parse_rows(
    rows: Iterable[Mapping[str, Any]],
    schema: str,
    *,
    skip_invalid: bool = False,
    source: str | None = None,
) -> tuple[list[dict[str, Any]], ParseReport]:
    """Turns raw rows into examples with `SCHEMAS[schema]` ("auto" detects it from the first row)."""
    rows = list(rows)
    if schema == "auto":
        if not rows:
            return [], ParseReport(0, 0, 0)
        schema = detect_schema(rows[0])
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; known: auto, {', '.join(SCHEMAS)}")
    parse = SCHEMAS[schema]
    examples, reasons = [], []
    for index, row in enumerate(rows):
        try:
            if not isinstance(row, Mapping):
                raise ValueError(f"row is {type(row).__name__}, expected a dict")
            examples.append(parse(row, index, source or schema))
        except ValueError as exc:
            message = f"{schema} row {index}: {exc}"
            if not skip_invalid:
                raise InvalidRowError(message) from None
            reasons.append(message)
    report = ParseReport(len(rows), len(examples), len(reasons), tuple(reasons[:20]))
    return examples, report
