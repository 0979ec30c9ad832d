"""WaltzRL rewards, feedback parsing, the single-agent reduction and the metrics, against hand values."""

import json
import math

import numpy as np
import pytest

from jaxalign.methods.waltzrl.rewards import (
    Feedback,
    choose_conversation_sample,
    choose_feedback_turn,
    conversation_reward,
    f1_score,
    feedback_arrays,
    feedback_rewards,
    parse_feedback,
    triggered,
    waltz_metrics,
)

GOOD = '{"reasoning": "It gives lock-picking steps.", "unsafe": true, "overrefuse": false, "feedback": "Decline."}'


# --- parse_feedback -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    GOOD,
    "  \n" + GOOD + "\n\n",
    "```json\n" + GOOD + "\n```",
    "```JSON\n" + GOOD + "```",
    "```\n" + GOOD + "\n```\n",
    '{"feedback": "Decline.", "overrefuse": false, "unsafe": true, "reasoning": "It gives lock-picking steps."}',
])
def test_parse_feedback_accepts(text):
    fb = parse_feedback(text)
    assert fb == Feedback(valid=True, unsafe=True, overrefuse=False, feedback="Decline.",
                          reasoning="It gives lock-picking steps.")
    assert triggered(fb)


def _reply(**changes):
    value = {"reasoning": "r", "unsafe": False, "overrefuse": False, "feedback": ""}
    value.update(changes)
    return json.dumps({k: v for k, v in value.items() if v is not Ellipsis})


@pytest.mark.parametrize("text, error", [
    (_reply(unsafe="true"), "'unsafe' is 'true', expected true or false"),
    (_reply(overrefuse=1), "'overrefuse' is 1"),
    (_reply(unsafe=None), "'unsafe' is None"),
    (_reply(reasoning=None), "'reasoning' is NoneType"),
    (_reply(feedback=["a"]), "'feedback' is list"),
    (_reply(extra="x"), "expected exactly"),
    (_reply(feedback=...), "expected exactly"),
    (_reply() + " " + _reply(), "text after the JSON object"),
    (_reply() + " Hope this helps!", "text after the JSON object"),
    ("Here is my review: " + _reply(), "does not start with a JSON object"),
    ("[" + _reply() + "]", "does not start with a JSON object"),
    ("{'reasoning': 'r', 'unsafe': false, 'overrefuse': false, 'feedback': ''}", "not valid JSON"),
    ('{"reasoning": "r", "unsafe": false, "unsafe": true, "overrefuse": false, "feedback": ""}', "repeated keys"),
    ("```json\n" + _reply(), "does not start with a JSON object"),  # fence never closed
    ("", "does not start with a JSON object"),
    (None, "reply is NoneType"),
])
def test_parse_feedback_rejects(text, error):
    fb = parse_feedback(text)
    assert not fb.valid and error in fb.error
    assert (fb.unsafe, fb.overrefuse, fb.feedback, fb.reasoning) == (None, None, "", "")
    assert not triggered(fb)


def test_triggered_and_arrays():
    replies = [parse_feedback(_reply(unsafe=True)), parse_feedback(_reply(overrefuse=True)),
               parse_feedback(_reply()), parse_feedback("oops")]
    assert [triggered(fb) for fb in replies] == [True, True, False, False]
    arrays = feedback_arrays(replies)
    assert arrays["valid"].tolist() == [True, True, True, False]
    assert arrays["unsafe"].tolist() == [True, False, False, False]
    assert arrays["overrefuse"].tolist() == [False, True, False, False]
    assert arrays["triggered"].tolist() == [True, True, False, False]


# --- rewards --------------------------------------------------------------------------------------------


def test_conversation_reward():
    reward = conversation_reward([False, True, False, True], [False, False, True, True])
    assert reward.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert float(conversation_reward(False, False)) == 1.0
    assert conversation_reward(np.array([0, 1]), np.array([0, 0])).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="booleans"):
        conversation_reward([0.5], [0])


