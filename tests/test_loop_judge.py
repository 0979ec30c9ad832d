"""Model-based verification in the loop: RLEV's `judge_features` hook through `episodes.score` with a scripted
judge (verdicts, an unparsable reply counted as a failed sample), the rule_or_model routing, config errors,
a judge built from a real tiny model directory on the policy's mesh, and a short training run that judges
every sample with that model."""

import math

import numpy as np
import pytest

from jaxalign.config import ConfigError, apply_overrides, from_config_dict, load_config_file
from jaxalign.methods.rlev import RLEVConfig, RLEVMethod
from jaxalign.rewards.judges import EquivalenceJudge, rule_features
from jaxalign.rewards.pool import RewardPool
from jaxalign.rewards.verifiers import correctness_features
from jaxalign import runs
from jaxalign.train import episodes
from jaxalign.train.metrics import PhaseTimer


def _score(*args):
    scored = episodes.score(*args)
    return scored.features, scored.rewards_n, scored.components, scored.ok_n, scored.judge_failed_n


class ScriptedJudgeSampler:
    """A judge sampler whose reply depends only on the final step it is shown; records what it saw."""

    def __init__(self, replies):
        self.replies = replies
        self.seen = []

    def generate_text(self, prompts, sp, key, *, chat=True):
        replies = []
        for messages in prompts:
            user = messages[-1]["content"]
            step = user.split("Last step of the student's solution:\n")[1].split("\n\nReference answer:")[0]
            self.seen.append(step)
            replies.append([self.replies[step]])
        return replies


def _examples(answers, values=None):
    values = values or [0.05] * len(answers)
    return [{"prompt": f"Question {i}?", "answer": a, "value": v, "reward_value": v}
            for i, (a, v) in enumerate(zip(answers, values))]


def _method(verifier, sampler, **fields):
    config = dict(verifier=verifier, judge_model="a-judge-model-dir", num_train=8, num_eval=4, **fields)
    return RLEVMethod(config, judge=EquivalenceJudge(sampler, "greedy-params"))


def test_model_verifier_through_the_loop_score_counts_an_unparsable_verdict_as_failed():
    texts = ["Work.\nAnswer: 42", "Work.\nAnswer: 41", "It is forty-two", "Work.\nAnswer: 7"]
    sampler = ScriptedJudgeSampler({"Answer: 42": "YES", "Answer: 41": "NO", "It is forty-two": "Yes.",
                                    "Answer: 7": "I am not sure"})
    method = _method("model", sampler)
    examples = _examples(["42", "42", "42", "7"], values=[0.02, 0.05, 0.3, 0.01])
    timer = PhaseTimer()
    with RewardPool(0, 10.0) as pool:
        features, rewards_n, components, ok_n, judge_failed_n = _score(method, pool, texts, examples, timer)
    assert sampler.seen == ["Answer: 42", "Answer: 41", "It is forty-two", "Answer: 7"]  # every sample judged
    np.testing.assert_array_equal(features["correct"], [1.0, 0.0, 1.0, np.nan])
    # The rule verifier found no answer in sample 2; the judge's YES decides it.
    np.testing.assert_array_equal(features["has_answer"][:3], [1.0, 1.0, 0.0])
    assert all(math.isnan(values[3]) for values in features.values())  # the failed verdict: every feature NaN
    np.testing.assert_array_equal(ok_n, [True, True, True, False])
    np.testing.assert_array_equal(judge_failed_n, [False, False, False, True])
    np.testing.assert_allclose(rewards_n, [1.2, 0.0, 2.0, 0.0], rtol=1e-6)  # s = 1 + min(10 v, 1)
    np.testing.assert_array_equal(components["verifier_failed"], [0, 0, 0, 1])
    np.testing.assert_array_equal(components["judged"], [1, 1, 1, 0])
    assert {"reward", "judge"} <= set(timer.seconds)


