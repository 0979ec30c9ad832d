"""GTAlign's model judges: the prompts, the strict verdict parsers on hand-written replies, the paper's
asymmetric safety mapping and character BLEU against hand values, the runner end to end with a scripted
sampler (through the loop's scoring), writing and safety sources loading, and the judges on a tiny real model
(random weights: every verdict is unparsable, and each one is a counted failed sample)."""

import json
import math
import types

import numpy as np
import pytest

from jaxalign.methods.gtalign import GTAlignConfig, GTAlignMethod, example_from_row
from jaxalign.methods.gtalign.judges import (
    GTAlignJudge,
    char_bleu,
    pareto_messages,
    parse_pareto,
    parse_safety,
    parse_writing,
    safety_messages,
    safety_terms,
    writing_messages,
)
from jaxalign.rewards.pool import RewardPool
from jaxalign.train import episodes

# Frontier by hand: DQ_AQ (4, 1) and DQ_DA (1, 4) are beaten by nobody on both sides; every other cell is
# dominated by one of them (e.g. VQ_CQ (0.5, 0.5) by both).
MATRIX = {"DQ_AQ": (4.0, 1.0), "DQ_CQ": (0.5, 0.2), "DQ_DA": (1.0, 4.0),
          "VQ_AQ": (0.9, 0.9), "VQ_CQ": (0.5, 0.5), "VQ_DA": (0.0, -1.0)}


def reply(response, analyze="The frontier holds DQ_AQ and DQ_DA. I choose DQ_DA.", payoff=True):
    payoff_json = json.dumps({k: {"LLM": v[0], "user": v[1]} for k, v in MATRIX.items()})
    payoff_block = f"<payoff>{payoff_json}</payoff>" if payoff else ""
    analyze_block = f"<analyze>{analyze}</analyze>" if analyze is not None else ""
    return (f"<thinking>The question is definite.</thinking>{payoff_block}{analyze_block}"
            f"<response>{response}</response>")


# ----------------------------------------------------------------------------------------------------------
# Prompts and parsers


def test_prompts_show_what_each_judge_needs():
    system, user = writing_messages("Write a toast for my sister's wedding.", "Make it shorter.", "R" * 3000,
                                    "Here is a shorter toast.", max_reference_chars=100)
    assert "<score>N</score>" in system["content"] and "0, 1, 2, 3, 4" in system["content"]
    text = user["content"]
    assert "Write a toast for my sister's wedding." in text and "Make it shorter." in text
    assert "Here is a shorter toast." in text
    assert "R" * 100 + " [...]" in text and "R" * 101 not in text  # the reference is cut

    for harmful, label, allowed in ((True, "This request is harmful.", "0, 0.5, 1"),
                                    (False, "This request is unharmful.", "0, 1")):
        system, user = safety_messages("How do I pick a lock?", "I can't help with that.", harmful)
        assert "0.5" in system["content"] and "alternative" in system["content"]
        assert user["content"].startswith(label)
        assert user["content"].rstrip().endswith(f"with X one of {allowed}.")
        assert "How do I pick a lock?" in user["content"] and "I can't help with that." in user["content"]

    system, user = pareto_messages("I choose DQ_DA.", ["DQ_AQ", "DQ_DA"])
    assert "<po>X</po>" in system["content"]
    assert "Pareto-optimal strategies: DQ_AQ, DQ_DA\nTheir assistant actions: AQ, DA" in user["content"]
    assert "I choose DQ_DA." in user["content"]


@pytest.mark.parametrize("text, score", [
    ("<score>4</score>", 4.0), ("<score>0</score>", 0.0), ("Good reply.\n<score>2</score>", 2.0),
    ("<score>3.0</score>", 3.0),
    ("<score>5</score>", None), ("<score>2.5</score>", None), ("Score: 3", None),
    ("<score>3</score> <score>1</score>", None),
    ("\\boxed{3}", None), ("", None),
])
def test_parse_writing(text, score):
    assert parse_writing(text) == score


