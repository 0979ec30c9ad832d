"""RLEV: reward formula and ablations, value sources, GRPO cancellation, metrics, config, data plumbing."""

import json
from types import SimpleNamespace

import ml_collections
import numpy as np
import pytest

from jaxalign.methods import METHODS, get_method
from jaxalign.methods.rlev import (
    RLEVConfig,
    RLEVMethod,
    ScorePredictor,
    eos_probability_by_value,
    parse_predicted_score,
    rlev_metrics,
    rlev_rewards,
    score_predictor_messages,
)
from jaxalign.rewards.verifiers import correctness_features

CORRECT = np.array([1.0, 0.0, 1.0, 1.0, np.nan])
VALUES = np.array([0.02, 0.3, 0.1, 0.005, 0.05])


def reward_np(mode, correct, values, alpha=10.0, uniform_scale=1.0):
    return np.asarray(rlev_rewards(correct, values, alpha, uniform_scale, mode=mode)[0])


def test_human_reward_matches_hand_values():
    # s = 1 + min(10 v, 1): 1.2, 2 (clipped), 2 (exactly at the clip), 1.05, 1.5; NaN correct counts as 0.
    np.testing.assert_allclose(reward_np("human", CORRECT, VALUES), [1.2, 0.0, 2.0, 1.05, 0.0], rtol=1e-6)
    np.testing.assert_allclose(reward_np("human", CORRECT, VALUES, alpha=1.0), [1.02, 0.0, 1.1, 1.005, 0.0],
                               rtol=1e-6)


def test_ablation_modes_match_hand_values():
    np.testing.assert_allclose(reward_np("correctness", CORRECT, VALUES), [1, 0, 1, 1, 0])
    np.testing.assert_allclose(reward_np("multiplicative", CORRECT, VALUES), [1.2, 0.0, 2.0, 1.05, 0.0], rtol=1e-6)
    np.testing.assert_allclose(reward_np("multiplicative", np.ones(2), np.array([0.3, 0.5])), [4.0, 6.0], rtol=1e-6)
    np.testing.assert_allclose(reward_np("uniform", CORRECT, VALUES, uniform_scale=1.25), [1.25, 0, 1.25, 1.25, 0])
    with pytest.raises(ValueError, match="unknown RLEV reward mode"):
        reward_np("quadratic", CORRECT, VALUES)


def method(**overrides):
    section = dict(num_train=120, num_eval=30, seed=7)
    section.update(overrides)
    return RLEVMethod(section)


def test_method_rewards_use_training_values_and_report_components():
    rlev = method()
    train, held_out = rlev.load_data()
    examples = train[:4]
    features = {"correct": np.array([1.0, 1.0, 0.0, np.nan])}
    rewards_n, components = rlev.rewards(features, examples)
    values = np.array([e["value"] for e in examples])
    expected = (1 + np.minimum(10 * values, 1)) * np.array([1, 1, 0, 0])
    np.testing.assert_allclose(rewards_n, expected, rtol=1e-6)
    np.testing.assert_array_equal(components["verifier_failed"], [0, 0, 0, 1])
    np.testing.assert_allclose(components["value_scale"], 1 + np.minimum(10 * values, 1), rtol=1e-6)
    # A batch where every verification failed has no "correct" feature at all: all rewards are 0.
    rewards_n, components = rlev.rewards({}, examples)
    np.testing.assert_array_equal(rewards_n, 0.0)
    assert components["verifier_failed"].tolist() == [1.0] * 4


def test_uniform_mode_uses_the_training_mean_scale():
    rlev = method(reward="uniform")
    train, _ = rlev.load_data()
    values = np.array([e["value"] for e in train])
    mean_scale = np.mean(1 + np.minimum(10 * values, 1))
    assert rlev.uniform_scale == pytest.approx(mean_scale, rel=1e-6)
    rewards_n, _ = rlev.rewards({"correct": np.array([1.0, 0.0, 1.0])}, train[:3])
    np.testing.assert_allclose(rewards_n, [mean_scale, 0, mean_scale], rtol=1e-6)
    with pytest.raises(RuntimeError, match="load_data"):
        method(reward="uniform").rewards({"correct": np.ones(1)}, train[:1])


def test_random_mode_shuffles_values_across_the_training_set():
    human_train, _ = method().load_data()
    random_train, _ = method(reward="random").load_data()
    again, _ = method(reward="random").load_data()
    true_values = [e["value"] for e in human_train]
    shuffled = [e["reward_value"] for e in random_train]
    assert sorted(shuffled) == sorted(true_values) and shuffled != true_values
    assert shuffled == [e["reward_value"] for e in again]  # fixed seed
    assert [e["value"] for e in random_train] == true_values  # metrics still see the true values
    rlev = method(reward="random")
    train, _ = rlev.load_data()
    got, _ = rlev.rewards({"correct": np.ones(5)}, train[:5])
    np.testing.assert_allclose(got, 1 + np.minimum(10 * np.array(shuffled[:5]), 1), rtol=1e-6)