def test_rule_or_model_sends_only_undecided_samples_to_the_judge():
    texts = [
        "Answer: 42",  # numeric reference, match: decided
        "Answer: 41",  # numeric reference, mismatch: decided (wrong)
        "The result is forty-two",  # no extractable answer: judged
        "Answer: the capital of France",  # text reference, mismatch: judged
        "Answer: Paris",  # text reference, exact match: decided
        "Answer: B",  # option letters: decided
    ]
    sampler = ScriptedJudgeSampler({"The result is forty-two": "YES", "Answer: the capital of France": "NO"})
    method = _method("rule_or_model", sampler)
    assert method.feature_fn is rule_features and method.uses_judge
    examples = _examples(["42", "42", "42", "Paris", "Paris", "C"])
    with RewardPool(0, 10.0) as pool:
        features, _, components, ok_n, judge_failed_n = _score(method, pool, texts, examples)
    assert sampler.seen == ["The result is forty-two", "Answer: the capital of France"]
    np.testing.assert_array_equal(features["rule_decided"], [1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(features["judged"], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(features["correct"], [1, 0, 1, 0, 1, 0])
    assert ok_n.all() and not judge_failed_n.any()
    np.testing.assert_array_equal(components["judged"], features["judged"])


def test_rule_verifier_never_calls_the_hook_and_a_missing_judge_is_a_clear_error():
    rule = RLEVMethod(dict(num_train=8, num_eval=4))
    assert rule.feature_fn is correctness_features and not rule.uses_judge
    features = {"correct": np.array([1.0])}
    assert rule.judge_features(["x"], _examples(["1"]), features) is features
    unattached = RLEVMethod(dict(verifier="model", judge_model="judge-dir", num_train=8, num_eval=4))
    with pytest.raises(RuntimeError, match=r"setup\(agents\)"):
        unattached.judge_features(["Answer: 1"], _examples(["1"]), features)


@pytest.mark.parametrize("fields, message", [
    (dict(verifier="oracle"), "rlev.verifier: unknown verifier 'oracle'"),
    (dict(verifier="model"), "needs rlev.judge_model"),
    (dict(verifier="rule_or_model", judge_model=""), "needs rlev.judge_model"),
    (dict(judge_model="judge-dir"), "verifier='rule' never uses it"),
    (dict(verifier="model", judge_model="random:tiny"), "has no tokenizer"),
    (dict(verifier="model", judge_model="j", judge_max_new_tokens=0), "judge_max_new_tokens must be an int >= 1"),
    (dict(verifier="model", judge_model="j", judge_temperature=0.0), "judge_temperature must be > 0"),
    (dict(verifier="model", judge_model="j", judge_dtype="int8"), "judge_dtype must be one of"),
])
def test_verifier_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        RLEVConfig(**fields)


def test_verifier_config_error_at_config_load():
    cd = load_config_file("configs/rlev_smollm2_demo.py")
    from jaxalign.methods import build_method

    with pytest.raises(ConfigError, match="section 'rlev'.*needs rlev.judge_model"):
        build_method(from_config_dict(apply_overrides(cd, {"rlev.verifier": "model"})))
    config = from_config_dict(apply_overrides(cd, {"rlev.verifier": "rule_or_model", "rlev.judge_model": "/j"}))
    assert RLEVConfig.from_dict(config.method_config).judge_model == "/j"


# ---------------------------------------------------------------------------------------------------------
# A real judge model


def _word_tokenizer(first_word):
    """A 256-word tokenizer with `first_word` at id 0, '<pad>' 1, '</s>' 2 (eos), and a plain chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from jaxalign.models.tokenizer import Tokenizer as OurTokenizer

    vocab = {first_word: 0, "<pad>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 256)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return OurTokenizer(tok)


def _export_tiny(out_dir, first_word, *, constant_reply, seed=0):
    """Exports a random tiny model; with `constant_reply` its final norm is zero, so every logit is 0 and
    greedy decoding always picks id 0 (`first_word`)."""
    import jax.numpy as jnp

    from jaxalign.models import export_hf, load_model

    model, _ = load_model("random:tiny", seed=seed)
    if constant_reply:
        model.final_norm.value = jnp.zeros_like(model.final_norm.value)
    export_hf(model, _word_tokenizer(first_word), str(out_dir))
    return str(out_dir)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_models")
    return {"yes_judge": _export_tiny(root / "yes_judge", "YES", constant_reply=True),
            "no_judge": _export_tiny(root / "no_judge", "NO", constant_reply=True),
            "policy": _export_tiny(root / "policy", "w0", constant_reply=False, seed=3)}


def test_judge_loaded_from_a_model_directory_runs_on_the_policy_mesh_with_its_own_sampler(model_dirs):
    import jax

    from jaxalign.models import load_model
    from jaxalign.rollout import Sampler
    from jaxalign.sharding import make_mesh

    mesh = make_mesh(data=-1)
    policy, tokenizer = load_model(model_dirs["policy"], mesh=mesh, role="sample")
    policy_sampler = Sampler(policy, tokenizer, mesh=mesh, max_prompt_len=64, cache_dtype="float32")
    examples = _examples(["42", "42", "7"])
    examples[2]["prompt"] = " ".join(["long"] * 300)  # a judge prompt over judge_max_prompt_len
    texts = ["Answer: 42", "Answer: 41", "Answer: 7"]
    for judge_dir, verdict in (("yes_judge", 1.0), ("no_judge", 0.0)):
        method = RLEVMethod(dict(verifier="model", judge_model=model_dirs[judge_dir], judge_dtype="float32",
                                 judge_max_prompt_len=200, judge_max_new_tokens=4, num_train=8, num_eval=4))
        method.use_sampler(policy_sampler)
        judge_sampler = method.judge.sampler
        assert isinstance(judge_sampler, Sampler) and judge_sampler is not policy_sampler
        assert judge_sampler.mesh is mesh and judge_sampler.max_prompt_len == 200
        # The judge has its own weights: its final norm is zero, the policy's is not.
        judge_norm = np.asarray(judge_sampler.params["final_norm"].value)
        assert not judge_norm.any() and np.asarray(policy_sampler.params["final_norm"].value).all()
        assert judge_sampler.params["final_norm"].value.sharding.mesh == mesh
        features = {name: np.array([correctness_features(t, e)[name] for t, e in zip(texts, examples)])
                    for name in ("correct", "has_answer")}
        out = method.judge_features(texts, examples, features)
        np.testing.assert_array_equal(out["correct"][:2], [verdict, verdict])  # the model's greedy YES / NO
        assert np.isnan(out["correct"][2]) and np.isnan(out["has_answer"][2])  # too long: a failed verdict
        np.testing.assert_array_equal(out["judged"][:2], [1.0, 1.0])
        assert judge_sampler.last_stats["batch"] >= 2
    assert jax.device_count() == 8


def test_training_run_judges_every_sample_with_a_judge_model(model_dirs, tmp_path, monkeypatch):
    import time

    # The judge takes at least judge_delay_s per call: the step's judge phase must measure it.
    judge_delay_s = 1.0
    judge_features = RLEVMethod.judge_features

    def slow_judge_features(self, *args, **kwargs):
        time.sleep(judge_delay_s)
        return judge_features(self, *args, **kwargs)

    monkeypatch.setattr(RLEVMethod, "judge_features", slow_judge_features)
    cd = load_config_file("configs/tiny_test.py")
    overrides = {
        "method": "rlev", "model.spec": model_dirs["policy"], "rollout.max_prompt_len": 96,
        "rollout.max_new_tokens": 6, "train.steps": 1, "train.eval_every": 0, "train.eval_examples": 4,
        "logging.progress": False, "checkpoint.every": 0,
    }
    cd = apply_overrides(cd, {k: str(v) for k, v in overrides.items()})
    import ml_collections

    with cd.unlocked():
        cd.rlev = ml_collections.ConfigDict(dict(
            verifier="model", judge_model=model_dirs["yes_judge"], judge_dtype="float32", judge_max_new_tokens=2,
            judge_max_prompt_len=256, num_train=16, num_eval=4, reward="human"))
    start = time.perf_counter()
    result = runs.train(from_config_dict(cd), tmp_path)
    wall_s = time.perf_counter() - start
    (record,) = result.history
    assert record["rollout/judge_failed"] == 0 and record["rollout/failed"] == 0
    assert record["reward/judged"] == 1.0 and record["reward/correct"] == 1.0  # the judge says YES to all
    assert record["reward/mean"] >= 1.0  # s(x) >= 1 for every correct answer
    for phase in ("generate", "reward", "judge", "logprobs", "update", "weight_sync"):
        assert record[f"time/{phase}_s"] > 0, phase
    assert "time/generate_and_reward_s" not in record
    # The judge's time is measured in its phase, and the phases (disjoint slices of the step) fit in the run's
    # wall clock, which also holds model loading and two evals with the same delay.
    assert record["time/judge_s"] >= judge_delay_s
    assert record["time/step_s"] < wall_s - 2 * judge_delay_s
    for evaluation in (result.eval_before, result.eval_after):
        assert evaluation["eval/acc"] == 100.0 and evaluation["eval/judged"] == 100.0
        assert evaluation["eval/judge_failed"] == 0.0
