"""Datasets: generic loaders (Hugging Face datasets, TFDS, local files) and schema parsers. Each method's
embedded offline set lives with the method (`jaxalign/methods/<name>/`)."""

from jaxalign.data.loaders import load_rows, load_tfds_rows
from jaxalign.data.schemas import (
    DIFFICULTY_POINTS,
    SCHEMAS,
    InvalidRowError,
    ParseReport,
    detect_schema,
    normalise_difficulty,
    parse_rows,
    prompt_from_query,
    weak_value,
)

__all__ = [
    "DIFFICULTY_POINTS",
    "SCHEMAS",
    "InvalidRowError",
    "ParseReport",
    "detect_schema",
    "load_rows",
    "load_tfds_rows",
    "normalise_difficulty",
    "parse_rows",
    "prompt_from_query",
    "weak_value",
]
