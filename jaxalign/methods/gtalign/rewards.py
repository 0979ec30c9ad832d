"""GTAlign's host features (run in the reward pool) and its reward maths (pure, jittable): the terms of the
user's and the LLM's welfare, their combination and the per-source z-score. Formulas: `jaxalign.methods.gtalign`."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from jaxalign.methods.gtalign import game
from jaxalign.methods.gtalign.config import (
    AMBIGUITY_SOURCES,
    EPS,
    FEATURES,
    JUDGED_SOURCES,
    LLM_TERMS,
    MATH_SOURCES,
    REWARD_MODES,
    GTAlignConfig,
)
from jaxalign.rewards.verifiers import correctness_features


_QUESTION_RE = re.compile(r"[^.!?\n]*\?")
_READINGS_RE = re.compile(
    r"(?i)\b(?:if you mean|if you meant|if you are asking|if you're asking|if it is about|depending on|it depends|"
    r"could mean|can mean|might mean|one reading|another reading|the other reading|in one sense|in another sense|"
    r"either way|two (?:readings|meanings|cases))\b")


def response_acts(response: str) -> tuple[bool, bool, bool]:
    """(asks, answers, covers readings) of a `<response>` text: it has a question sentence; the rest (its
    sentences that are not questions) holds a number or at least three words; it spells out several readings
    ("if you mean ...", "it depends on ...")."""
    statement = _QUESTION_RE.sub(" ", response)
    answers = len(statement.split()) >= 3 or any(ch.isdigit() for ch in statement)
    return bool(_QUESTION_RE.search(response)), answers, bool(_READINGS_RE.search(response))


def _chosen_action(analyze: str | None, response: str) -> str:
    action = game.chosen_strategy(analyze or "")[1]
    if action is not None:
        return action
    asks, answers, _ = response_acts(response)  # the analysis chooses nothing: read the reply itself
    return ("AQ" if answers else "CQ") if asks else "DA"


def _answer_terms(source: str, response: str, example: Mapping[str, Any]) -> tuple[float, float]:
    if source in MATH_SOURCES:
        correct = correctness_features(response, example)["correct"]
        return correct, correct
    if source in AMBIGUITY_SOURCES:
        # As the reference's ambiguity judge reads the reply: an ambiguous question should be clarified or
        # answered for several readings, a clear one answered (a follow-up question on top is fine).
        asks, answers, readings = response_acts(response)
        fits = (asks or readings) if example["ambiguous"] else answers
        return float(fits), float(fits)
    if source in JUDGED_SOURCES:  # writing and safety: set by the model judges (`gtalign.judges`)
        return 0.0, 0.0
    raise ValueError(f"gtalign: data source {source!r} has no rule-based answer check")


def gtalign_features(text: str, example: Mapping[str, Any], *, response_words: tuple[float, float] = (20, 500),
                     full_words: tuple[float, float] = (500, 1000), reasoning_scale: float = 500.0
                     ) -> dict[str, float]:
    """Pool feature function: the terms of U and L for one decoded response (all 0 when unparsable)."""
    features = dict.fromkeys(FEATURES, 0.0)
    response = game.extract_tag(text, "response")
    payoff_body = game.extract_tag(text, "payoff")
    if response is None or payoff_body is None:
        return features
    try:
        payoffs = game.parse_payoffs(payoff_body)
    except game.PayoffError:
        return features
    analyze = game.extract_tag(text, "analyze")
    action = _chosen_action(analyze, response)
    answer_user, answer_llm = _answer_terms(example["data_source"], response, example)
    reasoning = text.split("<response>", 1)[0]
    features.update(
        parse_ok=1.0,
        format=float(game.format_ok(text)),
        quality=game.matrix_quality(payoffs),
        analyze_ok=float(analyze is not None),
        pareto=game.pareto_score(analyze, payoffs) if analyze is not None else 0.0,
        answer_user=answer_user,
        answer_llm=answer_llm,
        response_band=game.band_score(len(response.split()), *response_words),
        reasoning_brevity=game.brevity_score(len(reasoning), reasoning_scale),
        full_band=game.band_score(len(text.split()), *full_words),
        response_ratio=len(response) / max(len(text), 1),
        welfare_consistent=float(game.chosen_strategy(analyze or "")[0] == game.welfare_choice(payoffs)),
        **{f"action_{action}": 1.0},
    )
    return features


def welfare_terms(f: Mapping[str, Any], *, llm_terms: str = "main") -> tuple[jnp.ndarray, jnp.ndarray]:
    """(U, L) per sample from the feature arrays."""
    user = EPS + 0.5 * f["answer_user"] + 0.2 * f["response_band"] + 0.3 * f["reasoning_brevity"]
    if llm_terms == "main":
        llm = EPS + 0.2 * f["format"] + 0.2 * f["quality"] + 0.4 * f["answer_llm"] + 0.2 * f["full_band"]
    elif llm_terms == "pareto":
        llm = (EPS + 0.2 * f["pareto"] + 0.2 * f["quality"] + 0.2 * f["format"] + 0.35 * f["answer_llm"]
               + 0.05 * f["full_band"])
    else:
        raise ValueError(f"unknown llm_terms {llm_terms!r}; known: {', '.join(LLM_TERMS)}")
    return jnp.asarray(user, jnp.float32), jnp.asarray(llm, jnp.float32)


def gtalign_rewards(f: Mapping[str, Any], *, mode: str = "welfare", llm_terms: str = "main"
                    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(reward, U, L) per sample; reward 0 where the response did not parse (`parse_ok` 0) and, with
    `llm_terms="pareto"` (the reference's ablation tasks), also where it has no `<analyze>` block."""
    user, llm = welfare_terms(f, llm_terms=llm_terms)
    if mode == "welfare":
        score = jnp.sqrt(user * llm)
    elif mode == "linear":
        score = 0.5 * (user + llm)
    elif mode == "user":
        score = user
    elif mode == "llm":
        score = llm
    else:
        raise ValueError(f"unknown reward mode {mode!r}; known: {', '.join(REWARD_MODES)}")
    return jnp.where(scored_mask(f, llm_terms), score, 0.0), user, llm


