"""GTAlign: game-theoretic alignment, trained on a mutual-welfare reward (Zhu et al., 2025).

The policy reasons about a 2 x 3 game between the user (definite DQ or vague VQ question) and itself
(direct answer DA, clarifying question CQ, answer + follow-up AQ) in four tagged blocks (`gtalign_game`),
then acts. Every response is scored from both sides, with eps = 1e-4:

    U = eps + 0.5 A_user + 0.2 band(response words; 20, 500) + 0.3 exp(-reasoning chars / 500)
    L = eps + 0.2 F + 0.2 P + 0.4 A_llm + 0.2 band(all words; 500, 1000)                 llm_terms="main"
    L = eps + 0.2 PO + 0.2 P + 0.2 F + 0.35 A_llm + 0.05 band(all words; 500, 1000)     llm_terms="pareto"
    reward = W = sqrt(U * L)                                                             reward="welfare"

F is the format (the four blocks, the payoff parses), P the payoff matrix's quality, PO whether the analysis
names an action on the matrix's Pareto frontier, A the answer terms. A response whose `<response>` or
`<payoff>` block cannot be parsed gets reward 0 and is still trained on (that is how the format is learnt).
Ablations: reward "linear" ((U + L) / 2), "user" (U), "llm" (L). With `normalize="zscore"` rewards are
standardised per data source within each batch (the reference's mixed-data run).

Answer terms are checked by rules, per data source (a model judge, as the paper uses for writing and
safety data, is not part of this method yet, and rows of such sources are rejected with a clear error):
  * math (`math`, `math-hard`, `minerva`): A_user = A_llm = the `<response>` answer equals the reference
    (math-verify);
  * ambiguity (`ambiguity`, `ambig_qa`, `abg-coqa`): A = 1 when the chosen action fits the question: CQ or
    AQ for an ambiguous one, DA for a clear one. The action is the key the `<analyze>` block settles on.
PO is decided by a rule in place of the reference's judge: the analysis names the assistant action of a
cell on the frontier of its own matrix.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from jaxalign.data import load_rows
from jaxalign.data.gtalign_set import make_gtalign_set
from jaxalign.methods import gtalign_game as game
from jaxalign.methods.base import Example, FeatureFn, Method, config_section, register
from jaxalign.methods.gtalign_prompts import EARLIER_QUESTION, GAME_PREFIX, SYSTEM_PROMPT
from jaxalign.rewards.verifiers import correctness_features

REWARD_MODES = ("welfare", "linear", "user", "llm")
LLM_TERMS = ("main", "pareto")
NORMALIZATIONS = ("none", "zscore")
EPS = 1e-4
MATH_SOURCES = ("math", "math-hard", "math_hard", "minerva")
AMBIGUITY_SOURCES = ("ambiguity", "ambig_qa", "abg-coqa", "abgqa")
ACTIONS = game.ASSISTANT_STRATEGIES

FEATURES = ("parse_ok", "format", "quality", "pareto", "answer_user", "answer_llm", "response_band",
            "reasoning_brevity", "full_band", "response_ratio", "welfare_consistent",
            *(f"action_{a}" for a in ACTIONS))


# ---------------------------------------------------------------------------------------------------------
# Host features (reward pool) and the reward maths (pure, jittable)


def _chosen_action(analyze: str | None, response: str) -> str:
    key = game.named_key(analyze or "")
    if key is not None:
        return key.split("_")[1]
    if response.rstrip().endswith("?"):  # no key named: read the action off the reply itself
        return "CQ" if len(response.split()) <= 30 else "AQ"
    return "DA"


def _answer_terms(source: str, response: str, action: str, example: Mapping[str, Any]) -> tuple[float, float]:
    if source in MATH_SOURCES:
        correct = correctness_features(response, example)["correct"]
        return correct, correct
    if source in AMBIGUITY_SOURCES:
        fits = action in ("CQ", "AQ") if example["ambiguous"] else action == "DA"
        return float(fits), float(fits)
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
    answer_user, answer_llm = _answer_terms(example["data_source"], response, action, example)
    reasoning = text.split("<response>", 1)[0]
    features.update(
        parse_ok=1.0,
        format=float(game.format_ok(text)),
        quality=game.matrix_quality(payoffs),
        pareto=float(analyze is not None and game.names_frontier_action(analyze, game.pareto_frontier(payoffs))),
        answer_user=answer_user,
        answer_llm=answer_llm,
        response_band=game.band_score(len(response.split()), *response_words),
        reasoning_brevity=game.brevity_score(len(reasoning), reasoning_scale),
        full_band=game.band_score(len(text.split()), *full_words),
        response_ratio=len(response) / max(len(text), 1),
        welfare_consistent=float(game.named_key(analyze or "") == game.welfare_choice(payoffs)),
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
    """(reward, U, L) per sample; reward 0 where the response did not parse (`parse_ok` 0)."""
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
    return jnp.where(jnp.asarray(f["parse_ok"]) > 0.5, score, 0.0), user, llm


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


# ---------------------------------------------------------------------------------------------------------
# Data


def _user_turns(row: Mapping[str, Any]) -> list[str]:
    if isinstance(row.get("question"), str):
        return [row["question"]]
    messages = row.get("prompt", row.get("messages"))
    if isinstance(messages, str):
        return [messages]
    if not isinstance(messages, (list, tuple)):
        raise ValueError("needs 'question' (text) or 'prompt'/'messages' (a chat message list)")
    turns = [m["content"] for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise ValueError("the message list has no non-empty user message")
    return turns


def _strip_game_prefix(text: str) -> str:
    # Rows prepared for the reference already hold its instruction block, ending in "Question: <q>".
    return text.rsplit("Question: ", 1)[1].strip() if "Question: " in text else text.strip()


def _ambiguity_label(truth: Any) -> bool:
    label = str(truth).strip()
    if label.startswith("multipleQAs") or label == "ambiguous":
        return True
    if label.startswith("singleAnswer") or label == "non_ambiguous":
        return False
    raise ValueError(f"ambiguity ground truth {label[:40]!r} is none of multipleQAs###..., singleAnswer###..., "
                     "ambiguous, non_ambiguous")


def example_from_row(row: Mapping[str, Any], index: int) -> Example:
    """A GTAlign example from a row in the reference's schema (`prompt` messages, `data_source`,
    `reward_model.ground_truth`) or a flat one (`question`, `data_source`, `ground_truth` or `answer`)."""
    source = row.get("data_source")
    if source not in MATH_SOURCES + AMBIGUITY_SOURCES:
        raise ValueError(f"row {index}: data_source {source!r} is not supported by rule-based scoring; supported: "
                         f"{', '.join(MATH_SOURCES + AMBIGUITY_SOURCES)}")
    truth = row.get("ground_truth", row.get("answer"))
    if isinstance(row.get("reward_model"), Mapping):
        truth = row["reward_model"].get("ground_truth", truth)
    if truth is None:
        raise ValueError(f"row {index}: no ground truth (reward_model.ground_truth, ground_truth or answer)")
    try:
        turns = [_strip_game_prefix(t) for t in _user_turns(row)]
        ambiguous = source in AMBIGUITY_SOURCES and _ambiguity_label(truth)
    except ValueError as err:
        raise ValueError(f"row {index}: {err}") from None
    return {"prompt": turns[-1], "first_question": turns[0] if len(turns) > 1 else None, "data_source": source,
            "answer": str(truth) if source in MATH_SOURCES else "", "ambiguous": ambiguous, "index": index}


# ---------------------------------------------------------------------------------------------------------
# Configuration and the method


@dataclasses.dataclass(frozen=True)
class GTAlignConfig:
    """The `gtalign` config section.

    Attributes:
      dataset: "embedded" (the offline set of `jaxalign.data.gtalign_set`) or a local data file (.jsonl,
        .json, .parquet) in the reference's or the flat schema (see `example_from_row`).
      eval_dataset: a separate local file for evaluation; without it a file is split with `seed`.
      num_train, num_eval: examples per split (0 = every row of a file).
      seed: data generation and file splits.
      reward: one of REWARD_MODES ("welfare" = sqrt(U L), the paper's Cobb-Douglas reward).
      llm_terms: "main" or "pareto" (with the frontier term PO), see the module docstring.
      normalize: "none" or "zscore" (per data source, within each batch).
      system_prompt: overrides the system prompt.
      response_words, full_words: the word bands of U's response term and L's length term.
      reasoning_scale: characters scale of U's brevity term.
    """

    dataset: str = "embedded"
    eval_dataset: str | None = None
    num_train: int = 256
    num_eval: int = 64
    seed: int = 0
    reward: str = "welfare"
    llm_terms: str = "main"
    normalize: str = "none"
    system_prompt: str | None = None
    response_words: tuple[float, float] = (20.0, 500.0)
    full_words: tuple[float, float] = (500.0, 1000.0)
    reasoning_scale: float = 500.0

    def __post_init__(self):
        for name, allowed in (("reward", REWARD_MODES), ("llm_terms", LLM_TERMS), ("normalize", NORMALIZATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"gtalign.{name}: unknown value {getattr(self, name)!r}; known: {', '.join(allowed)}")
        for name in ("num_train", "num_eval"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"gtalign.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.dataset == "embedded" and (self.num_train == 0 or self.num_eval == 0):
            raise ValueError("gtalign.num_train and gtalign.num_eval must be > 0 for the embedded set")
        for name in ("response_words", "full_words"):
            band = tuple(getattr(self, name))
            if len(band) != 2 or not 0 <= band[0] < band[1]:
                raise ValueError(f"gtalign.{name} must be (low, high) with 0 <= low < high, got {band!r}")
            object.__setattr__(self, name, (float(band[0]), float(band[1])))
        if not self.reasoning_scale > 0:
            raise ValueError(f"gtalign.reasoning_scale must be > 0, got {self.reasoning_scale!r}")

    @classmethod
    def from_dict(cls, section: Any) -> "GTAlignConfig":
        """From a dict, a (Frozen)ConfigDict or a GTAlignConfig; unknown keys are an error."""
        return config_section(cls, section, "gtalign")


def game_messages(question: str, *, first_question: str | None = None, system_prompt: str | None = None
                  ) -> list[dict[str, str]]:
    """The chat messages that ask the policy to play the game on `question`."""
    user = GAME_PREFIX.format(question=question)
    if first_question:
        user = EARLIER_QUESTION.format(question=first_question) + user
    return [{"role": "system", "content": SYSTEM_PROMPT if system_prompt is None else system_prompt},
            {"role": "user", "content": user}]


class _Features:
    """A picklable feature function bound to the config's length bands."""

    def __init__(self, cfg: GTAlignConfig):
        self.kwargs = dict(response_words=cfg.response_words, full_words=cfg.full_words,
                           reasoning_scale=cfg.reasoning_scale)

    def __call__(self, text: str, example: Mapping[str, Any]) -> dict[str, float]:
        return gtalign_features(text, example, **self.kwargs)


@register("gtalign")
class GTAlignMethod(Method):
    """Mutual-welfare rewards over the four-block game format (see the module docstring)."""

    def __init__(self, config: Any):
        super().__init__(GTAlignConfig.from_dict(config))
        self.data_report: dict[str, Any] = {}

    def _file_examples(self, path: str) -> list[Example]:
        return [example_from_row(row, i) for i, row in enumerate(load_rows(path))]

    def load_data(self) -> tuple[list[Example], list[Example]]:
        cfg = self.config
        if cfg.dataset == "embedded":
            train, held_out = make_gtalign_set(cfg.seed, cfg.num_train, cfg.num_eval)
        else:
            if not os.path.isfile(cfg.dataset):
                raise FileNotFoundError(f"gtalign.dataset: {cfg.dataset!r} is neither 'embedded' nor a file")
            examples = self._file_examples(cfg.dataset)
            if cfg.eval_dataset is not None:
                train, held_out = examples, self._file_examples(cfg.eval_dataset)
            else:
                order = np.random.default_rng(cfg.seed).permutation(len(examples))
                num_eval = cfg.num_eval or max(1, len(examples) // 10)
                if num_eval >= len(examples):
                    raise ValueError(f"gtalign: {cfg.dataset!r} has {len(examples)} rows, too few to hold out {num_eval}")
                held_out, train = [examples[i] for i in order[:num_eval]], [examples[i] for i in order[num_eval:]]
            train = train[: cfg.num_train or None]
            held_out = held_out[: cfg.num_eval or None]
        if not train or not held_out:
            raise ValueError(f"gtalign: empty split (train {len(train)}, eval {len(held_out)} examples)")
        sources = [e["data_source"] for e in train]
        self.data_report.update(num_train=len(train), num_eval=len(held_out),
                                sources={s: sources.count(s) for s in sorted(set(sources))})
        return train, held_out

    def messages(self, example: Example) -> list[dict[str, str]]:
        return game_messages(example["prompt"], first_question=example.get("first_question"),
                             system_prompt=self.config.system_prompt)

    @property
    def feature_fn(self) -> FeatureFn:
        return _Features(self.config)

    def rewards(self, features: Mapping[str, np.ndarray], examples: Sequence[Example]
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(examples)
        f = {k: np.asarray(features.get(k, np.full(n, np.nan)), np.float32) for k in FEATURES}
        rewards_n, user_n, llm_n = gtalign_rewards(f, mode=self.config.reward, llm_terms=self.config.llm_terms)
        rewards_n = np.asarray(rewards_n)
        components = {"welfare": np.asarray(jnp.sqrt(user_n * llm_n)), "user": np.asarray(user_n),
                      "llm": np.asarray(llm_n), "format": f["format"], "parse_ok": f["parse_ok"],
                      "answer": f["answer_llm"]}
        if self.config.normalize == "zscore":
            components["raw_reward"] = rewards_n
            rewards_n = zscore_by_source(rewards_n, [e["data_source"] for e in examples])
        return rewards_n, components

    def eval_metrics(self, features: Mapping[str, np.ndarray], examples: Sequence[Example], lengths_n: np.ndarray
                     ) -> dict[str, float]:
        n = len(examples)
        f = {k: np.nan_to_num(np.asarray(features.get(k, np.zeros(n)), np.float32)) for k in FEATURES}
        # The "welfare" reward is sqrt(U L), already 0 where the reply did not parse.
        welfare_n, user_n, llm_n = gtalign_rewards(f, mode="welfare", llm_terms=self.config.llm_terms)
        parsed = f["parse_ok"] > 0.5
        metrics = {
            "format": 100.0 * float(f["format"].mean()),
            "parsed": 100.0 * float(parsed.mean()),
            "answer": 100.0 * float(f["answer_llm"].mean()),
            "user_welfare": float(np.where(parsed, user_n, 0.0).mean()),
            "llm_welfare": float(np.where(parsed, llm_n, 0.0).mean()),
            "welfare": float(welfare_n.mean()),
            "welfare_consistent": 100.0 * float(f["welfare_consistent"].mean()),
            "response_ratio": float(f["response_ratio"].mean()),
            "length": float(np.mean(lengths_n)),
        }
        metrics.update({f"action_{a}": 100.0 * float(f[f"action_{a}"].mean()) for a in ACTIONS})
        for source in sorted({e["data_source"] for e in examples}):
            rows = np.array([e["data_source"] == source for e in examples])
            metrics[f"answer_{source}"] = 100.0 * float(f["answer_llm"][rows].mean())
        return metrics
