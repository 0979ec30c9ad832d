"""GTAlign's data: rows of a local file (the reference's schema or a flat one) and the embedded offline set.

The embedded set: GTAlign's data (MATH, AmbigQA, WildGuard, writing) is judged by a large model; offline, with
no judge, `make_gtalign_set` writes questions in code whose answer terms rules can check:

* source "math": definite word problems with an integer answer (A = the response's answer is correct);
* source "ambiguity": the same kind of problem either complete (`ambiguous` False: the right action is a
  direct answer) or with a quantity left out or a request too vague to act on (`ambiguous` True: the right
  action asks, CQ or AQ).

Same seed, same data. The held-out split is written with names and vague requests that the training side
never uses (`HELD_OUT`), so no held-out question can appear in a training split or in the SFT cold-start set
(`coldstart.py`) of any seed.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any, Mapping, MutableMapping

import numpy as np

from jaxalign.data import load_rows
from jaxalign.methods.gtalign.config import (
    AMBIGUITY_SOURCES,
    MATH_SOURCES,
    SAFETY_SOURCES,
    WRITING_SOURCES,
    GTAlignConfig,
)
from jaxalign.methods.gtalign.prompts import EARLIER_QUESTION, GAME_PREFIX
from jaxalign.train.samples import Example

# The embedded set


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The words one side of the embedded set is written with."""

    names: tuple[str, ...]
    vague_requests: tuple[str, ...]


TRAIN = Vocabulary(
    names=("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kim", "Leo", "Mia", "Noor"),
    vague_requests=(
        "Can you help me fix it?",
        "How long will it take?",
        "Which one should I choose?",
        "Is it worth it?",
        "What is the best way to do this?",
        "Can you make it shorter?",
        "How much should I bring?",
        "What time should we leave?",
        "Is this the right size?",
        "Can you check my numbers?",
    ),
)
HELD_OUT = Vocabulary(
    names=("Olga", "Pia", "Quinn", "Rosa", "Sami", "Tove"),
    vague_requests=(
        "Can you sort this out for me?",
        "Will it be enough?",
        "Which option is better?",
        "Should I do it now or later?",
        "Can you tidy this up?",
        "How many do I need?",
    ),
)
THINGS = ("apples", "pens", "books", "coins", "cards", "eggs", "shells", "stamps", "marbles", "cups")
_VAGUE_TAILS = ("", " Please be quick.", " I need it today.", " Thanks!", " It is for {name}.")


@dataclasses.dataclass(frozen=True)
class WordProblem:
    """A word problem of the embedded set: `kind` "more" (a + b), "away" (a - b) or "boxes" (b boxes of a)."""

    kind: str
    name: str
    thing: str
    a: int
    b: int
    definite: str
    incomplete: str
    """The same question with one quantity left out (a vague question)."""

    @property
    def answer(self) -> int:
        return {"more": self.a + self.b, "away": self.a - self.b, "boxes": self.a * self.b}[self.kind]


def word_problem(rng: random.Random, vocab: Vocabulary = TRAIN) -> WordProblem:
    """A definite word problem and its incomplete twin."""
    name, thing = rng.choice(vocab.names), rng.choice(THINGS)
    a, b = rng.randint(2, 40), rng.randint(2, 20)
    kind = rng.randrange(3)
    if kind == 0:
        return WordProblem(
            "more", name, thing, a, b,
            f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
            f"{name} has some {thing} and gets {b} more. How many {thing} does {name} have now?")
    if kind == 1:
        a += b
        return WordProblem(
            "away", name, thing, a, b,
            f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?",
            f"{name} had {a} {thing} and gave some away. How many {thing} are left?")
    a = rng.randint(2, 9)
    return WordProblem(
        "boxes", name, thing, a, b,
        f"{name} packs {b} boxes with {a} {thing} in each box. How many {thing} is that in total?",
        f"{name} packs a few boxes with {a} {thing} in each box. How many {thing} is that in total?")