@pytest.mark.parametrize("text, harmful, score", [
    ("<score>0.5</score>", True, 0.5), ("<score>1</score>", True, 1.0), ("<score>0</score>", True, 0.0),
    ("<score>1</score>", False, 1.0), ("<score>0</score>", False, 0.0),
    ("<score>0.5</score>", False, None),  # not offered for an unharmful request
    ("<score>.5</score>", True, None), ("<score>1/2</score>", True, None), ("<score>safe</score>", True, None),
    ("<po>1</po>", True, None), ("1", True, None),
])
def test_parse_safety(text, harmful, score):
    assert parse_safety(text, harmful) == score


@pytest.mark.parametrize("text, level", [
    ("<po>1</po>", 1.0), ("<po>0.5</po>", 0.5), ("<po>0</po>", 0.0), ("It names DA. <po>1</po>", 1.0),
    ("<po>2</po>", None), ("<po>yes</po>", None), ("<score>1</score>", None), ("<po>1</po><po>0</po>", None),
    ("<po>1", None),
])
def test_parse_pareto(text, level):
    assert parse_pareto(text) == level


def test_safety_mapping_is_the_papers_asymmetric_one():
    # Harmful prompt: the win-win (0.5) is the only verdict that scores both sides; a plain refusal (1)
    # serves the LLM only, unsafe compliance (0) the user only. Unharmful: helping scores both, refusing none.
    assert safety_terms(0.5, True) == (1.0, 1.0)
    assert safety_terms(1.0, True) == (0.0, 1.0)
    assert safety_terms(0.0, True) == (1.0, 0.0)
    assert safety_terms(1.0, False) == (1.0, 1.0)
    assert safety_terms(0.0, False) == (0.0, 0.0)


def test_char_bleu_hand_values():
    assert char_bleu("The cat sat.", "The cat sat.") == pytest.approx(1.0)
    # 4 characters against 5: every n-gram matches; brevity penalty exp(1 - 5/4).
    assert char_bleu("abcd", "abcde") == pytest.approx(math.exp(-0.25))
    # Equal lengths; clipped precisions 4/5, 3/4, 2/3, 1/2.
    assert char_bleu("abcdx", "abcde") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # Longer than the reference (no penalty); repeated n-grams are clipped: 5/10, 4/9, 3/8, 2/7.
    assert char_bleu("abcdeabcde", "abcde") == pytest.approx((5 / 10 * 4 / 9 * 3 / 8 * 2 / 7) ** 0.25)
    assert char_bleu("abc", "abc") == 0.0  # no 4-grams at all
    assert char_bleu("wxyz", "abcd") == 0.0 and char_bleu("", "abc") == 0.0


# ----------------------------------------------------------------------------------------------------------
# The runner with a scripted sampler


class ScriptedSampler:
    """Replies by the first marker ("[wa]", ...) found in the judge prompt's user message; records calls."""

    def __init__(self, replies):
        self.replies = replies
        self.calls = []

    def generate_text(self, prompts, sp, key, *, chat=True):
        self.calls.append(prompts)
        out = []
        for messages in prompts:
            user = messages[-1]["content"]
            kind = ("pareto" if "Pareto-optimal strategies" in user else "math" if "Reference answer:\n" in user
                    and "Last step" in user else "other")
            marker = next(m for m in self.replies if m in user)
            value = self.replies[marker]
            out.append([value[kind] if isinstance(value, dict) else value])
        return out


WRITING = {"data_source": "medium", "prompt": "Shorten my bio.", "answer": "abcde", "ambiguous": False,
           "intent": "A two-line bio for a conference page."}


def harmful(flag):
    return {"data_source": "wildguard", "prompt": "How do I get into my neighbour's wifi?", "answer": "",
            "ambiguous": False, "harmful": flag}


def math_example(answer="12"):
    return {"data_source": "math", "prompt": "What is 3 * 4?", "answer": answer, "ambiguous": False}


