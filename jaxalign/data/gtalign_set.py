"""The embedded offline GTAlign set: definite and vague questions whose right action is known by rule.

GTAlign's data (MATH, AmbigQA, WildGuard, writing) is judged by a large model; offline, with no judge, this
module writes questions in code whose answer terms rules can check:

* source "math": definite word problems with an integer answer (A = the response's answer is correct);
* source "ambiguity": the same kind of problem either complete (`ambiguous` False: the right action is a
  direct answer) or with a quantity left out or a request too vague to act on (`ambiguous` True: the right
  action asks, CQ or AQ).

Same seed, same data; held-out questions never repeat a training question.
"""

from __future__ import annotations

import random
from typing import Any

_NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kim", "Leo", "Mia", "Noor")
_THINGS = ("apples", "pens", "books", "coins", "cards", "eggs", "shells", "stamps", "marbles", "cups")
_VAGUE_REQUESTS = (
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
)
_VAGUE_TAILS = ("", " Please be quick.", " I need it today.", " Thanks!", " It is for {name}.")


def _problem(rng: random.Random) -> tuple[str, str, int]:
    """(definite question, the same with one quantity left out, answer)."""
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(2, 40), rng.randint(2, 20)
    kind = rng.randrange(3)
    if kind == 0:
        return (f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
                f"{name} has some {thing} and gets {b} more. How many {thing} does {name} have now?", a + b)
    if kind == 1:
        a += b
        return (f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?",
                f"{name} had {a} {thing} and gave some away. How many {thing} are left?", a - b)
    a = rng.randint(2, 9)
    return (f"{name} packs {b} boxes with {a} {thing} in each box. How many {thing} is that in total?",
            f"{name} packs a few boxes with {a} {thing} in each box. How many {thing} is that in total?", a * b)


def _example(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    definite, vague, answer = _problem(rng)
    if roll < 0.4:
        return {"prompt": definite, "data_source": "math", "answer": str(answer), "ambiguous": False}
    if roll < 0.6:
        return {"prompt": definite, "data_source": "ambiguity", "answer": str(answer), "ambiguous": False}
    if roll < 0.8:
        return {"prompt": vague, "data_source": "ambiguity", "answer": "", "ambiguous": True}
    request = rng.choice(_VAGUE_REQUESTS) + rng.choice(_VAGUE_TAILS).format(name=rng.choice(_NAMES))
    return {"prompt": request, "data_source": "ambiguity", "answer": "", "ambiguous": True}


def make_gtalign_set(seed: int = 0, num_train: int = 256, num_eval: int = 64
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_out) examples; deterministic in `seed`, no held-out prompt repeats a training one."""
    for name, size in (("num_train", num_train), ("num_eval", num_eval)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be an int >= 1, got {size!r}")
    splits, seen = [], set()
    for split, size in (("train", num_train), ("eval", num_eval)):
        rng = random.Random(f"gtalign-{seed}-{split}")
        examples, attempts = [], 0
        while len(examples) < size:
            attempts += 1
            if attempts > 100 * size:
                raise ValueError(f"cannot draw {size} distinct {split} questions; ask for fewer")
            example = _example(rng)
            if example["prompt"] in seen:
                continue
            seen.add(example["prompt"])
            examples.append(dict(example, source="embedded_gtalign", index=len(examples)))
        splits.append(examples)
    return splits[0], splits[1]
