"""GTAlign: the four-block parser, payoff maths, welfare reward, data, config and steering, against
hand values and NumPy references written here."""

import json
import math

import numpy as np
import pytest

from jaxalign.methods.gtalign import (
    GTAlignConfig,
    GTAlignMethod,
    example_from_row,
    game,
    game_messages,
    gtalign_features,
    zscore_by_source,
)
from jaxalign.methods.gtalign.prompts import GAME_PREFIX
from jaxalign.rewards.pool import RewardPool

MATRIX = {"DQ_AQ": (2.0, 2.5), "DQ_CQ": (1.0, 0.5), "DQ_DA": (3.1, 3.4),
          "VQ_AQ": (1.5, 1.2), "VQ_CQ": (2.0, 1.8), "VQ_DA": (0.5, 0.2)}


def matrix_text(matrix=MATRIX):
    return json.dumps({k: {"LLM": v[0], "user": v[1]} for k, v in matrix.items()})


def completion(analyze="The frontier is DQ_DA alone. Choose DQ_DA.", response="The answer is 12.",
               payoff=None, thinking="The question is definite; a direct answer saves the user's time."):
    return (f"<thinking>{thinking}</thinking>\n<payoff>{payoff or matrix_text()}</payoff>\n"
            f"<analyze>{analyze}</analyze>\n<response>{response}</response>")


# ----------------------------------------------------------------------------------------------------------
# Parsing


def test_parse_payoffs_accepts_json_and_python_literals():
    assert game.parse_payoffs(matrix_text()) == MATRIX
    literal = "{" + ", ".join(f"'{k}': {{'LLM': {v[0]}, 'user': {v[1]}}}" for k, v in MATRIX.items()) + ",}"
    assert game.parse_payoffs(literal) == MATRIX
    curly = matrix_text().replace('"', "\u201c", 1)  # a curly opening quote on the first key
    assert game.parse_payoffs(curly.replace("\u201cDQ_AQ\"", "\u201cDQ_AQ\u201d")) == MATRIX
    ints = matrix_text({k: (int(v[0]), -2) for k, v in MATRIX.items()})
    assert game.parse_payoffs(ints)["DQ_DA"] == (3.0, -2.0)


@pytest.mark.parametrize("body, message", [
    ("not json at all {", "neither JSON"),
    ("[1, 2]", "must be an object"),
    (json.dumps({k: {"LLM": 1, "user": 1} for k in list(MATRIX)[:5]}), "exactly"),
    (json.dumps({**{k: {"LLM": 1, "user": 1} for k in MATRIX}, "DQ_XX": {"LLM": 1, "user": 1}}), "exactly"),
    (json.dumps({**{k: {"LLM": 1, "user": 1} for k in MATRIX}, "DQ_DA": {"LLM": 1, "user": 1, "x": 0}}),
     "exactly the keys LLM and user"),
    (json.dumps({**{k: {"LLM": 1, "user": 1} for k in MATRIX}, "DQ_DA": {"LLM": True, "user": 1}}), "finite number"),
    (json.dumps({**{k: {"LLM": 1, "user": 1} for k in MATRIX}, "DQ_DA": {"LLM": "3", "user": 1}}), "finite number"),
    (json.dumps({k: {"LLM": 1, "user": 1} for k in MATRIX}).replace("1}", "NaN}", 1), "finite number"),
])
def test_parse_payoffs_rejects_malformed_blocks(body, message):
    with pytest.raises(game.PayoffError, match=message):
        game.parse_payoffs(body)


def test_tags_and_format():
    text = completion()
    assert game.extract_tag(text, "response") == "The answer is 12."
    assert game.extract_tag("<response> a </response><response>b</response>", "response") == "a"  # first match
    assert game.extract_tag(text, "missing") is None
    assert game.format_ok(text)
    assert game.format_ok(text + "\ntrailing text")  # the reference's MULTILINE `$`, kept on purpose
    assert not game.format_ok("Sure! " + text)
    assert not game.format_ok(text + " trailing on the same line")
    assert not game.format_ok(text.replace("<analyze>", "<analysis>").replace("</analyze>", "</analysis>"))


# ----------------------------------------------------------------------------------------------------------
# Payoff maths


