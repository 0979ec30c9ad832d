"""Rule-based answer verification: final-answer extraction and math equivalence.

The answer is read from the *final part* of a response only (as in RLEV's verifier, which judges the final
step), in this order of preference:
  1. the last `\\boxed{...}` in the tail,
  2. the last "Answer: X" / "answer is X" in the tail,
  3. the last number of the final non-empty line.

`math_equal` compares with math-verify (parse + verify: numbers, fractions, percentages, LaTeX) and with
exact match for option letters A-E. math-verify's own timeouts use SIGALRM, which only works on a main
thread, so they are switched off here; run these functions in a `RewardPool`, whose per-sample timeout
kills a hung child. math-verify is imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping

TAIL_CHARS = 600
"""How much of the end of a response is searched for an explicit answer."""

OPTION_LETTERS = frozenset("ABCDE")

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_MARKER_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<answer>[^\n]+)", re.IGNORECASE
)
_OPTION_RE = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?(?:[.:)]\s.*|[.:)]?)$", re.DOTALL)


def final_step(text: str, max_chars: int = 300) -> str:
    """The last non-empty line of `text`, cut to its last `max_chars` characters."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1][-max_chars:]


def _last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{...}` (or `\\fbox{...}`), with nested braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
        i += 1
    return None  # unbalanced: the response was cut off inside the box


def _clean_answer(answer: str) -> str:
    answer = answer.strip()
    # End of the answer sentence: a period followed by a space or the end (not a decimal point).
    answer = re.split(r"\.(?:\s|$)", answer, maxsplit=1)[0]
    answer = answer.strip().strip("*").strip()
    if answer.startswith("$") and answer.endswith("$") and len(answer) >= 2:
        answer = answer.strip("$").strip()
    boxed = _last_boxed(answer)
    if boxed is not None:
        answer = boxed
    return answer.rstrip(".;,").strip()


def extract_answer(text: str, tail_chars: int = TAIL_CHARS) -> str | None:
    """The final answer of a response, or None when the final part states none."""
    tail = text[-tail_chars:]
    boxed = _last_boxed(tail)
    if boxed:
        return boxed
    markers = list(_ANSWER_MARKER_RE.finditer(tail))
    if markers:
        answer = _clean_answer(markers[-1].group("answer"))
        if answer:
            return answer
    numbers = _NUMBER_RE.findall(final_step(text))
    if numbers:
        return numbers[-1].replace(",", "")
    return None


def option_letter(answer: str) -> str | None:
    """"B", "(B)", "B)", "B." or "B. some text" -> "B"; anything else -> None."""
    match = _OPTION_RE.match(answer.strip())
    return match.group(1).upper() if match else None


_math_verify = None


def _load_math_verify():
    global _math_verify
    if _math_verify is None:
        import math_verify

        # We disable math-verify's signal-based timeouts on purpose (the pool enforces them), so its
        # one-time warning about that is noise.
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _math_verify = math_verify
    return _math_verify


def _parse_math(expression: str):
    math_verify = _load_math_verify()
    parsed = math_verify.parse(expression, parsing_timeout=None)
    if not parsed and "$" not in expression:
        # Bare LaTeX or an expression such as x^2 is only found between math delimiters.
        parsed = math_verify.parse(f"${expression}$", parsing_timeout=None)
    return parsed


def math_equal(pred: str | None, ref: str) -> bool:
    """Whether predicted answer `pred` is equivalent to reference `ref`.

    Option letters (A-E) compare exactly; everything else with math-verify, falling back to a
    whitespace- and case-insensitive string match for answers math-verify cannot parse.
    """
    if pred is None:
        return False
    pred, ref = str(pred).strip(), str(ref).strip()
    if not pred or not ref:
        return False
    ref_letter = option_letter(ref) if len(ref) <= 3 else None
    if ref_letter is not None:
        return option_letter(pred) == ref_letter
    gold = _parse_math(ref)
    target = _parse_math(pred)
    if gold and target:
        return bool(_load_math_verify().verify(gold, target, timeout_seconds=None))
    return " ".join(pred.lower().split()) == " ".join(ref.lower().split())


def correctness_features(text: str, example: Mapping[str, Any]) -> dict[str, float]:
    """Pool feature function: {"correct": 0/1, "has_answer": 0/1} against `example["answer"]`."""
    if "answer" not in example:
        raise KeyError("example has no 'answer' field to verify against")
    answer = extract_answer(text)
    correct = math_equal(answer, str(example["answer"])) if answer is not None else False
    return {"correct": float(correct), "has_answer": float(answer is not None)}
