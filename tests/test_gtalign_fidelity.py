"""GTAlign fidelity to the reference: each test here failed before its fix (issue 12).

(a) the reference's multi-turn rows keep both questions; (b) with llm_terms="pareto" a reply without an
<analyze> block scores 0; (c) the rule stand-in for PO finds the action the analysis chooses and uses the
judge's levels 1 / 0.5 / 0; (d) the ambiguity answer term reads the response text.
"""

import json

import numpy as np
import pytest

from jaxalign.methods.gtalign import GTAlignMethod, example_from_row, game, game_messages, gtalign_features

# A matrix with a two-point frontier, by hand: DQ_DA (4, 2) and VQ_CQ (2, 4). Every other cell is beaten on
# both sides by one of them: DQ_AQ (3, 1.5) < DQ_DA; DQ_CQ (1, 1), VQ_AQ (1.5, 3), VQ_DA (0, 0) < VQ_CQ.
MATRIX = {"DQ_AQ": (3.0, 1.5), "DQ_CQ": (1.0, 1.0), "DQ_DA": (4.0, 2.0),
          "VQ_AQ": (1.5, 3.0), "VQ_CQ": (2.0, 4.0), "VQ_DA": (0.0, 0.0)}
VAGUE = {"prompt": "Can you help me fix it?", "data_source": "ambiguity", "answer": "", "ambiguous": True}
CLEAR = {"prompt": "Ann has 7 apples and gets 5 more. How many?", "data_source": "ambiguity", "answer": "12",
         "ambiguous": False}
MATH = {"prompt": "Ann has 7 apples and gets 5 more. How many?", "data_source": "math", "answer": "12",
        "ambiguous": False}


def reply(analyze="Frontier: DQ_DA and VQ_CQ. I pick DQ_DA.", response="You will have 12 apples.",
          matrix=MATRIX, with_analyze=True):
    payoff = json.dumps({k: {"LLM": v[0], "user": v[1]} for k, v in matrix.items()})
    middle = f"<analyze>{analyze}</analyze>\n" if with_analyze else ""
    return f"<thinking>Short.</thinking>\n<payoff>{payoff}</payoff>\n{middle}<response>{response}</response>"


# ----------------------------------------------------------------------------------------------------------
# (a) One user message holding the whole conversation


def reference_row(first, latest, source="ambig_qa", truth="multipleQAs###a###b"):
    """A row laid out as the reference's preprocessing writes multi-turn conversations: one system message and
    ONE user message = "The user's initial question is" + "Question: " + first question, then directly the
    instruction block (which opens with the sentence below and ends in "Question: " + latest question)."""
    block = ("Now you need to answer the user's most recent question. Write four tagged blocks: "
             "<thinking>...</thinking><payoff>...</payoff><analyze>...</analyze><response>...</response>. "
             "Keys DQ_AQ, DQ_CQ, DQ_DA, VQ_AQ, VQ_CQ, VQ_DA.Question: {question}")
    user = "The user's initial question is" + "Question: " + first + block.format(question=latest)
    return {"data_source": source, "reward_model": {"style": "rule", "ground_truth": truth},
            "prompt": [{"role": "system", "content": "You are a helpful, proactive assistant."},
                       {"role": "user", "content": user}]}


def test_reference_multi_turn_row_keeps_the_first_and_the_latest_question():
    first = "Who wrote the song that was a hit in the summer?\nI heard it on the radio."
    example = example_from_row(reference_row(first, "And who sang it first?"), 0)
    assert example["prompt"] == "And who sang it first?"
    assert example["first_question"] == first
    assert example["ambiguous"] is True
    # The policy then sees both questions in its own prompt.
    user = GTAlignMethod({}).messages(example)[1]["content"]
    assert first in user and user.endswith("Question: And who sang it first?")


def test_single_turn_reference_row_has_no_first_question():
    row = reference_row("x", "What is 3 + 4?", source="math", truth="7")
    row["prompt"][1]["content"] = row["prompt"][1]["content"].split("Now you need", 1)[1]  # no initial prefix
    example = example_from_row(row, 0)
    assert (example["prompt"], example["first_question"], example["answer"]) == ("What is 3 + 4?", None, "7")


def test_our_own_multi_turn_layout_round_trips():
    messages = game_messages("Make it shorter.", first_question="Write a poem about rain.")
    example = example_from_row({"data_source": "ambig_qa", "ground_truth": "ambiguous", "prompt": messages}, 0)
    assert (example["prompt"], example["first_question"]) == ("Make it shorter.", "Write a poem about rain.")


def test_initial_question_without_a_known_instruction_block_is_an_error_naming_the_row():
    row = reference_row("first", "latest")
    row["prompt"][1]["content"] = "The user's initial question isQuestion: first. Answer it.Question: latest"
    with pytest.raises(ValueError, match="row 7: .*initial question is.*no known instruction block"):
        example_from_row(row, 7)