def _random_matrix(rng, ties=False):
    values = rng.choice([-1.0, 0.0, 1.0, 2.0], size=(6, 2)) if ties else np.round(rng.uniform(-5, 5, (6, 2)), 1)
    return {k: (float(v[0]), float(v[1])) for k, v in zip(game.PAYOFF_KEYS, values)}


@pytest.mark.parametrize("seed", range(8))
def test_quality_frontier_and_choices_against_numpy(seed):
    rng = np.random.default_rng(seed)
    matrix = _random_matrix(rng, ties=seed % 2 == 1)
    llm, user = (np.array([matrix[k][i] for k in game.PAYOFF_KEYS]) for i in (0, 1))
    expected_quality = (np.sum(llm != user) + np.sum(np.abs(user - llm) / np.maximum(
        np.maximum(np.abs(user), np.abs(llm)), 1e-8) > 0.1)) / 12
    assert game.matrix_quality(matrix) == pytest.approx(expected_quality)
    dominated = [any(llm[j] >= llm[i] and user[j] >= user[i] and (llm[j] > llm[i] or user[j] > user[i])
                     for j in range(6)) for i in range(6)]
    assert game.pareto_frontier(matrix) == [k for k, d in zip(game.PAYOFF_KEYS, dominated) if not d]
    order = sorted(range(6), key=lambda i: (-(llm[i] + user[i]), -user[i], -llm[i], i))
    assert game.welfare_choice(matrix) == game.PAYOFF_KEYS[order[0]]
    product = llm * user
    assert game.nash_choices(matrix) == [k for k, p in zip(game.PAYOFF_KEYS, product) if p == product.max()]
    assert game.welfare_choice(matrix) in game.pareto_frontier(matrix)


def test_welfare_choice_tie_breaks():
    tied_sum = {k: (0.0, 0.0) for k in game.PAYOFF_KEYS}
    tied_sum.update(DQ_DA=(3.0, 1.0), VQ_CQ=(1.0, 3.0))  # same sum: the user decides
    assert game.welfare_choice(tied_sum) == "VQ_CQ"
    tied_sum.update(VQ_CQ=(3.0, 1.0))  # same sum and user: the first key in order
    assert game.welfare_choice(tied_sum) == "DQ_DA"


def test_steer_payoffs_hand_values():
    matrix = {k: (1.0, 1.0) for k in game.PAYOFF_KEYS}
    subscription = game.steer_payoffs(matrix, llm_shift=-2.0)
    assert subscription["DQ_DA"] == (-1.0, 1.0) and subscription["DQ_CQ"] == (-1.0, 1.5)
    assert subscription["VQ_AQ"] == (-1.0, 2.0)
    api = game.steer_payoffs(matrix, user_shift=-1.5)
    assert api["DQ_DA"] == (2.0, -0.5) and api["DQ_CQ"] == (1.0, -0.5) and api["VQ_AQ"] == (1.5, -0.5)
    assert game.steer_payoffs(matrix) == matrix
    assert game.steer_payoffs({**matrix, "DQ_DA": (0.04, 0.26)}, llm_shift=0.01)["DQ_DA"] == (0.1, 0.3)


def test_length_terms_match_the_formulas_and_the_documented_shape():
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    for n in (0, 20, 260, 500, 900):
        assert game.band_score(n, 20, 500) == pytest.approx(sigmoid(0.005 * (n - 20)) * sigmoid(0.005 * (500 - n)))
    peak = max(range(0, 1000), key=lambda n: game.band_score(n, 20, 500))
    assert 255 <= peak <= 265 and game.band_score(peak, 20, 500) == pytest.approx(0.59, abs=0.01)
    assert game.band_score(0, 500, 1000) == pytest.approx(0.08, abs=0.005)
    assert game.brevity_score(250) == pytest.approx(math.exp(-0.5))


# ----------------------------------------------------------------------------------------------------------
# Features and rewards

MATH = {"prompt": "Ann has 7 apples and gets 5 more. How many?", "data_source": "math", "answer": "12",
        "ambiguous": False}
VAGUE = {"prompt": "Can you help me fix it?", "data_source": "ambiguity", "answer": "", "ambiguous": True}
CLEAR = {"prompt": "Ann has 7 apples and gets 5 more. How many?", "data_source": "ambiguity", "answer": "12",
         "ambiguous": False}