def scored_mask(f: Mapping[str, Any], llm_terms: str = "main") -> jnp.ndarray:
    """Which samples get a reward: the payoff and response blocks parse, plus the analysis with "pareto"."""
    ok = jnp.asarray(f["parse_ok"]) > 0.5
    return ok & (jnp.asarray(f["analyze_ok"]) > 0.5) if llm_terms == "pareto" else ok


def zscore_by_source(rewards_n: np.ndarray, sources: Sequence[str]) -> np.ndarray:
    """(r - mean) / (std + 1e-6) within each data source of the batch (population std; a source whose std
    is at most 1e-6 is only centred). NaN rewards (failed samples) stay NaN and are left out of the stats."""
    rewards_n = np.asarray(rewards_n, np.float64)
    out = np.full_like(rewards_n, np.nan)
    sources = np.asarray(sources)
    for source in np.unique(sources):
        rows = (sources == source) & ~np.isnan(rewards_n)
        if not rows.any():
            continue
        mean, std = rewards_n[rows].mean(), rewards_n[rows].std()
        out[rows] = (rewards_n[rows] - mean) / ((std if std > 1e-6 else 1.0) + 1e-6)
    return out.astype(np.float32)


class GTAlignFeatures:
    """A picklable feature function bound to the config's length bands."""

    def __init__(self, cfg: GTAlignConfig):
        self.kwargs = dict(response_words=cfg.response_words, full_words=cfg.full_words,
                           reasoning_scale=cfg.reasoning_scale)

    def __call__(self, text: str, example: Mapping[str, Any]) -> dict[str, float]:
        return gtalign_features(text, example, **self.kwargs)
