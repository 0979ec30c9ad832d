"""The embedded offline exam set: value-weighted arithmetic exams generated from a seed.

RLEV needs questions with human point values inside exams; no such data is reachable offline, so this
module writes exams in code. Each exam holds 20-36 short questions (arithmetic and one- or two-step word
problems, all with small non-negative integer answers), and the exam total is the sum of its points, so
v = points / total varies a lot and is right-skewed, like the paper's data.

A question's points are drawn independently of its difficulty (from a right-skewed table, `POINTS`), so
within an exam high and low values both fall on easy and hard questions. Value is then not a proxy for
difficulty: a model solves about as many of the most valuable questions as of the others, and a reward that
weights by value has correct answers to act on at every value. (If points grew with difficulty, a weak
model would never solve the valuable questions and value weighting would have nothing to reinforce.) Each
question still carries its difficulty level, the WebInstruct label, for the weak-value sources; on this set
those weak values are uninformative about the true ones by construction.

Train and held-out exams come from separate random streams derived from the seed: same seed, same data, and
the training split does not depend on the held-out size. Held-out questions never repeat a training
question's text.
"""

from __future__ import annotations

import random
from typing import Any, Callable

SOURCE = "embedded_exam"

LEVELS = ("primary school", "junior high school", "senior high school", "university", "phd")
"""Difficulty levels (the WebInstruct labels, so weak values work on this set too)."""

_LEVEL_WEIGHTS = (0.34, 0.26, 0.2, 0.12, 0.08)

POINTS = ((1, 0.28), (2, 0.26), (3, 0.18), (5, 0.13), (8, 0.08), (12, 0.05), (20, 0.02))
"""(points, probability): a question's points, drawn independently of its difficulty level."""

_NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kim", "Leo", "Mia", "Noor")
_THINGS = ("apples", "pens", "books", "coins", "cards", "eggs", "shells", "stamps", "marbles", "cups")

Question = tuple[str, int]


def _add(rng: random.Random) -> Question:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"What is {a} + {b}?", a + b


def _subtract(rng: random.Random) -> Question:
    a = rng.randint(5, 19)
    b = rng.randint(1, a - 1)
    return f"What is {a} - {b}?", a - b


def _multiply(rng: random.Random) -> Question:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"What is {a} times {b}?", a * b


def _add_two_digit(rng: random.Random) -> Question:
    a, b = rng.randint(10, 49), rng.randint(10, 49)
    return f"What is {a} + {b}?", a + b


def _word_gain(rng: random.Random) -> Question:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(2, 12), rng.randint(2, 9)
    return f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b


def _word_loss(rng: random.Random) -> Question:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a = rng.randint(6, 20)
    b = rng.randint(1, a - 1)
    return f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?", a - b


def _word_groups(rng: random.Random) -> Question:
    thing = rng.choice(_THINGS)
    a, b = rng.randint(2, 9), rng.randint(2, 6)
    return f"A box holds {a} {thing}. How many {thing} are in {b} boxes?", a * b


def _three_terms(rng: random.Random) -> Question:
    a, b = rng.randint(5, 20), rng.randint(1, 9)
    c = rng.randint(1, a + b - 1)
    return f"What is {a} + {b} - {c}?", a + b - c


def _multiply_add(rng: random.Random) -> Question:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
    return f"What is {a} times {b} plus {c}?", a * b + c


def _share(rng: random.Random) -> Question:
    thing = rng.choice(_THINGS)
    each, friends = rng.randint(2, 9), rng.randint(2, 6)
    return (
        f"{each * friends} {thing} are shared equally by {friends} friends. How many does each friend get?",
        each,
    )


def _bracket(rng: random.Random) -> Question:
    a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 6)
    return f"What is ({a} + {b}) times {c}?", (a + b) * c


def _two_step_word(rng: random.Random) -> Question:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    packs, per_pack = rng.randint(2, 6), rng.randint(3, 8)
    given = rng.randint(1, packs * per_pack - 1)
    return (
        f"{name} buys {packs} packs of {per_pack} {thing} and gives away {given}. How many {thing} are left?",
        packs * per_pack - given,
    )


_GENERATORS: dict[str, tuple[Callable[[random.Random], Question], ...]] = {
    "primary school": (_add, _subtract),
    "junior high school": (_multiply, _add_two_digit, _word_gain),
    "senior high school": (_word_loss, _word_groups, _three_terms),
    "university": (_multiply_add, _share),
    "phd": (_bracket, _two_step_word),
}


def _exam(rng: random.Random, exam_id: str, avoid_prompts: set[str]) -> list[dict[str, Any]]:
    num_questions = rng.randint(20, 36)
    drafts = []
    while len(drafts) < num_questions:
        level = rng.choices(LEVELS, weights=_LEVEL_WEIGHTS)[0]
        prompt, answer = rng.choice(_GENERATORS[level])(rng)
        if prompt in avoid_prompts or any(prompt == draft[1] for draft in drafts):
            continue
        points = rng.choices([p for p, _ in POINTS], weights=[w for _, w in POINTS])[0]
        drafts.append((level, prompt, answer, points))
    total = float(sum(points for *_, points in drafts))
    return [
        {
            "prompt": prompt,
            "answer": str(answer),
            "score": float(points),
            "total": total,
            "value": points / total,
            "difficulty": level,
            "exam_id": exam_id,
            "question_index": position,
            "source": SOURCE,
        }
        for position, (level, prompt, answer, points) in enumerate(drafts)
    ]


def _split(seed: int, split: str, size: int, avoid_prompts: set[str]) -> list[dict[str, Any]]:
    rng = random.Random(f"jaxalign-embedded-exam/{seed}/{split}")
    examples: list[dict[str, Any]] = []
    exam_number = 0
    while len(examples) < size:
        examples.extend(_exam(rng, f"{split}-{exam_number:04d}", avoid_prompts))
        exam_number += 1
    # The last exam may be cut short; its questions keep their value (their share of the full exam).
    return examples[:size]


def make_exam_set(
    seed: int = 0, num_train: int = 512, num_eval: int = 128
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_out) examples of the embedded exam set; deterministic in `seed`."""
    for name, size in (("num_train", num_train), ("num_eval", num_eval)):
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"{name} must be an int >= 0, got {size!r}")
    train = _split(seed, "train", num_train, set())
    held_out = _split(seed, "eval", num_eval, {example["prompt"] for example in train})
    return train, held_out