# Episodes, one per column:
#  0: labels right, c0 bad -> revision good   (DIR +1)
#  1: labels right, c0 bad -> revision bad    (DIR 0)
#  2: labels right, c0 good, revision bad     (DIR -1: the formula's lower end)
#  3: labels wrong, revision improves         (DIR +1 but R_label 0)
#  4: labels right, c0 good, no revision      (satisfactory, DIR 0)
#  5: labels wrong (says satisfactory on a bad c0), no revision
#  6: reply did not parse, no revision
EPISODES = dict(
    valid=[True, True, True, True, True, True, False],
    pred_unsafe=[True, True, False, False, False, False, False],
    pred_overrefuse=[False, False, False, True, False, False, False],
    judge_unsafe=[True, True, False, True, False, True, False],
    judge_overrefuse=[False, False, False, False, False, False, True],
    reward_before=[0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0],
    reward_after=[1.0, 0.0, 0.0, 1.0, np.nan, np.nan, np.nan],
    has_revision=[True, True, True, True, False, False, False],
)


def test_feedback_reward_parts():
    out = feedback_rewards(**EPISODES)
    assert out["dir"].tolist() == [1.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0]
    assert out["label"].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert out["format"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert out["outcome"].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert out["reward"].dtype == np.float32


def test_stage1_dir_label():
    # 0.65 * DIR * label + 0.25 * label + 0.1 * format
    expected = [1.0, 0.35, -0.30, 0.1, 0.35, 0.1, 0.0]
    np.testing.assert_allclose(feedback_rewards(**EPISODES)["reward"], expected, atol=1e-6)
    rewards = feedback_rewards(**EPISODES)["reward"]
    assert rewards.max() == pytest.approx(1.0) and rewards.min() == pytest.approx(-0.30)


def test_stage2_lambda_zero():
    expected = [0.75, 0.1, -0.55, 0.1, 0.1, 0.1, 0.0]
    rewards = feedback_rewards(**EPISODES, lam=0.0)["reward"]
    np.testing.assert_allclose(rewards, expected, atol=1e-6)
    assert rewards.max() == pytest.approx(0.75) and rewards.min() == pytest.approx(-0.55)


def test_dir_only_ablation():
    # 0.65 * DIR + 0.25 * label + 0.1 * format: episode 3 is paid for the improvement despite wrong labels.
    expected = [1.0, 0.35, -0.30, 0.75, 0.35, 0.1, 0.0]
    np.testing.assert_allclose(feedback_rewards(**EPISODES, mode="dir_only")["reward"], expected, atol=1e-6)


def test_no_dir_ablation():
    # 0.65 * R_c(final answer) * label + 0.25 * label + 0.1 * format.
    expected = [1.0, 0.35, 0.35, 0.1, 1.0, 0.1, 0.0]
    np.testing.assert_allclose(feedback_rewards(**EPISODES, mode="no_dir")["reward"], expected, atol=1e-6)


def test_custom_coefficients():
    out = feedback_rewards(**EPISODES, alpha=1.0, lam=0.5, gamma=0.2)
    np.testing.assert_allclose(out["reward"], [1.7, 0.7, -0.3, 0.2, 0.7, 0.2, 0.0], atol=1e-6)


def test_feedback_reward_errors():
    bad = dict(EPISODES, has_revision=[True, True, True, True, False, False, True])
    with pytest.raises(ValueError, match=r"episodes \[6\] have a revision after a feedback reply that did not parse"):
        feedback_rewards(**bad)
    with pytest.raises(ValueError, match="unknown feedback reward mode"):
        feedback_rewards(**EPISODES, mode="dir")
    with pytest.raises(ValueError, match="shape"):
        feedback_rewards(**dict(EPISODES, reward_before=[0.0]))


# --- reduction ------------------------------------------------------------------------------------------


def test_conversation_sample_modes():
    assert choose_conversation_sample(0, 5, "tau_a").tolist() == [True] * 5
    assert choose_conversation_sample(0, 5, "tau_b").tolist() == [False] * 5
    assert choose_conversation_sample(0, 4, "mix", p_tau_a=1.0).tolist() == [True] * 4
    assert choose_conversation_sample(0, 4, "mix", p_tau_a=0.0).tolist() == [False] * 4
    assert choose_conversation_sample(0, 0).shape == (0,)
    for p in (0.5, 0.3):
        picks = choose_conversation_sample(np.random.default_rng(1), 20000, "mix", p_tau_a=p)
        assert abs(picks.mean() - p) < 0.015
    first = choose_conversation_sample(7, 64)
    assert np.array_equal(first, choose_conversation_sample(7, 64))
    assert 0 < first.sum() < 64
    with pytest.raises(ValueError, match="unknown conversation sample mode"):
        choose_conversation_sample(0, 3, "both")
    with pytest.raises(ValueError, match="p_tau_a"):
        choose_conversation_sample(0, 3, p_tau_a=1.5)


def test_feedback_turn():
    assert choose_feedback_turn(0, np.array([1, 1, 1])).tolist() == [0, 0, 0]
    assert choose_feedback_turn(0, np.array([0, 1, 0])).tolist() == [-1, 0, -1]
    picks = choose_feedback_turn(np.random.default_rng(3), np.full(30000, 3))
    counts = np.bincount(picks, minlength=3) / picks.size
    assert set(np.unique(picks).tolist()) == {0, 1, 2}
    np.testing.assert_allclose(counts, [1 / 3] * 3, atol=0.015)
    with pytest.raises(ValueError, match="num_rounds"):
        choose_feedback_turn(0, np.array([-1]))


# --- metrics --------------------------------------------------------------------------------------------

# Three harmful prompts (0-2), three benign (3-5).
#  0: c0 unsafe, feedback right (unsafe) -> revision safe
#  1: c0 unsafe, feedback wrong (satisfactory) -> c0 stays
#  2: c0 safe, feedback unparsed -> c0 stays
#  3: c0 refuses, feedback right (overrefuse) -> revision answers
#  4: c0 refuses, feedback wrong (says unsafe) -> revision still refuses
#  5: c0 fine, feedback right (satisfactory)
BATCH = dict(
    harmful_prompt=[True, True, True, False, False, False],
    c0_unsafe=[True, True, False, False, False, False],
    c0_overrefuse=[False, False, False, True, True, False],
    final_unsafe=[False, True, False, False, False, False],
    final_overrefuse=[False, False, False, False, True, False],
    feedback_valid=[True, True, False, True, True, True],
    feedback_unsafe=[True, False, False, False, True, False],
    feedback_overrefuse=[False, False, False, True, False, False],
)


def test_metrics_hand_batch():
    m = waltz_metrics(**BATCH)
    expected = {
        "asr": 1 / 3, "orr": 1 / 3, "f1": 2 / 3,
        "asr_c0": 2 / 3, "orr_c0": 2 / 3, "f1_c0": 1 / 3,
        "ftr": 0.5, "ftr_harmful": 1 / 3, "ftr_benign": 2 / 3,
        "label_acc": 0.5, "label_acc_harmful": 1 / 3, "label_acc_benign": 2 / 3,
        "parse_rate": 5 / 6, "mean_revisions": 0.5, "num_harmful": 3.0, "num_benign": 3.0,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    assert waltz_metrics(**BATCH, num_revisions=[1, 0, 0, 1, 2, 0])["mean_revisions"] == pytest.approx(4 / 6)


def test_metrics_empty_subsets_are_nan():
    harmful_only = {k: v[:3] for k, v in BATCH.items()}
    m = waltz_metrics(**harmful_only)
    assert m["asr"] == pytest.approx(1 / 3) and math.isnan(m["orr"]) and math.isnan(m["f1"])
    assert math.isnan(m["ftr_benign"]) and m["num_benign"] == 0.0
    empty = waltz_metrics(**{k: [] for k in BATCH})
    assert all(math.isnan(empty[k]) for k in ("asr", "orr", "f1", "ftr", "label_acc", "parse_rate"))
    with pytest.raises(ValueError, match="one length"):
        waltz_metrics(**dict(BATCH, final_unsafe=[False]))


def test_f1_score():
    assert f1_score(0.037, 0.076) == pytest.approx(0.943, abs=5e-4)  # the paper's WaltzRL row
    assert f1_score(1.0, 1.0) == 0.0 and f1_score(0.0, 0.0) == 1.0
    assert f1_score(0.5, 0.0) == pytest.approx(2 / 3)
    assert math.isnan(f1_score(float("nan"), 0.1))
