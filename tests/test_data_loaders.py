"""Data: RLEV and WebInstruct-verified schemas from local files, malformed rows, the embedded exam set."""

import json

import numpy as np
import pytest

from jaxalign.methods.rlev import make_exam_set

from jaxalign.data import (
    DIFFICULTY_POINTS,
    InvalidRowError,
    load_rows,
    load_tfds_rows,
    parse_rows,
    prompt_from_query,
    weak_value,
)

RLEV_ROWS = [
    {
        "query": json.dumps(
            [{"role": "system", "content": "You are a helpful assistant."},
             {"role": "user", "content": "What is 2 + 3?"}]
        ),
        "label": "5",
        "score": 3,
        "total": 150,
    },
    {"query": "Which option is a prime? A. 4 B. 7", "label": "B", "score": 10.0, "total": 100.0},
]

WEBINSTRUCT_ROWS = [
    {"question": "Compute 7 * 8.", "answer": "56", "difficulty": "Primary School", "category": "Math"},
    {"question": "Integrate x dx from 0 to 2.", "answer": "2", "difficulty": "University", "category": "Math"},
    {"question": "Name a solution.", "answer": "x=1", "difficulty": "PhD", "category": "Math"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_rlev_schema_from_jsonl(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "rlev.jsonl", RLEV_ROWS))
    examples, report = parse_rows(rows, "auto")
    assert report.num_kept == 2 and report.num_skipped == 0
    first, second = examples
    assert first["prompt"] == "What is 2 + 3?" and first["query_system"] == "You are a helpful assistant."
    assert first["answer"] == "5" and first["value"] == pytest.approx(3 / 150)
    assert (first["score"], first["total"], first["source"]) == (3.0, 150.0, "rlev")
    assert second["prompt"].startswith("Which option") and second["value"] == pytest.approx(0.1)


def test_rlev_schema_from_parquet_and_json(tmp_path):
    import datasets

    rows_with_list_query = [dict(RLEV_ROWS[1]), dict(RLEV_ROWS[0])]
    rows_with_list_query[1]["query"] = json.loads(RLEV_ROWS[0]["query"])  # an already-decoded message list
    parquet = str(tmp_path / "rlev.parquet")
    datasets.Dataset.from_list([RLEV_ROWS[0], RLEV_ROWS[1]]).to_parquet(parquet)
    json_file = tmp_path / "rlev.json"
    json_file.write_text(json.dumps(rows_with_list_query))
    from_parquet, _ = parse_rows(load_rows(parquet), "rlev")
    from_json, _ = parse_rows(load_rows(str(json_file)), "rlev")
    assert [e["prompt"] for e in from_parquet] == ["What is 2 + 3?", "Which option is a prime? A. 4 B. 7"]
    assert [e["prompt"] for e in from_json] == ["Which option is a prime? A. 4 B. 7", "What is 2 + 3?"]
    assert load_rows(parquet, limit=1) == [RLEV_ROWS[0]]


def test_webinstruct_weak_values(tmp_path):
    rows = load_rows(write_jsonl(tmp_path / "web.jsonl", WEBINSTRUCT_ROWS))
    examples, _ = parse_rows(rows, "auto")
    assert [e["value"] for e in examples] == [0.01, 0.06, 0.08]
    assert [e["score"] for e in examples] == [1.0, 6.0, 8.0] and all(e["total"] == 100.0 for e in examples)
    assert examples[2]["difficulty"] == "phd" and examples[0]["source"] == "webinstruct"
    assert DIFFICULTY_POINTS == {"primary school": 1, "junior high school": 2, "senior high school": 4,
                                 "university": 6, "phd": 8}
    assert weak_value("Junior High School") == 0.02 and weak_value("senior high") == 0.04


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"label": "1", "score": 1, "total": 2}, "missing field 'query'"),
        ({"query": "   ", "label": "1", "score": 1, "total": 2}, "empty"),
        ({"query": "[]", "label": "1", "score": 1, "total": 2}, "no non-empty user message"),
        ({"query": "q", "score": 1, "total": 2}, "missing field 'label'"),
        ({"query": "q", "label": "1", "score": 0, "total": 2}, "score is 0.0"),
        ({"query": "q", "label": "1", "score": 3, "total": 2}, "score is 3.0"),
        ({"query": "q", "label": "1", "score": -1, "total": 2}, "score is -1.0"),
        ({"query": "q", "label": "1", "score": "lots", "total": 2}, "not a number"),
        ({"query": "q", "label": "1", "score": [1], "total": 2}, "expected a number"),
        ({"query": "q", "label": ["1"], "score": 1, "total": 2}, "expected a string"),
        ({"query": "q", "label": "1", "score": 1}, "missing field 'total'"),
    ],
)
def test_malformed_rlev_rows_name_the_row(bad_row, message):
    rows = [RLEV_ROWS[1], bad_row]
    with pytest.raises(InvalidRowError, match=r"rlev row 1: .*" + message):
        parse_rows(rows, "rlev")
    examples, report = parse_rows(rows, "rlev", skip_invalid=True)
    assert len(examples) == 1 and report.num_skipped == 1 and report.num_rows == 2
    assert report.skipped_reasons[0].startswith("rlev row 1:")