def test_weak_value_source_uses_difficulty_buckets():
    train, _ = method(value_source="weak").load_data()
    buckets = {"primary school": 0.01, "junior high school": 0.02, "senior high school": 0.04,
               "university": 0.06, "phd": 0.08}
    for example in train:
        assert example["reward_value"] == pytest.approx(buckets[example["difficulty"]])


class ScriptedSampler:
    def __init__(self, replies):
        self.replies = list(replies)
        self.prompts = None

    def generate_text(self, prompts, sp, key, *, chat=True):
        self.prompts = prompts
        return [[self.replies[i % len(self.replies)]] for i in range(len(prompts))]


def test_predicted_value_source_with_a_stub_predictor():
    sampler = ScriptedSampler(["12", "Score: 3.5 points", "no idea", "-4", "1000"])
    rlev = method(value_source="predicted", num_train=10)
    rlev.setup({"policy": SimpleNamespace(sampler=sampler, tokenizer=None, name="policy")})
    train, _ = rlev.load_data()
    totals = np.array([e["total"] for e in train[:5]])
    parsed = [12 / totals[0], 3.5 / totals[1], None, 1e-3, 1.0]  # -4 -> 0.001 * total; 1000 -> total
    predicted = [e["reward_value"] for e in train]
    for got, want in zip(predicted[:5], parsed):
        if want is not None:
            assert got == pytest.approx(want)
    successes = [v for i, v in enumerate(predicted) if i % 5 != 2]
    assert predicted[2] == pytest.approx(np.median(successes))  # unparsable reply -> median fallback
    assert rlev.data_report["predicted_values"]["failed"] == 2
    system, user = sampler.prompts[0]
    assert user == {"role": "user", "content": train[0]["prompt"]}
    assert f"{totals[0]:g} points" in system["content"]
    with pytest.raises(ValueError, match="setup"):
        method(value_source="predicted").load_data()
    direct = method(value_source="predicted", num_train=10)
    direct.use_sampler(ScriptedSampler(["12"]), sampling_params="sp", key="k")
    assert direct.score_predictor.sampling_params == "sp"
    assert [e["reward_value"] for e in direct.load_data()[0]][:1] == pytest.approx([12 / totals[0]])


def test_parse_predicted_score():
    assert parse_predicted_score("7.5", 10) == 7.5
    assert parse_predicted_score("about 30", 10) == 10
    assert parse_predicted_score("0", 10) == pytest.approx(0.01)
    assert parse_predicted_score("none", 10) is None
    assert "at most 150" in score_predictor_messages("q", 150.0)[0]["content"]
    with pytest.raises(TypeError, match="generate_text"):
        ScorePredictor(object(), None, None)


def grpo_np(rewards_gk, eps=1e-6):
    mean = rewards_gk.mean(axis=1, keepdims=True)
    std = rewards_gk.std(axis=1, ddof=1, keepdims=True)
    return (rewards_gk - mean) / (std + eps)


def rloo_np(rewards_gk):
    k = rewards_gk.shape[1]
    return rewards_gk - (rewards_gk.sum(axis=1, keepdims=True) - rewards_gk) / (k - 1)


def test_grpo_std_normalisation_cancels_the_value_scale_but_rloo_does_not():
    correct_gk = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    values_g = np.array([0.01, 0.05, 0.2])
    values_gk = np.repeat(values_g[:, None], 4, axis=1)
    rlev_gk = reward_np("human", correct_gk.ravel(), values_gk.ravel()).reshape(3, 4)
    scale_g = 1 + np.minimum(10 * values_g, 1)
    np.testing.assert_allclose(rlev_gk, scale_g[:, None] * correct_gk, rtol=1e-6)
    np.testing.assert_allclose(grpo_np(rlev_gk), grpo_np(correct_gk), atol=1e-5)
    np.testing.assert_allclose(rloo_np(rlev_gk), scale_g[:, None] * rloo_np(correct_gk), rtol=1e-5)
    assert not np.allclose(rloo_np(rlev_gk), rloo_np(correct_gk), atol=1e-3)


def test_metrics_match_hand_values():
    correct = np.array([1, 0, 1, 1, 0, np.nan, 1, 0, 1, 0], float)
    values = np.array([0.5, 0.1, 0.2, 0.05, 0.05, 0.3, 0.01, 0.4, 0.02, 0.03])
    lengths = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    metrics = rlev_metrics(correct, values, lengths)
    assert metrics["acc"] == pytest.approx(50.0)
    h_acc = 100 * (0.5 + 0.2 + 0.05 + 0.01 + 0.02) / 1.66
    assert metrics["h_acc"] == pytest.approx(h_acc)
    assert metrics["resp_length"] == 55.0
    assert metrics["value_density"] == pytest.approx(h_acc / 55.0)
    assert metrics["acc_top20_value"] == pytest.approx(50.0)  # values 0.5 (right) and 0.4 (wrong)
    assert metrics["acc_bottom20_value"] == pytest.approx(100.0)  # values 0.01 and 0.02, both right
    with pytest.raises(ValueError, match="equal, non-zero"):
        rlev_metrics(correct, values[:3], lengths)


