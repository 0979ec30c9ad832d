"""GTAlign's game: the tagged output format, the payoff matrix, its Pareto frontier and pricing steering.

A response has four blocks, in order and with nothing else around them:

    <thinking>...</thinking> <payoff>{JSON}</payoff> <analyze>...</analyze> <response>...</response>

The payoff block is a JSON object with exactly the six joint strategies as keys, user strategy first:
user DQ (a definite question) or VQ (a vague one) and assistant DA (direct answer), CQ (clarifying question)
or AQ (answer plus one follow-up question); each maps to `{"LLM": x, "user": y}`.

Everything here is plain Python on decoded text (host side, run in the reward pool). Parsing follows the
reference implementation's rules, with one deliberate difference: booleans are not accepted as payoff
numbers (the reference lets `true` through because Python's bool is an int).
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Mapping

USER_STRATEGIES = ("DQ", "VQ")
ASSISTANT_STRATEGIES = ("DA", "CQ", "AQ")
PAYOFF_KEYS = tuple(sorted(f"{u}_{a}" for u in USER_STRATEGIES for a in ASSISTANT_STRATEGIES))
TAGS = ("thinking", "payoff", "analyze", "response")

# The reference's anchored pattern, flags included: with MULTILINE, `$` also matches before any newline, so
# text after a line break following </response> still passes. Kept for faithfulness.
FORMAT_RE = re.compile(
    r"^<thinking>.*?</thinking>\s*<payoff>.*?</payoff>\s*<analyze>.*?</analyze>\s*<response>.*?</response>$",
    re.DOTALL | re.MULTILINE,
)
_KEY_RE = re.compile(r"\b(DQ|VQ)_(DA|CQ|AQ)\b")
# A choice: a choosing word, at most three words, then a key or a bare action ("I pick DQ_DA", "the chosen
# key is VQ_CQ", "Choice: AQ"). The words are case-insensitive, the keys and actions are not.
_CHOICE_RE = re.compile(
    r"(?i:\b(?:choose|chooses|chose|chosen|choice|pick|picks|picked|select|selects|selected|recommend|recommends|"
    r"recommended|recommendation|go with|going with|settle on|opt for|best)\b)"
    r"\W+(?:[A-Za-z]+\W+){0,3}?((?:DQ|VQ)_(?:DA|CQ|AQ)|(?<![A-Za-z_])(?:DA|CQ|AQ))(?![A-Za-z0-9_])"
)
_CURLY_QUOTES = {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"}

Payoffs = dict[str, tuple[float, float]]
"""Joint strategy key -> (LLM payoff, user payoff)."""


class PayoffError(ValueError):
    """The payoff block is missing or malformed (the message says how)."""


def extract_tag(text: str, tag: str) -> str | None:
    """The stripped body of the first `<tag>...</tag>` in `text`, or None."""
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return match.group(1).strip() if match else None


def format_ok(text: str) -> bool:
    """Whether `text` has the four blocks in order with nothing before them (the payoff is checked apart)."""
    return FORMAT_RE.match(text) is not None


def _jsonish(body: str):
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        pass
    for curly, plain in _CURLY_QUOTES.items():
        body = body.replace(curly, plain)
    try:  # Python literals: single quotes, trailing commas
        return ast.literal_eval(body)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise PayoffError(f"payoff block is neither JSON nor a Python literal: {err}") from None


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayoffError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def parse_payoffs(body: str) -> Payoffs:
    """The six (LLM, user) payoffs of a payoff block body; `PayoffError` when malformed."""
    data = _jsonish(body)
    if not isinstance(data, dict):
        raise PayoffError(f"payoff block must be an object, got {type(data).__name__}")
    if set(data) != set(PAYOFF_KEYS):
        raise PayoffError(f"payoff keys must be exactly {', '.join(PAYOFF_KEYS)}; got {sorted(map(str, data))}")
    payoffs: Payoffs = {}
    for key in PAYOFF_KEYS:
        cell = data[key]
        if not isinstance(cell, dict) or set(cell) != {"LLM", "user"}:
            raise PayoffError(f"payoff {key} must be an object with exactly the keys LLM and user, got {cell!r}")
        payoffs[key] = (_number(cell["LLM"], f"{key}.LLM"), _number(cell["user"], f"{key}.user"))
    return payoffs


def payoff_json(payoffs: Mapping[str, tuple[float, float]]) -> str:
    """A payoff matrix as the compact JSON the format asks for (one decimal)."""
    return json.dumps({k: {"LLM": round(payoffs[k][0], 1), "user": round(payoffs[k][1], 1)} for k in PAYOFF_KEYS})


def matrix_quality(payoffs: Mapping[str, tuple[float, float]]) -> float:
    """P in [0, 1]: per cell, 1/12 for LLM != user and 1/12 for a relative gap above 10%.

    Rewards matrices that actually tell the two parties apart instead of copying one number twice.
    """
    score = 0.0
    for llm, user in payoffs.values():
        score += (llm != user) / 12.0
        score += (abs(user - llm) / max(abs(user), abs(llm), 1e-8) > 0.1) / 12.0
    return score


def pareto_frontier(payoffs: Mapping[str, tuple[float, float]], eps: float = 1e-9) -> list[str]:
    """Keys not strictly dominated (another cell at least as good for both and better for one, by > eps)."""
    frontier = []
    for key, (llm, user) in payoffs.items():
        dominated = any(
            o_llm >= llm - eps and o_user >= user - eps and (o_llm > llm + eps or o_user > user + eps)
            for other, (o_llm, o_user) in payoffs.items() if other != key)
        if not dominated:
            frontier.append(key)
    return sorted(frontier)


def welfare_choice(payoffs: Mapping[str, tuple[float, float]]) -> str:
    """The strategy the format asks the model to pick: highest LLM + user, then highest user, then LLM
    (ties beyond that: the first key in PAYOFF_KEYS order)."""
    return max(PAYOFF_KEYS, key=lambda k: (payoffs[k][0] + payoffs[k][1], payoffs[k][1], payoffs[k][0],
                                          -PAYOFF_KEYS.index(k)))


def nash_choices(payoffs: Mapping[str, tuple[float, float]]) -> list[str]:
    """Keys maximising the product LLM * user (the reference steering's feasible set)."""
    products = {k: payoffs[k][0] * payoffs[k][1] for k in PAYOFF_KEYS}
    best = max(products.values())
    return [k for k in PAYOFF_KEYS if products[k] == best]


# Per-action bonuses of the reference steering: the side that is not repriced still prefers some actions.
_USER_BONUS_UNDER_LLM_PRICING = {"DA": 0.0, "CQ": 0.5, "AQ": 1.0}
_LLM_BONUS_UNDER_USER_PRICING = {"DA": 1.0, "CQ": 0.0, "AQ": 0.5}


def steer_payoffs(payoffs: Mapping[str, tuple[float, float]], *, llm_shift: float = 0.0,
                  user_shift: float = 0.0) -> Payoffs:
    """Reprices a matrix for a pricing policy (GTAlign's inference-time steering).

    `llm_shift` != 0 (e.g. subscription pricing, where every extra turn costs the provider): every cell's
    LLM payoff moves by `llm_shift` and the user's by +0 (DA), +0.5 (CQ), +1 (AQ). Otherwise `user_shift`
    != 0 (per-token API pricing, where the user pays): every user payoff moves by `user_shift` and the LLM's
    by +1 (DA), +0 (CQ), +0.5 (AQ). Values are rounded to one decimal.
    """
    steered: Payoffs = {}
    for key in PAYOFF_KEYS:
        llm, user = payoffs[key]
        action = key.split("_")[1]
        if llm_shift:
            llm, user = llm + llm_shift, user + _USER_BONUS_UNDER_LLM_PRICING[action]
        elif user_shift:
            llm, user = llm + _LLM_BONUS_UNDER_USER_PRICING[action], user + user_shift
        steered[key] = (round(llm, 1), round(user, 1))
    return steered


def named_key(analyze: str) -> str | None:
    """The joint strategy an `<analyze>` block settles on: the last DQ_/VQ_ key it names, else None."""
    keys = _KEY_RE.findall(analyze or "")
    return f"{keys[-1][0]}_{keys[-1][1]}" if keys else None


def chosen_strategy(analyze: str) -> tuple[str | None, str | None]:
    """(key, action) an `<analyze>` block chooses: the last key or bare action that follows a choosing word
    ("I pick DQ_DA", "Choice: CQ"), else the key when it is the only one named; (None, None) when it chooses
    nothing, e.g. a block that merely lists several keys. A bare action gives (None, action)."""
    choices = _CHOICE_RE.findall(analyze or "")
    if choices:
        token = choices[-1]
        return (token, token.split("_")[1]) if "_" in token else (None, token)
    keys = {f"{u}_{a}" for u, a in _KEY_RE.findall(analyze or "")}
    if len(keys) == 1:
        key = keys.pop()
        return key, key.split("_")[1]
    return None, None


def pareto_score(analyze: str, payoffs: Mapping[str, tuple[float, float]]) -> float:
    """PO in {0, 0.5, 1}, a rule-based stand-in for the reference's judge of the Pareto reasoning, on the
    judge's levels: 1 when the chosen key is on the frontier of `payoffs` (or a bare chosen action is the
    action of a frontier key), 0.5 when the chosen key is dominated but its action is a frontier action
    (right action, wrong claim about the cell), 0 when the analysis chooses nothing or a dominated action."""
    key, action = chosen_strategy(analyze)
    if action is None:
        return 0.0
    frontier = pareto_frontier(payoffs)
    if key is not None and key in frontier:
        return 1.0
    on_frontier = action in {k.split("_")[1] for k in frontier}
    return (0.5 if key is not None else 1.0) if on_frontier else 0.0


def band_score(count: float, low: float, high: float, k: float = 0.005) -> float:
    """sigma(k (count - low)) * sigma(k (high - count)): a soft preference for lengths inside [low, high]."""
    def sigmoid(z):
        return 1.0 / (1.0 + math.exp(-z))

    return sigmoid(k * (count - low)) * sigmoid(k * (high - count))


def brevity_score(num_chars: float, scale: float = 500.0) -> float:
    """exp(-num_chars / scale): the user's preference for short reasoning."""
    return math.exp(-num_chars / scale)
