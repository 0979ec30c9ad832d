"""GTAlign's features of one complete reply against values worked out by hand from the reply's text and the
paper's formulas (written here, not taken from the library's helpers)."""

import math

import pytest

from jaxalign.methods.gtalign import gtalign_features

# No spaces inside the payoff block, so the reply's words can be counted by eye (11, see below).
PAYOFF = ('{"DQ_AQ":{"LLM":2.0,"user":2.5},"DQ_CQ":{"LLM":1.0,"user":0.5},"DQ_DA":{"LLM":3.1,"user":3.4},'
          '"VQ_AQ":{"LLM":1.5,"user":1.2},"VQ_CQ":{"LLM":2.0,"user":1.8},"VQ_DA":{"LLM":0.5,"user":0.2}}')
REPLY = ("<thinking>The question is definite.</thinking>\n"
         f"<payoff>{PAYOFF}</payoff>\n"
         "<analyze>Choose DQ_DA.</analyze>\n"
         "<response>The answer is 12.</response>")
MATH = {"prompt": "Ann has 7 apples and gets 5 more. How many?", "data_source": "math", "answer": "12",
        "ambiguous": False}


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_the_reply_is_as_counted():
    # 47 + 205 + 33 characters before <response>: the thinking, payoff and analyze lines with their newlines.
    assert len(PAYOFF) == 187 and len(REPLY.split("<response>")[0]) == 47 + (8 + 187 + 9 + 1) + 33 == 285
    assert len(REPLY) == 285 + len("<response>The answer is 12.</response>") == 323


def test_features_of_a_complete_reply_match_hand_values():
    f = gtalign_features(REPLY, MATH)
    # All four blocks in order; the payoff parses; "12" is the reference answer.
    assert f["parse_ok"] == f["format"] == 1.0
    assert f["answer_user"] == f["answer_llm"] == 1.0
    # Matrix quality, 1/12 per cell with LLM != user (all six) and 1/12 per cell whose gap exceeds 10% of the
    # larger payoff: DQ_AQ 0.5/2.5, DQ_CQ 0.5/1.0, VQ_AQ 0.3/1.5, VQ_DA 0.3/0.5 do; DQ_DA 0.3/3.4 and
    # VQ_CQ 0.2/2.0 (exactly 10%) do not. 10/12.
    assert f["quality"] == pytest.approx(10 / 12)
    # DQ_DA (3.1, 3.4) beats every other cell for both sides: the frontier is {DQ_DA}, the welfare choice
    # (largest LLM + user, 6.5) is DQ_DA, and the analysis chooses it.
    assert f["pareto"] == 1.0 and f["welfare_consistent"] == 1.0 and f["action_DA"] == 1.0
    assert f["action_CQ"] == f["action_AQ"] == 0.0
    # Length terms: the response has 4 words, band [20, 500] with slope 0.005; 285 reasoning characters at
    # scale 500; the whole reply has 11 words, band [500, 1000]; the response is 17 of 323 characters.
    assert f["response_band"] == pytest.approx(sigmoid(0.005 * (4 - 20)) * sigmoid(0.005 * (500 - 4)))
    assert f["response_band"] == pytest.approx(0.4429, abs=1e-4)
    assert f["reasoning_brevity"] == pytest.approx(math.exp(-285 / 500))
    assert f["full_band"] == pytest.approx(sigmoid(0.005 * (11 - 500)) * sigmoid(0.005 * (1000 - 11)))
    assert f["full_band"] == pytest.approx(0.0793, abs=1e-4)
    assert f["response_ratio"] == pytest.approx(17 / 323)


def test_a_wrong_answer_keeps_the_format_and_loses_the_answer_terms():
    f = gtalign_features(REPLY.replace("The answer is 12.", "It is 13."), MATH)
    assert f["parse_ok"] == f["format"] == 1.0 and f["answer_user"] == f["answer_llm"] == 0.0
    assert f["response_ratio"] == pytest.approx(len("It is 13.") / (323 - 8))
