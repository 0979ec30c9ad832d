"""WaltzRL's prompts: WildJailbreak and OR-Bench rows, the embedded offline set, and train/held-out splits.

An example is a dict with
  prompt (str)            the user request;
  harmful_prompt (bool)   the data source's label: WaltzRL takes prompt harmfulness from where a prompt
                          comes from (WildJailbreak harmful types, OR-Bench-Toxic), never from a judge;
  source (str)            "wildjailbreak", "orbench" or "embedded";
  category (str)          when the source has one (OR-Bench, the embedded set);
and, for rows read from a dataset, `row_index` (the row's position in what was loaded) and, for
WildJailbreak, `data_type`.

Schemas:
  * WildJailbreak (`allenai/wildjailbreak`): `vanilla`, `adversarial`, `data_type`, one of
    WILDJAILBREAK_TYPES. The prompt is `adversarial` for the adversarial types when it is non-empty, else
    `vanilla` (the eval configuration has no `vanilla` column: its adversarial rows need `adversarial`).
    `harmful_prompt` is True for the *_harmful types. Empty cells read back as None or NaN count as empty.
  * OR-Bench (`bench-llm/or-bench`): `prompt`, `category`. OR-Bench-80K and OR-Bench-Hard-1K are benign
    requests that look borderline (`harmful=False`); the OR-Bench-Toxic configuration is harmful
    (`harmful=True`).

A malformed row (missing or non-text fields, an unknown data_type, an empty prompt) raises
`InvalidRowError` naming the row index and the problem, or, with `skip_malformed=True`, is skipped and
counted in the returned `RowReport`.

`load_waltzrl_data` builds the (train, held_out) example lists of a run from named sources; see its
docstring. Everything here is deterministic: the same arguments give the same lists.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from typing import Any, Callable, Iterable, Mapping, Sequence

from jaxalign.data.loaders import load_rows
from jaxalign.data.schemas import InvalidRowError
from jaxalign.methods.waltzrl.embedded import embedded_split

Example = dict[str, Any]

WILDJAILBREAK_TYPES = ("vanilla_harmful", "vanilla_benign", "adversarial_harmful", "adversarial_benign")
PAPER_WILDJAILBREAK_TYPES = ("adversarial_harmful",)
"""The WildJailbreak data types the paper trains and evaluates on ("adversarial attack prompts")."""

SOURCES = ("embedded", "wildjailbreak", "orbench")


@dataclasses.dataclass(frozen=True)
class RowReport:
    """How many rows were read, kept, filtered out by data type and skipped as malformed."""

    num_rows: int
    num_kept: int
    num_malformed: int
    num_filtered: int = 0
    malformed_reasons: tuple[str, ...] = ()
    """The first 20 problems, each naming its row."""


# ---------------------------------------------------------------------------------------------------------
# Row parsers


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _optional_text(row: Mapping[str, Any], field: str) -> str | None:
    """The stripped text of `field`, or None when it is absent or empty; any other type is an error."""
    value = row.get(field)
    if _is_empty(value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} is {type(value).__name__}, expected a string")
    return value.strip()


def _parse(rows: Iterable[Any], parse: Callable[[Mapping[str, Any], int], Example | None], schema: str,
           skip_malformed: bool) -> tuple[list[Example], RowReport]:
    rows = list(rows)
    examples, reasons, filtered = [], [], 0
    for index, row in enumerate(rows):
        try:
            if not isinstance(row, Mapping):
                raise ValueError(f"row is {type(row).__name__}, expected a dict")
            example = parse(row, index)
        except ValueError as exc:
            message = f"{schema} row {index}: {exc}"
            if not skip_malformed:
                raise InvalidRowError(
                    f"{message} (fix the row, or pass skip_malformed=True to skip such rows)") from None
            reasons.append(message)
            continue
        if example is None:
            filtered += 1
        else:
            examples.append(example)
    return examples, RowReport(len(rows), len(examples), len(reasons), filtered, tuple(reasons[:20]))


def wildjailbreak_examples(
    rows: Iterable[Mapping[str, Any]],
    *,
    data_types: Sequence[str] | None = None,
    skip_malformed: bool = False,
    source: str = "wildjailbreak",
) -> tuple[list[Example], RowReport]:
    """Examples from rows in the WildJailbreak schema (see the module docstring).

    Args:
      rows: dicts with `vanilla`, `adversarial` and `data_type`.
      data_types: keep only rows of these data types (None keeps all four; the paper keeps
        `PAPER_WILDJAILBREAK_TYPES`). Rows of other (valid) types are counted as filtered.
      skip_malformed: skip and count malformed rows instead of raising `InvalidRowError`.
      source: the examples' `source` field.
    """
    keep = _check_data_types(data_types)

    def parse(row: Mapping[str, Any], index: int) -> Example | None:
        data_type = row.get("data_type")
        if _is_empty(data_type):
            raise ValueError("missing field 'data_type'")
        if data_type not in WILDJAILBREAK_TYPES:
            raise ValueError(f"unknown data_type {data_type!r}; known: {', '.join(WILDJAILBREAK_TYPES)}")
        if data_type not in keep:
            return None
        vanilla, adversarial = _optional_text(row, "vanilla"), _optional_text(row, "adversarial")
        if data_type.startswith("adversarial"):
            prompt = adversarial or vanilla
            if prompt is None:
                raise ValueError(f"{data_type} row has an empty prompt: fields 'adversarial' and 'vanilla' are both "
                                 "missing or empty")
        else:
            prompt = vanilla
            if prompt is None:
                raise ValueError(f"{data_type} row has an empty prompt: field 'vanilla' is missing or empty")
        return {"prompt": prompt, "harmful_prompt": data_type.endswith("_harmful"), "source": source,
                "data_type": data_type, "row_index": index}

    return _parse(rows, parse, "wildjailbreak", skip_malformed)


def orbench_examples(
    rows: Iterable[Mapping[str, Any]],
    *,
    harmful: bool = False,
    skip_malformed: bool = False,
    source: str = "orbench",
) -> tuple[list[Example], RowReport]:
    """Examples from rows in the OR-Bench schema (`prompt`, and `category` when present).

    Args:
      harmful: every example's `harmful_prompt`: False for OR-Bench-80K and OR-Bench-Hard-1K (benign but
        borderline requests), True for OR-Bench-Toxic.
      skip_malformed: skip and count malformed rows instead of raising `InvalidRowError`.
      source: the examples' `source` field.
    """
    if not isinstance(harmful, bool):
        raise TypeError(f"harmful must be a bool, got {harmful!r}")

    def parse(row: Mapping[str, Any], index: int) -> Example:
        prompt = _optional_text(row, "prompt")
        if prompt is None:
            raise ValueError("empty prompt: field 'prompt' is missing or empty")
        example = {"prompt": prompt, "harmful_prompt": harmful, "source": source, "row_index": index}
        category = _optional_text(row, "category")
        if category is not None:
            example["category"] = category
        return example

    return _parse(rows, parse, "orbench", skip_malformed)


def _check_data_types(data_types: Sequence[str] | None) -> tuple[str, ...]:
    if data_types is None:
        return WILDJAILBREAK_TYPES
    if isinstance(data_types, str):
        data_types = (data_types,)
    data_types = tuple(data_types)
    unknown = [t for t in data_types if t not in WILDJAILBREAK_TYPES]
    if unknown or not data_types:
        raise ValueError(f"data_types must be a non-empty list of {', '.join(WILDJAILBREAK_TYPES)}; got {data_types!r}")
    return data_types


# ---------------------------------------------------------------------------------------------------------
# Where a source's rows come from


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where the rows of one source (WildJailbreak or OR-Bench) come from.

    Attributes:
      source: what `jaxalign.data.loaders.load_rows` reads: a local .jsonl/.json/.parquet/.csv file, a local
        folder laid out as a `datasets` repository, a hub dataset name (from the local cache when offline),
        or `tfds:<name>`.
      name: the dataset configuration, e.g. "train" or "eval" for `allenai/wildjailbreak`, "or-bench-80k",
        "or-bench-hard-1k" or "or-bench-toxic" for `bench-llm/or-bench`.
      split: the split to read (ignored for a single file).
      eval_source, eval_name, eval_split: a separate location for the held-out rows. When any of them is
        set, held-out rows are read from (eval_source or source, eval_name or name, eval_split or split) and
        nothing is split off the training rows; training rows whose prompt is also held out are dropped
        (the paper de-duplicates OR-Bench-80K against OR-Bench-Hard-1K).
      data_types: WildJailbreak only: the data types to keep (default `PAPER_WILDJAILBREAK_TYPES`).
      harmful: OR-Bench only: the prompts' `harmful_prompt`. None (default) means True exactly when the
        configuration name (or, without one, the source) contains "toxic".
    """

    source: str
    name: str | None = None
    split: str = "train"
    eval_source: str | None = None
    eval_name: str | None = None
    eval_split: str | None = None
    data_types: tuple[str, ...] | None = None
    harmful: bool | None = None

    @property
    def has_eval_location(self) -> bool:
        return any(v is not None for v in (self.eval_source, self.eval_name, self.eval_split))

    def eval_location(self) -> tuple[str, str | None, str]:
        return (self.eval_source or self.source, self.eval_name or self.name, self.eval_split or self.split)