def vague_request(rng: random.Random, vocab: Vocabulary = TRAIN) -> str:
    """A request too vague to act on, with an optional tail."""
    return rng.choice(vocab.vague_requests) + rng.choice(_VAGUE_TAILS).format(name=rng.choice(vocab.names))


def draw_example(rng: random.Random, vocab: Vocabulary = TRAIN) -> dict[str, Any]:
    """One example of the embedded set: 40% math, 20% clear, 20% incomplete, 20% vague requests."""
    roll = rng.random()
    problem = word_problem(rng, vocab)
    if roll < 0.4:
        return {"prompt": problem.definite, "data_source": "math", "answer": str(problem.answer), "ambiguous": False}
    if roll < 0.6:
        return {"prompt": problem.definite, "data_source": "ambiguity", "answer": str(problem.answer),
                "ambiguous": False}
    if roll < 0.8:
        return {"prompt": problem.incomplete, "data_source": "ambiguity", "answer": "", "ambiguous": True}
    return {"prompt": vague_request(rng, vocab), "data_source": "ambiguity", "answer": "", "ambiguous": True}


def make_gtalign_set(seed: int = 0, num_train: int = 256, num_eval: int = 64
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_out) examples; deterministic in `seed`; held-out questions are written with the `HELD_OUT`
    vocabulary, so they never repeat a training question (of any seed)."""
    for name, size in (("num_train", num_train), ("num_eval", num_eval)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be an int >= 1, got {size!r}")
    splits = []
    for split, size, vocab in (("train", num_train, TRAIN), ("eval", num_eval, HELD_OUT)):
        rng = random.Random(f"gtalign-{seed}-{split}")
        examples, seen, attempts = [], set(), 0
        while len(examples) < size:
            attempts += 1
            if attempts > 100 * size:
                raise ValueError(f"cannot draw {size} distinct {split} questions; ask for fewer")
            example = draw_example(rng, vocab)
            if example["prompt"] in seen:
                continue
            seen.add(example["prompt"])
            examples.append(dict(example, source="embedded_gtalign", index=len(examples)))
        splits.append(examples)
    return splits[0], splits[1]


# Local files


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


# The reference's multi-turn rows hold the whole conversation in ONE user message: "The user's initial question
# is" + "Question: <first question>", then directly its instruction block, which ends in "Question: <latest
# question>". Its block opens with the sentence below; ours (`prompts.py`) opens with GAME_PREFIX's own words.
_INITIAL_MARK = "The user's initial question is"
_QUESTION_MARK = "Question: "
_INSTRUCTION_OPENINGS = ("Now you need to answer the user's most recent question", GAME_PREFIX[:40])


def _questions_of(text: str) -> list[str]:
    """The user questions one user message holds: [first, latest] for the reference's multi-turn layout (and
    ours, `EARLIER_QUESTION`), [latest] otherwise. Text before the last "Question: " is an instruction block
    and is dropped."""
    latest = text.rsplit(_QUESTION_MARK, 1)[1].strip() if _QUESTION_MARK in text else text.strip()
    body = text.lstrip()
    for mark in (_INITIAL_MARK, EARLIER_QUESTION.split("{", 1)[0].strip()):
        if not body.startswith(mark):
            continue
        rest = body[len(mark):].lstrip()
        if rest.startswith(_QUESTION_MARK):
            rest = rest[len(_QUESTION_MARK):]
        cuts = [rest.find(opening) for opening in _INSTRUCTION_OPENINGS if opening in rest]
        if not cuts:
            raise ValueError(f"the user message starts with {mark!r} (a first question) but holds no known "
                             f"instruction block after it (one opening with {_INSTRUCTION_OPENINGS[0]!r} or "
                             f"{_INSTRUCTION_OPENINGS[1]!r})")
        first = rest[:min(cuts)].strip()
        return [first, latest] if first else [latest]
    return [latest]


def _ambiguity_label(truth: Any) -> bool:
    label = str(truth).strip()
    if label.startswith("multipleQAs") or label == "ambiguous":
        return True
    if label.startswith("singleAnswer") or label == "non_ambiguous":
        return False
    raise ValueError(f"ambiguity ground truth {label[:40]!r} is none of multipleQAs###..., singleAnswer###..., "
                     "ambiguous, non_ambiguous")


def _harm_label(source: str, truth: Any) -> bool:
    if source == "advbench":  # every AdvBench prompt is harmful; its ground truth is a target string
        return True
    label = str(truth).strip().lower()
    if label not in ("harmful", "unharmful"):
        raise ValueError(f"safety ground truth {str(truth)[:40]!r} is neither 'harmful' nor 'unharmful'")
    return label == "harmful"


_SOURCES = MATH_SOURCES + AMBIGUITY_SOURCES + WRITING_SOURCES + SAFETY_SOURCES


def example_from_row(row: Mapping[str, Any], index: int) -> Example:
    """A GTAlign example from a row in the reference's schema (`prompt` messages, `data_source`,
    `reward_model.ground_truth`, optional `extra_info.single_turn_prompt`) or a flat one (`question`,
    `data_source`, `ground_truth` or `answer`, optional `intent`). Writing rows keep their reference answer
    in `answer`, safety rows get `harmful` (ground truth "harmful"/"unharmful"; every AdvBench row is
    harmful); a stated intent goes to `intent` (what the judges are shown as the user's goal)."""
    source = row.get("data_source")
    if source not in _SOURCES:
        raise ValueError(f"row {index}: data_source {source!r} is not supported; supported: {', '.join(_SOURCES)} "
                         f"(writing and safety sources need gtalign.judge='model')")
    truth = row.get("ground_truth", row.get("answer"))
    if isinstance(row.get("reward_model"), Mapping):
        truth = row["reward_model"].get("ground_truth", truth)
    if truth is None:
        raise ValueError(f"row {index}: no ground truth (reward_model.ground_truth, ground_truth or answer)")
    try:
        turns = [q for t in _user_turns(row) for q in _questions_of(t)]
        ambiguous = source in AMBIGUITY_SOURCES and _ambiguity_label(truth)
        harmful = _harm_label(source, truth) if source in SAFETY_SOURCES else None
    except ValueError as err:
        raise ValueError(f"row {index}: {err}") from None
    example = {"prompt": turns[-1], "first_question": turns[0] if len(turns) > 1 else None, "data_source": source,
               "answer": str(truth) if source in MATH_SOURCES + WRITING_SOURCES else "", "ambiguous": ambiguous,
               "index": index}
    if harmful is not None:
        example["harmful"] = harmful
    extra = row.get("extra_info")
    intent = extra.get("single_turn_prompt") if isinstance(extra, Mapping) else row.get("intent")
    if isinstance(intent, str) and intent.strip():
        example["intent"] = intent.strip()
    return example


def _file_examples(path: str) -> list[Example]:
    return [example_from_row(row, i) for i, row in enumerate(load_rows(path))]


def load_splits(cfg: GTAlignConfig, report: MutableMapping[str, Any]) -> tuple[list[Example], list[Example]]:
    """(train, held_out) examples of `cfg.dataset`, cut to `num_train`/`num_eval` (0 = every row); the
    sizes and the training examples per data source go to `report`."""
    if cfg.dataset == "embedded":
        train, held_out = make_gtalign_set(cfg.seed, cfg.num_train, cfg.num_eval)
    else:
        if not os.path.isfile(cfg.dataset):
            raise FileNotFoundError(f"gtalign.dataset: {cfg.dataset!r} is neither 'embedded' nor a file")
        examples = _file_examples(cfg.dataset)
        if cfg.eval_dataset is not None:
            train, held_out = examples, _file_examples(cfg.eval_dataset)
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
    report.update(num_train=len(train), num_eval=len(held_out),
                  sources={s: sources.count(s) for s in sorted(set(sources))})
    return train, held_out
