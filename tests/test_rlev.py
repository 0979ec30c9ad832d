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


def _word_model(out_dir, first_word, *, constant_reply, seed=0):
    """A random tiny model with a 256-word tokenizer (`first_word` at id 0, '</s>' eos) and a plain chat
    template; with `constant_reply` its final norm is zero, so greedy decoding always says `first_word`."""
    import jax.numpy as jnp
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from jaxalign.models import export_hf, load_model
    from jaxalign.models.tokenizer import Tokenizer as OurTokenizer

    vocab = {first_word: 0, "<pad>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 256)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    model, _ = load_model("random:tiny", seed=seed)
    if constant_reply:
        model.final_norm.value = jnp.zeros_like(model.final_norm.value)
    export_hf(model, OurTokenizer(tok), str(out_dir))
    return str(out_dir)


@pytest.fixture(scope="module")
def word_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlev_models")
    return {"seven": _word_model(root / "seven", "7", constant_reply=True),
            "policy": _word_model(root / "policy", "w0", constant_reply=False, seed=3)}


def test_predictor_model_predicts_the_values_instead_of_the_policy(word_models):
    policy = ScriptedSampler(["12"])  # would give 12 / total if it were asked
    policy.max_prompt_len = 400
    rlev = method(value_source="predicted", num_train=6, predictor_model=word_models["seven"])
    rlev.setup({"policy": SimpleNamespace(sampler=policy, tokenizer=None, name="policy")})
    assert rlev.score_predictor is None  # nothing loaded before load_data needs it
    train, _ = rlev.load_data()
    assert policy.prompts is None
    # The predictor model always replies "7 7 ...": 7 points, clipped to the exam's total.
    for example in train:
        assert example["reward_value"] == pytest.approx(min(7.0, example["total"]) / example["total"])
    report = rlev.data_report["predicted_values"]
    assert report["failed"] == 0 and report["model"] == word_models["seven"]
    assert rlev.score_predictor is None  # released after the pass


def test_predictor_model_config_errors():
    with pytest.raises(ValueError, match="value_source='ground_truth' never uses it"):
        RLEVConfig(predictor_model="/models/predictor")
    with pytest.raises(ValueError, match="no tokenizer"):
        RLEVConfig(value_source="predicted", predictor_model="random:tiny")
    assert RLEVConfig(value_source="predicted", predictor_model="").predictor_model == ""


def test_eval_of_a_predicted_value_run_runs_no_value_prediction(word_models, monkeypatch):
    """`jaxalign eval` needs the eval split only: the policy's sampler is never run over the training split
    to predict values, and a `predictor_model` is never loaded."""
    import ml_collections

    from jaxalign import runs
    from jaxalign.config import apply_overrides, from_config_dict, load_config_file
    from jaxalign.methods.rlev import method as rlev_method

    def never(*args, **kwargs):
        raise AssertionError("eval ran the value predictor")

    monkeypatch.setattr(ScorePredictor, "predict", never)
    monkeypatch.setattr(rlev_method, "build_score_predictor", never)
    overrides = {"method": "rlev", "model.spec": word_models["policy"], "rollout.max_prompt_len": 96,
                 "rollout.max_new_tokens": 4, "train.eval_examples": 4, "logging.progress": False,
                 "rewards.num_workers": 0}
    cd = apply_overrides(load_config_file("configs/tiny_test.py"), {k: str(v) for k, v in overrides.items()})
    with cd.unlocked():
        cd.rlev = ml_collections.ConfigDict(dict(value_source="predicted", num_train=8, num_eval=4))
    metrics = runs.evaluate_checkpoint(from_config_dict(cd), None)
    assert metrics["eval/failed"] == 0.0 and 0.0 <= metrics["eval/acc"] <= 100.0
    # With a predictor model: setup takes the policy's sampler, the eval split loads, nothing else.
    rlev = method(value_source="predicted", num_train=8, num_eval=4, predictor_model=word_models["seven"])
    rlev.setup({"policy": SimpleNamespace(sampler=ScriptedSampler(["12"]), tokenizer=None, name="policy")})
    held_out = rlev.load_eval_data()
    assert len(held_out) == 4 and all("reward_value" not in e for e in held_out)
    assert held_out == method(num_train=8, num_eval=4).load_data()[1]


def test_parse_predicted_score():
    assert parse_predicted_score("7.5", 10) == 7.5
    assert parse_predicted_score("about 30", 10) == 10
    assert parse_predicted_score("0", 10) == pytest.approx(0.01)
    assert parse_predicted_score("none", 10) is None
    assert "at most 150" in score_predictor_messages("q", 150.0)[0]["content"]
    with pytest.raises(TypeError, match="generate_text"):
        ScorePredictor(object(), None, None)


def test_grpo_std_normalisation_cancels_the_value_scale_but_rloo_does_not():
    """Through the library: RLEVMethod's rewards into the library's estimators, against hand values."""
    from jaxalign.algorithms.advantages import AdvantageConfig, compute_advantages, group_ids

    correct_gk = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    examples = [{"prompt": f"q{g}", "answer": "1", "value": v} for g, v in enumerate((0.01, 0.05, 0.2))
                for _ in range(4)]  # s(x) = 1 + min(10 v, 1) = 1.1, 1.5, 2.0
    rlev_n, _ = method().rewards({"correct": correct_gk.ravel()}, examples)
    plain_n, _ = method(reward="correctness").rewards({"correct": correct_gk.ravel()}, examples)
    np.testing.assert_allclose(rlev_n, [1.1, 0, 0, 1.1, 1.5, 1.5, 1.5, 0, 0, 2.0, 0, 0], rtol=1e-6)
    gids, mask = group_ids(12, 4), np.ones((12, 2), np.float32)

    def adv(name, rewards, **fields):
        out = compute_advantages(name, AdvantageConfig(eps=1e-9, **fields), rewards, gids, mask)[0]
        return np.asarray(out)[:, 0].reshape(3, 4)

    # GRPO with the group std: (c - mean) / std of each group, whatever s(x) is (unbiased std: sqrt(1/3), 0.5,
    # 0.5), so RLEV's rewards give exactly the correctness advantages.
    h = 0.5 / np.sqrt(1.0 / 3.0)
    grpo_hand = [[h, -h, -h, h], [0.5, 0.5, 0.5, -1.5], [-0.5, 1.5, -0.5, -0.5]]
    np.testing.assert_allclose(adv("grpo", rlev_n), grpo_hand, rtol=1e-5)
    np.testing.assert_allclose(adv("grpo", plain_n), grpo_hand, rtol=1e-5)
    # RLOO, r_i - mean of the others: s(x) times the correctness advantages (2/3, 1/3 and 1, -1, ...).
    rloo_hand = [[1.1 * 2 / 3, -1.1 * 2 / 3, -1.1 * 2 / 3, 1.1 * 2 / 3], [0.5, 0.5, 0.5, -1.5],
                 [-2 / 3, 2.0, -2 / 3, -2 / 3]]
    np.testing.assert_allclose(adv("rloo", rlev_n), rloo_hand, rtol=1e-5)
    # GRPO without the std division (the RLEV configs' grpo): s(x) times (c - mean).
    np.testing.assert_allclose(adv("grpo", rlev_n, std_normalization="none"),
                               [[0.55, -0.55, -0.55, 0.55], [0.375, 0.375, 0.375, -1.125], [-0.5, 1.5, -0.5, -0.5]],
                               rtol=1e-5)


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