_SPEC_FIELDS = {f.name for f in dataclasses.fields(SourceSpec)}
_KIND_ONLY_FIELDS = {"wildjailbreak": {"harmful"}, "orbench": {"data_types"}}


def source_spec(kind: str, value: Any) -> SourceSpec:
    """A `SourceSpec` for source `kind` from a string (the `source`), a mapping of its fields (a dict or a
    (Frozen)ConfigDict) or a SourceSpec."""
    if kind not in ("wildjailbreak", "orbench"):
        raise ValueError(f"no row source {kind!r}; known: wildjailbreak, orbench")
    if isinstance(value, str):
        value = {"source": value}
    elif isinstance(value, SourceSpec):
        value = dataclasses.asdict(value)
    elif hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise TypeError(f"{kind}: expected a source string or a mapping of {sorted(_SPEC_FIELDS)}, got {value!r}")
    allowed = _SPEC_FIELDS - _KIND_ONLY_FIELDS[kind]
    wrong = sorted(k for k in value if k not in allowed and value[k] is not None)
    if wrong:
        raise ValueError(f"{kind}: unknown keys {wrong}; known keys: {sorted(allowed)}")
    fields = {k: v for k, v in value.items() if k in allowed}
    if not isinstance(fields.get("source"), str) or not fields["source"]:
        raise ValueError(f"{kind}: 'source' must be a local data file, a dataset folder, a hub dataset name or "
                         f"tfds:<name>; got {fields.get('source')!r}")
    if kind == "wildjailbreak":
        fields["data_types"] = _check_data_types(fields.get("data_types") or PAPER_WILDJAILBREAK_TYPES)
    elif fields.get("harmful") is None:
        fields["harmful"] = "toxic" in (fields.get("name") or os.path.basename(fields["source"])).lower()
    return SourceSpec(**fields)