def test_ambiguity_answer_terms_and_the_chosen_action():
    ask = completion(analyze="Pick VQ_CQ.", response="Which device is broken?")
    answer = completion(analyze="Pick DQ_DA.", response="You will have 12 apples.")
    assert gtalign_features(ask, VAGUE)["answer_llm"] == 1.0
    assert gtalign_features(answer, VAGUE)["answer_llm"] == 0.0
    assert gtalign_features(answer, CLEAR)["answer_llm"] == 1.0
    assert gtalign_features(ask, CLEAR)["answer_llm"] == 0.0
    # The analysis chooses nothing: the action is read off the reply (a question alone is CQ).
    unnamed = completion(analyze="Asking is best.", response="Which device is broken?")
    f = gtalign_features(unnamed, VAGUE)
    assert f["action_CQ"] == 1.0 and f["answer_llm"] == 1.0 and f["welfare_consistent"] == 0.0


def test_unparsable_replies_get_all_zero_features_and_partial_ones_keep_their_reward():
    for text in ("Just an answer: 12", completion(payoff='{"DQ_DA": 1}'), completion().replace("</response>", "")):
        assert all(v == 0.0 for v in gtalign_features(text, MATH).values())
    no_analyze = "<thinking>t</thinking><payoff>" + matrix_text() + "</payoff><response>The answer is 12.</response>"
    f = gtalign_features(no_analyze, MATH)
    assert f["parse_ok"] == 1.0 and f["format"] == 0.0 and f["pareto"] == 0.0 and f["answer_llm"] == 1.0


def _numpy_reward(f, mode, llm_terms):
    eps = 1e-4
    u = eps + 0.5 * f["answer_user"] + 0.2 * f["response_band"] + 0.3 * f["reasoning_brevity"]
    if llm_terms == "main":
        l = eps + 0.2 * f["format"] + 0.2 * f["quality"] + 0.4 * f["answer_llm"] + 0.2 * f["full_band"]  # noqa: E741
    else:
        l = (eps + 0.2 * f["pareto"] + 0.2 * f["quality"] + 0.2 * f["format"] + 0.35 * f["answer_llm"]  # noqa: E741
             + 0.05 * f["full_band"])
    score = {"welfare": np.sqrt(u * l), "linear": (u + l) / 2, "user": u, "llm": l}[mode]
    return np.where(f["parse_ok"] > 0.5, score, 0.0)


@pytest.mark.parametrize("mode", ["welfare", "linear", "user", "llm"])
@pytest.mark.parametrize("llm_terms", ["main", "pareto"])
def test_rewards_against_numpy(mode, llm_terms):
    texts = [completion(), completion(response="It is 13."), "no format", completion(analyze="Pick VQ_CQ.")]
    examples = [MATH, MATH, MATH, CLEAR]
    feats = [gtalign_features(t, e) for t, e in zip(texts, examples)]
    f = {k: np.array([x[k] for x in feats]) for k in feats[0]}
    method = GTAlignMethod({"reward": mode, "llm_terms": llm_terms})
    rewards, components = method.rewards(f, examples)
    np.testing.assert_allclose(rewards, _numpy_reward(f, mode, llm_terms), rtol=1e-5)
    assert rewards[2] == 0.0 and rewards[0] > rewards[1]
    np.testing.assert_allclose(components["welfare"], np.sqrt(components["user"] * components["llm"]), rtol=1e-6)


