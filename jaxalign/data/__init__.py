"""Datasets: loaders (Hugging Face datasets, TFDS), schema parsers and the embedded offline exam set."""

from jaxalign.data.exam import LEVELS, make_exam_set
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
    "LEVELS",
    "SCHEMAS",
    "InvalidRowError",
    "ParseReport",
    "detect_schema",
    "load_rows",
    "load_tfds_rows",
    "make_exam_set",
    "normalise_difficulty",
    "parse_rows",
    "prompt_from_query",
    "weak_value",
]