# ---------------------------------------------------------------------------------------------------------
# Building a run's splits


def _key(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


def _dedupe(examples: list[Example]) -> tuple[list[Example], int]:
    seen, kept = set(), []
    for example in examples:
        key = _key(example["prompt"])
        if key not in seen:
            seen.add(key)
            kept.append(example)
    return kept, len(examples) - len(kept)


def _sizes(available: int, max_examples: int, eval_fraction: float) -> tuple[int, int]:
    """(total, held-out) sizes for a pool of `available` examples."""
    total = available if max_examples == 0 else min(available, max_examples)
    return total, math.ceil(eval_fraction * total)


def _load_source(kind: str, spec: SourceSpec, *, max_examples: int, eval_fraction: float, seed: int,
                 skip_malformed: bool, report: dict[str, Any]) -> tuple[list[Example], list[Example]]:
    def read(source: str, name: str | None, split: str, part: str) -> list[Example]:
        rows = load_rows(source, split=split, name=name)
        if kind == "wildjailbreak":
            examples, rows_report = wildjailbreak_examples(rows, data_types=spec.data_types,
                                                           skip_malformed=skip_malformed)
        else:
            examples, rows_report = orbench_examples(rows, harmful=spec.harmful, skip_malformed=skip_malformed)
        examples, duplicates = _dedupe(examples)
        report[f"{part}_rows"] = dict(dataclasses.asdict(rows_report), duplicates=duplicates)
        random.Random(f"waltzrl-{kind}-{part}-{seed}").shuffle(examples)
        return examples

    pool = read(spec.source, spec.name, spec.split, "train")
    if spec.has_eval_location:
        held_out = read(*spec.eval_location(), "eval")
        held_keys = {_key(e["prompt"]) for e in held_out}
        before = len(pool)
        pool = [e for e in pool if _key(e["prompt"]) not in held_keys]
        report["train_rows"]["overlap_with_eval"] = before - len(pool)
        if max_examples:
            total, num_eval = _sizes(max_examples, max_examples, eval_fraction)
            train, held_out = pool[: total - num_eval], held_out[:num_eval]
        else:
            train = pool
    else:
        total, num_eval = _sizes(len(pool), max_examples, eval_fraction)
        held_out, train = pool[:num_eval], pool[num_eval:total]
    if not train:
        raise ValueError(f"waltzrl {kind}: no training examples left from {spec.source!r} ({report}); check the "
                         "source, data_types, max_examples and eval_fraction")
    return train, held_out


def load_waltzrl_data(
    dataset: str | Sequence[str] = "embedded",
    *,
    wildjailbreak: Any = None,
    orbench: Any = None,
    max_examples: int = 0,
    eval_fraction: float = 0.2,
    seed: int = 0,
    skip_malformed: bool = False,
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """(train, held_out, report) for a WaltzRL run.

    Args:
      dataset: the sources to use, a name or "+"-joined names (or a list) from SOURCES, e.g. "embedded" or
        "wildjailbreak+orbench" (the paper's mix). Training examples come source by source in this order
        (the training loop shuffles), held-out examples likewise.
      wildjailbreak, orbench: where those sources' rows come from, required when named in `dataset`: a
        source string (local file, dataset folder, hub name or `tfds:<name>`) or a mapping of `SourceSpec`
        fields, e.g. {"source": "allenai/wildjailbreak", "name": "train", "eval_name": "eval"}.
      max_examples: per source, at most this many examples in total (0 = all), of which
        ceil(eval_fraction * max_examples) are held out and the rest train. The embedded set keeps its fixed
        split (`embedded.embedded_split`) and takes the first ones of each part.
      eval_fraction: the held-out share of a source whose held-out rows are split off its training rows
        (in [0, 1)). With a separate eval location (see `SourceSpec`) or for the embedded set it only sizes
        the held-out part when `max_examples` is set.
      seed: the shuffle that decides which rows of a source are held out and which are kept.
      skip_malformed: skip and count malformed rows instead of raising `InvalidRowError`.

    No held-out prompt is also a training prompt (compared after collapsing whitespace and case), and
    repeated prompts within a source are kept once. `report` holds per-source row counts (read, kept,
    filtered, malformed, duplicates) and the split sizes.
    """
    names = dataset.split("+") if isinstance(dataset, str) else list(dataset)
    names = [n.strip() for n in names]
    if not names or any(n not in SOURCES for n in names) or len(set(names)) != len(names):
        raise ValueError(f"waltzrl dataset {dataset!r}: expected distinct names from {', '.join(SOURCES)}, "
                         "joined by '+', e.g. 'embedded' or 'wildjailbreak+orbench'")
    if not (isinstance(max_examples, int) and max_examples >= 0):
        raise ValueError(f"max_examples must be an int >= 0 (0 = all), got {max_examples!r}")
    if not (isinstance(eval_fraction, (int, float)) and 0 <= eval_fraction < 1):
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    specs = {"wildjailbreak": wildjailbreak, "orbench": orbench}
    for kind, value in specs.items():
        if value is not None and kind not in names:
            raise ValueError(f"waltzrl: {kind} is configured but dataset {dataset!r} does not name it; add "
                             f"'+{kind}' to the dataset or drop the {kind} setting")
    train, held_out, report = [], [], {}
    for name in names:
        source_report: dict[str, Any] = {}
        if name == "embedded":
            part_train, part_eval = embedded_split()
            if max_examples:
                total, num_eval = _sizes(max_examples, max_examples, eval_fraction)
                part_train, part_eval = part_train[: total - num_eval], part_eval[:num_eval]
        else:
            if specs[name] is None:
                raise ValueError(f"waltzrl dataset names {name!r} but no {name} source is set; set {name} to a "
                                 "local file, a hub dataset name or tfds:<name> (or a mapping of SourceSpec fields)")
            part_train, part_eval = _load_source(
                name, source_spec(name, specs[name]), max_examples=max_examples, eval_fraction=eval_fraction,
                seed=seed, skip_malformed=skip_malformed, report=source_report)
        source_report.update(num_train=len(part_train), num_eval=len(part_eval))
        report[name] = source_report
        train.extend(part_train)
        held_out.extend(part_eval)
    held_keys = {_key(e["prompt"]) for e in held_out}
    before = len(train)
    train = [e for e in train if _key(e["prompt"]) not in held_keys]
    report.update(num_train=len(train), num_eval=len(held_out), dropped_cross_source_overlap=before - len(train),
                  num_harmful_train=sum(e["harmful_prompt"] for e in train),
                  num_harmful_eval=sum(e["harmful_prompt"] for e in held_out))
    return train, held_out, report