def test_zscore_by_source_against_numpy():
    rewards = np.array([0.1, 0.5, 0.3, 2.0, 2.0, np.nan, 0.7])
    sources = ["a", "a", "a", "b", "b", "b", "c"]
    got = zscore_by_source(rewards, sources)
    a = rewards[:3]
    np.testing.assert_allclose(got[:3], (a - a.mean()) / (a.std() + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(got[3:5], 0.0)  # constant source: centred, not blown up
    assert np.isnan(got[5]) and got[6] == 0.0
    method = GTAlignMethod({"normalize": "zscore"})
    f = {k: np.array([v]) for k, v in gtalign_features(completion(), MATH).items()}
    rewards_n, components = method.rewards({k: np.repeat(v, 2) for k, v in f.items()}, [MATH, VAGUE])
    np.testing.assert_allclose(rewards_n, 0.0, atol=1e-6)  # one sample per source
    assert components["raw_reward"][0] > 0


def test_features_run_in_the_reward_pool():
    method = GTAlignMethod({})
    with RewardPool(num_workers=1, timeout_s=60.0) as pool:
        results = pool.map(method.feature_fn, [(completion(), MATH), ("garbage", VAGUE)])
    assert results[0].ok and results[0].value["answer_llm"] == 1.0
    assert results[1].ok and results[1].value["parse_ok"] == 0.0


# ----------------------------------------------------------------------------------------------------------
# Prompts, data and config


def test_messages_hold_the_game_and_the_question():
    messages = game_messages("Plan my trip", first_question="I go to Rome")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.endswith("Question: Plan my trip") and "I go to Rome" in user
    for key in game.PAYOFF_KEYS:
        assert key in user
    assert GAME_PREFIX.format(question="q").count("{") == GAME_PREFIX.format(question="q").count("}")
    assert game_messages("q", system_prompt="S")[0]["content"] == "S"


def test_rows_in_the_reference_schema_and_the_flat_one():
    prefix = "Think about the game first.Question: "
    row = {"data_source": "ambig_qa", "reward_model": {"ground_truth": "multipleQAs###a###b"},
           "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "first q"},
                      {"role": "assistant", "content": "a"}, {"role": "user", "content": prefix + "Who won?"}]}
    example = example_from_row(row, 0)
    assert example["prompt"] == "Who won?" and example["first_question"] == "first q" and example["ambiguous"]
    single = example_from_row({**row, "reward_model": {"ground_truth": "singleAnswer###x"}}, 1)
    assert single["ambiguous"] is False
    flat = example_from_row({"question": "2+2?", "data_source": "math", "answer": 4}, 2)
    assert flat == {"prompt": "2+2?", "first_question": None, "data_source": "math", "answer": "4",
                    "ambiguous": False, "index": 2}
    with pytest.raises(ValueError, match="row 3: data_source 'code_contests' is not supported"):
        example_from_row({**row, "data_source": "code_contests"}, 3)
    with pytest.raises(ValueError, match="row 4: no ground truth"):
        example_from_row({"question": "q", "data_source": "math"}, 4)
    with pytest.raises(ValueError, match="row 5: ambiguity ground truth"):
        example_from_row({"question": "q", "data_source": "ambig_qa", "ground_truth": "maybe"}, 5)
    with pytest.raises(ValueError, match="row 6: .*user message"):
        example_from_row({"prompt": [{"role": "system", "content": "s"}], "data_source": "math", "answer": 1}, 6)


def test_load_data_from_a_local_file_and_the_embedded_set(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"question": f"What is {i} + 1?", "data_source": "math", "answer": str(i + 1)} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, held_out = GTAlignMethod({"dataset": str(path), "num_train": 0, "num_eval": 3}).load_data()
    assert len(train) == 9 and len(held_out) == 3
    assert {e["prompt"] for e in train} | {e["prompt"] for e in held_out} == {r["question"] for r in rows}
    method = GTAlignMethod({"num_train": 40, "num_eval": 10, "seed": 3})
    train, held_out = method.load_data()
    assert (train, held_out) == GTAlignMethod({"num_train": 40, "num_eval": 10, "seed": 3}).load_data()
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in held_out}
    assert {e["data_source"] for e in train} == {"math", "ambiguity"}
    assert any(e["ambiguous"] for e in train) and any(not e["ambiguous"] for e in train)
    for e in train:  # definite questions have integer answers; the math ones are checkable
        if e["data_source"] == "math":
            assert e["answer"].isdigit() and not e["ambiguous"]


@pytest.mark.parametrize("fields, message", [
    ({"reward": "nash"}, "gtalign.reward"),
    ({"llm_terms": "all"}, "gtalign.llm_terms"),
    ({"normalize": "minmax"}, "gtalign.normalize"),
    ({"num_train": 0}, "must be > 0 for the embedded set"),
    ({"response_words": (500, 20)}, "low < high"),
    ({"reasoning_scale": 0}, "reasoning_scale"),
    ({"no_such_field": "x"}, "unknown keys"),
])
def test_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        GTAlignConfig.from_dict(fields)


