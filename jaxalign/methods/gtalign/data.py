"""GTAlign's data: rows of a local file (the reference's schema or a flat one) and the embedded offline set.

The embedded set: GTAlign's data (MATH, AmbigQA, WildGuard, writing) is judged by a large model; offline, with
no judge, `make_gtalign_set` writes questions in code whose answer terms rules can check:

* source "math": definite word problems with an integer answer (A = the response's answer is correct);
* source "ambiguity": the same kind of problem either complete (`ambiguous` False: the right action is a
  direct answer) or with a quantity left out or a request too vague to act on (`ambiguous` True: the right
  action asks, CQ or AQ).

Same seed, same data; held-out questions never repeat a training question.
"""

from __future__ import annotations

import os
import random
from typing import Any, Mapping, MutableMapping

import numpy as np

from jaxalign.data import load_rows
from jaxalign.methods.gtalign.config import AMBIGUITY_SOURCES, MATH_SOURCES, GTAlignConfig
from jaxalign.train.samples import Example

# The embedded set

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