def test_method_eval_metrics():
    rlev = method()
    _, held_out = rlev.load_data()
    examples = held_out[:4]
    features = {"correct": np.array([1.0, 0.0, 1.0, np.nan]), "has_answer": np.array([1.0, 1.0, 1.0, 0.0])}
    metrics = rlev.eval_metrics(features, examples, np.array([5, 10, 15, 20]))
    values = np.array([e["value"] for e in examples])
    assert metrics["h_acc"] == pytest.approx(100 * (values[0] + values[2]) / values.sum())
    assert metrics["verifier_failed"] == 0.25 and metrics["has_answer"] == 75.0


def test_eos_probability_by_value():
    eos = np.array([[0.1, 0.3, 0.0], [0.2, 0.2, 0.6], [0.5, 0.7, 0.9], [0.4, 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]], bool)
    values = np.array([0.01, 0.02, 0.3, 0.4])
    result = eos_probability_by_value(eos, mask, values, num_buckets=2, num_position_bins=2)
    np.testing.assert_allclose(result.mean_eos_prob_b, [(0.1 + 0.3 + 0.2 + 0.2 + 0.6) / 5, (0.5 + 0.7 + 0.9 + 0.4) / 4])
    # position bins: index / length < 0.5 -> bin 0. Low bucket: bin 0 = {0.1, 0.2, 0.2}, bin 1 = {0.3, 0.6}.
    np.testing.assert_allclose(result.mean_eos_prob_bp[0], [0.5 / 3, 0.45])
    np.testing.assert_allclose(result.mean_eos_prob_bp[1], [(0.5 + 0.7 + 0.4) / 3, 0.9])
    np.testing.assert_array_equal(result.num_samples_b, [2, 2])


def test_config_from_dicts_configdicts_and_errors():
    cd = ml_collections.FrozenConfigDict(ml_collections.ConfigDict(dict(reward="human", alpha=5.0,
                                                                        dataset="embedded")))
    config = RLEVConfig.from_dict(cd)
    assert (config.reward, config.alpha, config.dataset) == ("human", 5.0, "embedded")
    for field, old, new in (("reward", "human_aligned", "human"), ("dataset", "embedded_exam", "embedded")):
        with pytest.raises(ValueError, match=f"rlev.{field}='{old}' is now called '{new}'"):
            RLEVConfig.from_dict({field: old})
    assert RLEVConfig.from_dict(None) == RLEVConfig()
    with pytest.raises(ValueError, match="unknown keys \\['alfa'\\]"):
        RLEVConfig.from_dict({"alfa": 1.0})
    with pytest.raises(ValueError, match="rlev.reward"):
        RLEVConfig(reward="linear")
    with pytest.raises(ValueError, match="rlev.value_source"):
        RLEVConfig(value_source="oracle")
    with pytest.raises(ValueError, match="rlev.alpha"):
        RLEVConfig(alpha=0.0)
    with pytest.raises(ValueError, match="rlev.num_train"):
        RLEVConfig(num_train=-1)
    with pytest.raises(dataclasses_frozen_error()):
        config.alpha = 1.0
    assert METHODS["rlev"] is RLEVMethod and get_method("rlev") is RLEVMethod


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_local_rlev_file_is_split_and_weak_source_needs_difficulty(tmp_path):
    rows = [
        {"query": json.dumps([{"role": "user", "content": f"What is {i} + 1?"}]), "label": str(i + 1),
         "score": 1 + i % 4, "total": 40}
        for i in range(20)
    ]
    rows.append({"query": "broken", "label": "1", "score": 50, "total": 40})
    path = tmp_path / "exam.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rlev = RLEVMethod(dict(dataset=str(path), num_train=0, num_eval=5, skip_invalid=True))
    train, held_out = rlev.load_data()
    assert (len(train), len(held_out)) == (15, 5)
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in held_out}
    assert rlev.data_report["rows"]["file"]["num_skipped"] == 1
    with pytest.raises(AttributeError):
        rlev.data_report = {}  # a read-only view of what loading found
    assert all(e["value"] == pytest.approx(e["score"] / 40) for e in train)
    with pytest.raises(ValueError, match="row 20"):
        RLEVMethod(dict(dataset=str(path), num_train=0, num_eval=5)).load_data()
    with pytest.raises(ValueError, match="difficulty"):
        RLEVMethod(dict(dataset=str(path), num_eval=5, skip_invalid=True, value_source="weak")).load_data()


def test_policy_messages_and_answer_format_fit_the_verifier():
    rlev = method()
    train, _ = rlev.load_data()
    system, user = rlev.messages(train[0])
    assert system["role"] == "system" and '"Answer: X"' in system["content"]
    assert user == {"role": "user", "content": train[0]["prompt"]}
    response = f"I work it out.\nAnswer: {train[0]['answer']}"
    assert rlev.feature_fn(response, train[0]) == {"correct": 1.0, "has_answer": 1.0}
    assert rlev.feature_fn is correctness_features
    custom = method(system_prompt="Be brief.")
    assert custom.messages(train[0])[0]["content"] == "Be brief."