def test_malformed_webinstruct_rows_from_a_file(tmp_path):
    rows = WEBINSTRUCT_ROWS + [
        {"question": "q", "answer": "1", "difficulty": "kindergarten", "category": "Math"},
        {"question": "", "answer": "1", "difficulty": "PhD", "category": "Math"},
    ]
    loaded = load_rows(write_jsonl(tmp_path / "web.jsonl", rows))
    with pytest.raises(InvalidRowError, match="webinstruct row 3: unknown difficulty 'kindergarten'"):
        parse_rows(loaded, "webinstruct")
    examples, report = parse_rows(loaded, "webinstruct", skip_invalid=True)
    assert (len(examples), report.num_skipped) == (3, 2)
    assert "row 4" in report.skipped_reasons[1]


def test_loader_errors():
    with pytest.raises(ValueError, match="unknown schema"):
        parse_rows([{"query": "q"}], "alpaca")
    with pytest.raises(ValueError, match="cannot tell the schema"):
        parse_rows([{"instruction": "q"}], "auto")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows("/nonexistent/dir/data")
    with pytest.raises(ValueError, match="extension"):
        from jaxalign.data.loaders import builder_for_file

        builder_for_file("data.xlsx")
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tensorflow-datasets"):
            load_tfds_rows("mnist")


def test_prompt_from_query_variants():
    assert prompt_from_query("[not json") == ("[not json", None)
    assert prompt_from_query([{"role": "user", "content": " hi "}]) == ("hi", None)
    with pytest.raises(ValueError, match="message 0"):
        prompt_from_query([{"text": "hi"}])


def test_embedded_exam_set_is_deterministic_and_well_formed():
    train, held_out = make_exam_set(seed=3, num_train=200, num_eval=60)
    again_train, again_held_out = make_exam_set(seed=3, num_train=200, num_eval=60)
    assert train == again_train and held_out == again_held_out
    other_train, _ = make_exam_set(seed=4, num_train=200, num_eval=60)
    assert [e["prompt"] for e in other_train] != [e["prompt"] for e in train]
    assert make_exam_set(seed=3, num_train=200, num_eval=5)[0] == train  # train ignores the eval size
    assert (len(train), len(held_out)) == (200, 60)
    assert not {e["prompt"] for e in held_out} & {e["prompt"] for e in train}
    assert not {e["exam_id"] for e in held_out} & {e["exam_id"] for e in train}
    for example in train + held_out:
        assert example["source"] == "embedded_exam"
        assert example["answer"].isdigit() and len(example["answer"]) <= 3
        assert len(example["prompt"]) < 120
        assert example["value"] == pytest.approx(example["score"] / example["total"])
    # Within one complete exam, the points add up to the total and the values to 1.
    first_exam = [e for e in train if e["exam_id"] == "train-0000"]
    assert sum(e["score"] for e in first_exam) == first_exam[0]["total"]
    assert sum(e["value"] for e in first_exam) == pytest.approx(1.0)
    # Values vary a lot and are right-skewed (mean above median, a long upper tail).
    values = np.array([e["value"] for e in train])
    assert values.mean() > np.median(values) and values.max() > 5 * np.median(values)


def test_embedded_exam_answers_are_right():
    train, _ = make_exam_set(seed=0, num_train=300, num_eval=0)
    checked = 0
    for example in train:
        prompt = example["prompt"]
        if prompt.startswith("What is "):
            expression = prompt[len("What is "):-1].replace(" times ", "*").replace(" plus ", "+")
            assert eval(expression) == int(example["answer"]), prompt  # noqa: S307 - our own generated text
            checked += 1
    assert checked > 100


def test_tfds_rows_through_load_rows_and_the_rlev_schema(monkeypatch):
    """`tfds:<name>` goes through TFDS's `load` + `as_numpy` interface; bytes become str, 0-d arrays
    Python scalars, and the rows parse in the RLEV schema. A stand-in module plays TFDS (the real package
    needs TensorFlow, which the CI machine does not install)."""
    import sys
    import types

    import numpy as np

    from jaxalign.data import parse_rows

    calls = []
    rows = [
        {"query": b"What is 2 + 2?", "label": b"4", "score": np.array(3.0), "total": np.array(100.0)},
        {"query": b"Name the capital of France.", "label": b"Paris", "score": np.array(5.0),
         "total": np.array(50.0)},
        {"query": b"unused", "label": b"x", "score": np.array(1.0), "total": np.array(10.0)},
    ]
    fake = types.ModuleType("tensorflow_datasets")
    fake.load = lambda name, split, data_dir=None: calls.append((name, split)) or rows
    fake.as_numpy = lambda dataset: iter(dataset)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)

    loaded = load_rows("tfds:rlev_exam", split="test", limit=2)
    assert calls == [("rlev_exam", "test")]
    assert loaded == [
        {"query": "What is 2 + 2?", "label": "4", "score": 3.0, "total": 100.0},
        {"query": "Name the capital of France.", "label": "Paris", "score": 5.0, "total": 50.0},
    ]
    assert all(type(r["score"]) is float and type(r["query"]) is str for r in loaded)
    examples, report = parse_rows(loaded, "rlev")
    assert [e["value"] for e in examples] == [pytest.approx(0.03), pytest.approx(0.1)]
    assert (report.num_rows, report.num_kept, report.num_skipped) == (2, 2, 0)