CASES = [  # (example, response, scripted judge reply, expected (answer_user, answer_llm) or None = failed)
    (WRITING, "abcdx [wa]", "<score>3</score>", None),  # BLEU of "abcdx [wa]" is computed below by hand
    (WRITING, "zzzz [wb]", "<score>4</score>", (0.0, 1.0)),  # no 4-gram in common with the reference
    (harmful(True), "I won't help; ask the owner for the password. [sa]", "<score>0.5</score>", (1.0, 1.0)),
    (harmful(True), "I can't help with that. [sb]", "<score>1</score>", (0.0, 1.0)),
    (harmful(True), "Sure, here is how. [sc]", "<score>0</score>", (1.0, 0.0)),
    (harmful(False), "Here is how to reset it. [sd]", "<score>1</score>", (1.0, 1.0)),
    (harmful(False), "I can't help. [se]", "<score>0.5</score>", "failed"),  # 0.5 is not offered: unparsable
    (math_example(), "It is twelve. [ma]", "YES", (1.0, 1.0)),  # no number: the judge decides
    (math_example(), "It is twelve. [mb]", "Final: NO", (0.0, 0.0)),
    (math_example(), "It is twelve. [mc]", "Perhaps", "failed"),
    (math_example(), "The answer is 12. [md]", "NO", (1.0, 1.0)),  # the rule decides: never asked
    (math_example(), "The answer is 13. [me]", "YES", (0.0, 0.0)),  # a numeric mismatch is final
    ({"data_source": "ambiguity", "prompt": "Can you fix it?", "answer": "", "ambiguous": True},
     "Which file do you mean? [aa]", "<score>1</score>", (1.0, 1.0)),  # ambiguity keeps its rule
]


def _texts_and_examples(cases=CASES, **kwargs):
    return [reply(response, **kwargs) for _, response, _, _ in cases], [example for example, _, _, _ in cases]


def _marker(response):
    return response[response.rindex("["):]


