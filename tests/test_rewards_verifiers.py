"""Rule-based verifiers: answer extraction from the final part, math equivalence, option letters."""

import pytest

from jaxalign.rewards.pool import RewardPool
from jaxalign.rewards.verifiers import (
    correctness_features,
    extract_answer,
    final_step,
    math_equal,
    option_letter,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 + 4 = 7.\nAnswer: 7", "7"),
        ("Adding gives 12.\nSo the answer is 12.", "12"),
        ("The answer is 3.5.", "3.5"),
        ("First \\boxed{2}, then fixed: \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("**Answer:** 9", "9"),
        ("Final answer: $x^2$", "x^2"),
        ("Answer: \\boxed{-4}", "-4"),
        ("Tom has 5 apples, eats 2, so 3 remain", "3"),
        ("total is 1,250", "1250"),
        ("no numbers or answer here", None),
        ("", None),
        ("cut off inside \\boxed{12", "12"),  # unbalanced box ignored, last number of the final line used
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_only_the_final_part_is_read():
    early_answer = "Answer: 5\n" + "more reasoning words " * 60 + "\nso nothing is final"
    assert extract_answer(early_answer) is None  # the marker lies outside the searched tail
    assert extract_answer("first 4 then later\n7 is it") == "7"
    assert final_step("a\n\n  b 3  \n\n") == "b 3"


@pytest.mark.parametrize(
    "pred, ref, equal",
    [
        ("7", "7", True),
        ("7.0", "7", True),
        ("8", "7", False),
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "1/2", True),
        ("\\frac{2}{4}", "\\frac{1}{2}", True),
        ("\\frac{1}{3}", "0.5", False),
        ("10%", "0.1", True),
        ("1,000", "1000", True),
        ("x^2", "x^2", True),
        ("\\sqrt{4}", "2", True),
        ("-3", "3", False),
        ("B", "B", True),
        ("(B)", "B", True),
        ("B. because", "B", True),
        ("b", "B", True),
        ("C", "B", False),
        ("B", "(B)", True),
        ("2", "B", False),  # a number is never an option letter
        (None, "3", False),
        ("", "3", False),
        ("seven", "7", False),
        ("Paris", "paris", True),  # unparsable text falls back to normalised exact match
    ],
)
def test_math_equal(pred, ref, equal):
    assert math_equal(pred, ref) is equal


def test_option_letter():
    assert option_letter("(d)") == "D"
    assert option_letter("E)") == "E"
    assert option_letter("F") is None
    assert option_letter("Because") is None


def test_correctness_features():
    assert correctness_features("so 2+2=4\nAnswer: 4", {"answer": "4"}) == {"correct": 1.0, "has_answer": 1.0}
    assert correctness_features("Answer: 5", {"answer": "4"}) == {"correct": 0.0, "has_answer": 1.0}
    assert correctness_features("I do not know", {"answer": "4"}) == {"correct": 0.0, "has_answer": 0.0}
    with pytest.raises(KeyError, match="answer"):
        correctness_features("Answer: 4", {})


def test_correctness_features_run_in_the_pool():
    items = [("Answer: \\frac{3}{6}", {"answer": "0.5"}), ("Answer: 2", {"answer": "3"}), ("x", {})]
    with RewardPool(num_workers=1, timeout_s=30.0, preload=("jaxalign.rewards.verifiers",)) as pool:
        results = pool.map(correctness_features, items)
    assert results[0].value == {"correct": 1.0, "has_answer": 1.0}
    assert results[1].value == {"correct": 0.0, "has_answer": 1.0}
    assert not results[2].ok and results[2].failure == "exception" and "answer" in results[2].error
