"""Row loading from Hugging Face `datasets` (local files, local folders, hub names) and TFDS.

Rows come back as plain Python dicts; the schema parsers in `jaxalign.data.schemas` turn them into
examples. The same call serves a local JSON/JSONL/parquet/CSV file and a hub dataset name, so tests run on
small local files in the real schemas and training runs can point at a pre-downloaded copy.
"""

from __future__ import annotations

import os
from typing import Any

_EXTENSION_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}


def builder_for_file(path: str) -> str:
    """The `datasets` builder name for a local data file, from its extension."""
    extension = os.path.splitext(path)[1].lower()
    try:
        return _EXTENSION_BUILDERS[extension]
    except KeyError:
        known = ", ".join(sorted(_EXTENSION_BUILDERS))
        raise ValueError(f"cannot load {path!r}: unknown data file extension {extension!r} (known: {known})") from None


TFDS_PREFIX = "tfds:"


def load_rows(
    source: str,
    *,
    split: str = "train",
    name: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Loads rows of a dataset as dicts.

    Args:
      source: a local data file (.json, .jsonl, .parquet, .csv; the whole file is the split), a local
        folder laid out as a `datasets` repository, a hub dataset name (read from the local cache when
        offline), or `tfds:<name>` for a TensorFlow Datasets dataset (see `load_tfds_rows`).
      split: the split to read (ignored for a single file).
      name: the dataset configuration (subset) name, if the dataset has several.
      limit: keep only the first `limit` rows.
    """
    if source.startswith(TFDS_PREFIX):
        return load_tfds_rows(source[len(TFDS_PREFIX):], split=split, limit=limit)
    import datasets

    if os.path.isfile(source):
        dataset = datasets.load_dataset(builder_for_file(source), data_files={"train": source}, split="train")
    else:
        if os.path.sep in source and not os.path.exists(source):
            raise FileNotFoundError(f"dataset path {source!r} does not exist")
        dataset = datasets.load_dataset(source, name, split=split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [dict(row) for row in dataset]


def load_tfds_rows(
    name: str, *, split: str = "train", data_dir: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Loads rows of a TensorFlow Datasets dataset as dicts (bytes decoded to str).

    Needs the optional `tensorflow-datasets` package (`pip install jaxalign[tfds]`).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(
            "loading a TFDS dataset needs the optional 'tensorflow-datasets' package; install it with "
            "`pip install jaxalign[tfds]` or load the data through Hugging Face datasets instead"
        ) from None
    dataset = tfds.load(name, split=split, data_dir=data_dir)
    rows = []
    for row in tfds.as_numpy(dataset):
        rows.append({key: _decode_tfds_value(value) for key, value in row.items()})
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _decode_tfds_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return value