# ----------------------------------------------------------------------------------------------------------
# Steering


class ScriptedSampler:
    """Stands in for a Sampler: returns scripted first parts and records the continuation requests."""

    def __init__(self, firsts, continuation):
        self.firsts, self.continuation, self.calls = firsts, continuation, []

    def generate_text(self, chats, sp, key, **kwargs):
        self.calls.append(("generate", chats, sp))
        return [[t] for t in self.firsts]

    def continue_text(self, chats, prefixes, sp, key, **kwargs):
        self.calls.append(("continue", prefixes, sp))
        return [[self.continuation] for _ in prefixes]


def test_steer_reprices_the_matrix_and_continues_from_it():
    import jax

    from jaxalign.methods.gtalign.steer import steer
    from jaxalign.rollout import SamplingParams

    # Before: DQ_DA (3.0, 2.0) beats DQ_AQ (2.0, 2.8) on the sum, 5.0 vs 4.8. Subscription pricing (-1 on
    # every LLM payoff, user bonus +0 for DA, +1 for AQ) makes it 4.0 vs 4.8: the answer-and-ask cell wins.
    matrix = {**{k: (0.0, 0.5) for k in game.PAYOFF_KEYS}, "DQ_DA": (3.0, 2.0), "DQ_AQ": (2.0, 2.8)}
    first = "<thinking>Definite question.</thinking>\n<payoff>" + matrix_text(matrix) + "</payoff>"
    sampler = ScriptedSampler([first, "no payoff here", "<payoff>{bad}</payoff>"],
                              "I now pick DQ_AQ.</analyze>\n<response>12. Want the steps?</response>")
    sp = SamplingParams(max_new_tokens=64, greedy=True)
    replies = steer(sampler, ["q1", "q2", "q3"], sp, jax.random.key(0), llm_shift=-1.0)
    good = replies[0]
    assert good.payoffs == matrix and good.choice_before == "DQ_DA"
    assert good.steered == game.steer_payoffs(matrix, llm_shift=-1.0)
    assert good.steered["DQ_DA"] == (2.0, 2.0) and good.steered["DQ_AQ"] == (1.0, 3.8)
    assert good.choice_after == "DQ_AQ" and good.chosen == "DQ_AQ" and good.error is None
    assert good.text.startswith("<thinking>Definite question.</thinking>\n<payoff>")
    assert game.parse_payoffs(game.extract_tag(good.text, "payoff")) == good.steered
    assert good.text.endswith("<response>12. Want the steps?</response>")
    assert "no complete <payoff>" in replies[1].error and replies[1].text == "no payoff here"
    assert "neither JSON" in replies[2].error
    (kind, chats, first_sp), (kind2, prefixes, rest_sp) = sampler.calls
    assert first_sp.stop_strings == ("</payoff>",) and rest_sp.stop_strings == ()
    assert chats[0][1]["content"].endswith("Question: q1") and len(prefixes) == 1
    with pytest.raises(ValueError, match="llm_shift"):
        steer(sampler, ["q"], sp, jax.random.key(0))
    with pytest.raises(ValueError, match="n must be 1"):
        steer(sampler, ["q"], SamplingParams(n=2), jax.random.key(0), user_shift=-1.0)


def test_steer_command_is_added_by_the_method_with_the_shared_options():
    import argparse

    from jaxalign.methods.gtalign.steer import cmd_steer

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="jaxalign")
    sub = parser.add_subparsers(dest="command", required=True)
    GTAlignMethod.add_commands(sub, [common])
    args = parser.parse_args(["steer", "--model", "m", "--prompt", "q", "--user-shift", "-2", "--log-level", "DEBUG"])
    assert args.fn is cmd_steer and args.log_level == "DEBUG"
    assert (args.llm_shift, args.user_shift, args.max_prompt_len, args.max_new_tokens) == (0.0, -2.0, 2048, 512)
    assert (args.prompt, args.prompts_file, args.batch_size, args.seed, args.greedy) == ("q", None, 16, 0, False)