# ----------------------------------------------------------------------------------------------------------
# (b) llm_terms="pareto" needs the analysis


def _rewards(texts, examples, **section):
    method = GTAlignMethod(section)
    feats = [gtalign_features(t, e) for t, e in zip(texts, examples)]
    f = {k: np.array([x[k] for x in feats]) for k in feats[0]}
    return method.rewards(f, examples)[0], method.eval_metrics(f, examples, np.ones(len(texts)))


def test_pareto_terms_give_a_reply_without_analyze_zero_reward():
    texts = [reply(with_analyze=False), reply()]
    rewards, metrics = _rewards(texts, [MATH, MATH], llm_terms="pareto")
    assert rewards[0] == 0.0 and rewards[1] > 0.0
    assert metrics["parsed"] == 50.0
    rewards_main, metrics_main = _rewards(texts, [MATH, MATH], llm_terms="main")
    assert rewards_main[0] > 0.0 and metrics_main["parsed"] == 100.0  # the main tasks keep the partial reward


# ----------------------------------------------------------------------------------------------------------
# (c) PO: the action the analysis chooses, on three levels


@pytest.mark.parametrize("analyze, expected", [
    ("DQ_AQ DQ_CQ DQ_DA VQ_AQ VQ_CQ VQ_DA", 0.0),               # lists every key, chooses nothing
    ("DQ_AQ, DQ_CQ, DQ_DA, VQ_AQ, VQ_CQ and VQ_DA are the cells; DA, CQ and AQ are the actions.", 0.0),
    ("Frontier: DQ_DA and VQ_CQ. I pick DQ_DA.", 1.0),          # a frontier key
    ("Frontier: DQ_DA, VQ_CQ. The chosen key is VQ_CQ.", 1.0),
    ("VQ_CQ dominates the rest, so VQ_CQ.", 1.0),               # one key named, no choosing word
    ("Frontier: DQ_DA, VQ_CQ. I choose DQ_CQ.", 0.5),           # dominated cell, its action CQ is on the frontier
    ("Frontier: DQ_DA, VQ_CQ. I choose VQ_DA.", 0.5),           # dominated cell, DA is on the frontier
    ("Frontier: DQ_DA, VQ_CQ. I choose VQ_AQ.", 0.0),           # AQ is on no frontier cell
    ("Asking is the best here. Choice: CQ", 1.0),               # a bare frontier action
    ("Choice: AQ", 0.0),
    ("Let me think about the matrix.", 0.0),
])
def test_pareto_term_levels(analyze, expected):
    f = gtalign_features(reply(analyze=analyze), MATH)
    assert f["parse_ok"] == 1.0 and f["pareto"] == expected


def test_choice_not_last_named_key_decides_the_action_and_the_welfare_check():
    # DQ_DA: 6.0, VQ_CQ: 6.0, the same sum; the higher user payoff makes VQ_CQ the welfare choice.
    assert game.welfare_choice(MATRIX) == "VQ_CQ"
    # The analysis chooses VQ_CQ and then mentions DQ_DA in its justification: the choice is VQ_CQ.
    f = gtalign_features(reply(analyze="Frontier: DQ_DA, VQ_CQ. I choose VQ_CQ as the tie goes to the user, "
                                       "ahead of DQ_DA."), MATH)
    assert f["action_CQ"] == 1.0 and f["action_DA"] == 0.0 and f["welfare_consistent"] == 1.0
    f = gtalign_features(reply(analyze="Frontier: DQ_DA, VQ_CQ. I choose DQ_DA; VQ_CQ gives the user more."), MATH)
    assert f["action_DA"] == 1.0 and f["action_CQ"] == 0.0 and f["welfare_consistent"] == 0.0


# ----------------------------------------------------------------------------------------------------------
# (d) The ambiguity answer term reads the response


@pytest.mark.parametrize("example, analyze, response, expected", [
    (VAGUE, "I pick VQ_CQ.", "Restart it and it will work.", 0.0),              # claims to ask, does not
    (VAGUE, "I pick DQ_DA.", "What device is it, and what goes wrong?", 1.0),  # claims to answer, asks
    (VAGUE, "I pick DQ_DA.", "If you mean the laptop, restart it; if you mean the bike, check the chain.", 1.0),
    (VAGUE, "I pick VQ_AQ.", "Most fixes start with the failing step. Which device is it?", 1.0),
    (CLEAR, "I pick VQ_CQ.", "You will have 12 apples.", 1.0),                 # claims to ask, answers
    (CLEAR, "I pick DQ_DA.", "How many apples did Ann start with?", 0.0),      # claims to answer, asks
    (CLEAR, "I pick DQ_AQ.", "12 apples. Do you want the steps?", 1.0),        # answers, then a follow-up
])
def test_ambiguity_answer_term_scores_the_response_text(example, analyze, response, expected):
    f = gtalign_features(reply(analyze=analyze, response=response), example)
    assert f["answer_user"] == f["answer_llm"] == expected