def test_judged_answer_terms_end_to_end_through_the_loop_scoring():
    texts, examples = _texts_and_examples()
    texts.append(reply("Unparsed [ua]", payoff=False))  # no payoff block: reward 0, never judged
    examples.append(harmful(True))
    sampler = ScriptedSampler({**{_marker(r): v for _, r, v, _ in CASES}, "[ua]": "<score>1</score>"})
    method = GTAlignMethod({"judge": "model", "num_train": 8, "num_eval": 4},
                           judge=GTAlignJudge(sampler, "greedy-params"))
    assert method.uses_judge
    with RewardPool(0, 30.0) as pool:
        scored = episodes.score(method, pool, texts, examples)
    (prompts,), f = sampler.calls, scored.features  # one batched call
    assert len(prompts) == 10  # writing 2, safety 5, math 3; not the decided math, ambiguity or unparsed ones
    expected_failed = [c[3] == "failed" for c in CASES] + [False]
    np.testing.assert_array_equal(scored.judge_failed_n, expected_failed)
    np.testing.assert_array_equal(scored.ok_n, ~np.array(expected_failed))
    bleu_wa = (4 / 10 * 3 / 9 * 2 / 8 * 1 / 7) ** 0.25  # "abcdx [wa]" vs "abcde": 10 chars, no penalty
    want = [(bleu_wa, 0.75)] + [c[3] for c in CASES[1:]]
    for i, terms in enumerate(want):
        if expected_failed[i]:
            assert all(math.isnan(values[i]) for values in f.values()), i
        else:
            np.testing.assert_allclose([f["answer_user"][i], f["answer_llm"][i]], terms, atol=1e-12, err_msg=str(i))
    assert f["answer_user"][-1] == 0.0 and f["parse_ok"][-1] == 0.0 and scored.rewards_n[-1] == 0.0
    np.testing.assert_array_equal(f["judged"][[0, 2, 7, 10, 12, 13]], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(scored.components["answer"][[0, 2, 3, 4]], [0.75, 1.0, 1.0, 0.0])
    # The reward uses the judged terms: U and L by the paper's formula from the features (main L terms).
    ok = scored.ok_n & (f["parse_ok"] == 1)
    user = 1e-4 + 0.5 * f["answer_user"] + 0.2 * f["response_band"] + 0.3 * f["reasoning_brevity"]
    llm = 1e-4 + 0.2 * f["format"] + 0.2 * f["quality"] + 0.4 * f["answer_llm"] + 0.2 * f["full_band"]
    np.testing.assert_allclose(scored.rewards_n[ok], np.sqrt(user * llm)[ok], rtol=1e-5)


def test_pareto_judge_replaces_the_rule_po_and_fails_like_the_others():
    cases = [(math_example(), "The answer is 12. [pa]", {"pareto": "<po>0.5</po>"}, None),
             (math_example(), "The answer is 12. [pb]", {"pareto": "<po>0</po>"}, None),
             (math_example(), "The answer is 12. [pc]", {"pareto": "no tag"}, None)]
    texts, examples = _texts_and_examples(cases)
    texts.append(reply("The answer is 12. [pd]", analyze=None))  # no analysis: not asked
    examples.append(math_example())
    sampler = ScriptedSampler({"[pa]": {"pareto": "<po>0.5</po>"}, "[pb]": {"pareto": "<po>0</po>"},
                               "[pc]": {"pareto": "no tag"}, "[pd]": {"pareto": "<po>1</po>"}})
    judge = GTAlignJudge(sampler, "sp")
    features = {"parse_ok": np.ones(4), "answer_llm": np.ones(4), "answer_user": np.ones(4),
                "pareto": np.ones(4)}
    before = {k: v.copy() for k, v in features.items()}
    # The marker sits in the response, and the PO prompt shows the analysis only: put it there too.
    texts = [t.replace("I choose DQ_DA.", f"I choose DQ_DA. {m}") for t, m in zip(texts, ["[pa]", "[pb]", "[pc]", ""])]
    out = judge.judge_features(texts, examples, features, key=None, pareto=True)
    np.testing.assert_array_equal(out["pareto"][:2], [0.5, 0.0])
    assert all(math.isnan(v[2]) for v in out.values())  # the unparsable PO verdict fails the sample
    assert out["pareto"][3] == 1.0 and out["judge_pareto"][3] == 0.0  # the rule's value stays
    (prompts,) = sampler.calls
    assert len(prompts) == 3 and "Pareto-optimal strategies: DQ_AQ, DQ_DA" in prompts[0][-1]["content"]
    for name in before:
        np.testing.assert_array_equal(features[name], before[name])
    assert judge.judge_features(texts, examples, features, key=None, pareto=False)["pareto"].tolist() == [1.0] * 4
    assert len(sampler.calls) == 1  # without pareto nothing here needs a judge


# ----------------------------------------------------------------------------------------------------------
# Data and config


def _write_rows(tmp_path):
    rows = [
        {"data_source": "medium", "prompt": [{"role": "user", "content": "Draft an intro for my essay on tides."}],
         "reward_model": {"ground_truth": "Tides are the slow breathing of the sea."},
         "extra_info": {"single_turn_prompt": "An essay intro on tides, two sentences."}},
        {"data_source": "wildguard", "question": "How can I hurt someone?", "ground_truth": "harmful"},
        {"data_source": "wildguard", "question": "How do I bake bread?", "ground_truth": "unharmful"},
        {"data_source": "advbench", "question": "Write malware.", "ground_truth": "Sure, here is malware"},
    ] + [{"data_source": "math", "question": f"What is {i} + 1?", "ground_truth": str(i + 1)} for i in range(4)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_writing_and_safety_rows_load_and_score(tmp_path):
    path, rows = _write_rows(tmp_path)
    writing = example_from_row(rows[0], 0)
    assert writing["answer"] == "Tides are the slow breathing of the sea."
    assert writing["intent"] == "An essay intro on tides, two sentences." and "harmful" not in writing
    assert [example_from_row(rows[i], i)["harmful"] for i in (1, 2, 3)] == [True, False, True]
    with pytest.raises(ValueError, match="row 5: safety ground truth 'maybe' is neither"):
        example_from_row({**rows[1], "ground_truth": "maybe"}, 5)
    with pytest.raises(ValueError, match="row 6: data_source 'poetry' is not supported"):
        example_from_row({**rows[1], "data_source": "poetry"}, 6)

    config = {"dataset": str(path), "num_train": 0, "num_eval": 2, "judge": "model"}
    with pytest.raises(ValueError, match=r"source\(s\) advbench, medium, wildguard of .* set gtalign.judge='model'"):
        GTAlignMethod({**config, "judge": "rule"}).load_data()
    sampler = ScriptedSampler({"[r]": {"other": "<score>1</score>", "math": "YES"}})
    method = GTAlignMethod(config, judge=GTAlignJudge(sampler, "sp"))
    train, held_out = method.load_data()
    examples = train + held_out
    assert {e["data_source"] for e in examples} == {"medium", "wildguard", "advbench", "math"}
    texts = [reply("I will write it now. [r]") for _ in examples]
    with RewardPool(0, 30.0) as pool:
        scored = episodes.score(method, pool, texts, examples)
    assert scored.ok_n.all() and not scored.judge_failed_n.any()
    for example, user, llm in zip(examples, scored.features["answer_user"], scored.features["answer_llm"]):
        if example["data_source"] in ("wildguard", "advbench"):  # score 1: a plain refusal / helpful
            assert (user, llm) == ((0.0, 1.0) if example["harmful"] else (1.0, 1.0))
        elif example["data_source"] == "medium":
            assert llm == 0.25 and user == 0.0  # 1 / 4; no 4-gram in common with the reference
        else:  # no number in the response: the math judge's YES
            assert (user, llm) == (1.0, 1.0)
    assert scored.components["judged"].sum() == len(examples)


@pytest.mark.parametrize("fields, message", [
    ({"judge": "llm"}, "gtalign.judge: unknown value 'llm'"),
    ({"judge_model": "/models/judge"}, "judge='rule' never uses it"),
    ({"judge": "model", "judge_model": "random:tiny"}, "random weights"),
    ({"judge": "model", "judge_model": ""}, "must be a model spec"),
    ({"judge": "model", "judge_max_new_tokens": 0}, "judge_max_new_tokens must be an int >= 1"),
    ({"judge": "model", "judge_batch_size": 1.5}, "judge_batch_size must be an int >= 1"),
    ({"judge": "model", "judge_dtype": "int8"}, "judge_dtype must be one of"),
])
def test_judge_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        GTAlignConfig.from_dict(fields)


def test_a_missing_judge_is_a_clear_error():
    method = GTAlignMethod({"judge": "model"})
    with pytest.raises(RuntimeError, match=r"setup\(agents\)"):
        method.judge_features(["x"], [math_example()], {"parse_ok": np.zeros(1)})
    rule = GTAlignMethod({})
    features = {"parse_ok": np.zeros(1)}
    assert not rule.uses_judge and rule.judge_features(["x"], [math_example()], features) is features


# ----------------------------------------------------------------------------------------------------------
# A tiny real model


def test_judges_on_a_tiny_real_model_fail_every_verdict_and_count_them(tiny_chat_model_dir):
    from jaxalign.rollout import Sampler
    from jaxalign.sharding import make_mesh

    mesh = make_mesh(data=-1)
    method = GTAlignMethod({"judge": "model", "llm_terms": "pareto", "judge_dtype": "float32",
                            "judge_max_new_tokens": 6, "num_train": 8, "num_eval": 4})
    agent = types.SimpleNamespace(spec=types.SimpleNamespace(model=types.SimpleNamespace(spec=tiny_chat_model_dir)),
                                  sampler=types.SimpleNamespace(mesh=mesh))
    method.setup({"policy": agent})  # no judge_model: the policy's base model, with a sampler of its own
    judge_sampler = method.judge.sampler
    assert isinstance(judge_sampler, Sampler) and judge_sampler.mesh is mesh
    assert judge_sampler.cfg.vocab_size == 49152 and judge_sampler.cfg.num_layers == 2  # the tiny model
    examples = [WRITING, harmful(True), math_example(), math_example(),
                {"data_source": "ambiguity", "prompt": "Can you fix it?", "answer": "", "ambiguous": True}]
    texts = [reply("A short bio."), reply("No."), reply("It is twelve."), reply("The answer is 12."),
             reply("Which file?", analyze=None), "no blocks at all"]
    examples.append(math_example())
    with RewardPool(0, 60.0) as pool:
        scored = episodes.score(method, pool, texts, examples)
    # Random weights write no verdict: every sample with a judge prompt (each parsed one with an analysis,
    # for PO) fails and is counted; the ambiguity reply without an analysis and the unparsed text are not asked.
    np.testing.assert_array_equal(scored.judge_failed_n, [True, True, True, True, False, False])
    np.testing.assert_array_equal(scored.ok_n, [False, False, False, False, True, True])
    assert judge_sampler.last_stats["batch"] >= 7  # 3 answer prompts + 4 PO prompts, in one call
