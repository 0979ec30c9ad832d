"""RLEV's termination analysis in eval (stop-token probability and length by value) and the embedded exam
set's value/difficulty independence."""

import numpy as np
import pytest

from jaxalign.methods.rlev import make_exam_set
from jaxalign.methods.rlev.exam import LEVELS
from jaxalign.methods.rlev.rewards import eos_value_metrics, length_value_slope


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_token_set_probs_match_a_numpy_softmax(chunk_size):
    import jax.numpy as jnp

    from jaxalign.algorithms.logprobs import token_set_probs_from_hidden

    rng = np.random.default_rng(0)
    b, t, d, v = 3, 7, 5, 11
    hidden = rng.normal(size=(b, t, d)).astype(np.float32)
    w = rng.normal(size=(d, v)).astype(np.float32)
    valid = np.ones((b, t), bool)
    valid[1, :2] = False  # left padding
    valid[2, 5:] = False  # right padding
    ids = (2, 9)
    got = np.asarray(token_set_probs_from_hidden(jnp.asarray(hidden), jnp.asarray(w), ids, jnp.asarray(valid),
                                                 chunk_size=chunk_size))
    probs = _softmax(hidden.astype(np.float64) @ w.astype(np.float64))  # [b, t, v]
    want = np.zeros((b, t))
    for i in range(b):
        for j in range(1, t):
            if valid[i, j] and valid[i, j - 1]:
                want[i, j] = probs[i, j - 1, 2] + probs[i, j - 1, 9]
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_stop_probabilities_of_a_real_model_match_transformers(tiny_chat_model_dir):
    """The jitted policy function on a tiny Llama equals transformers' softmax at the stop token."""
    import torch
    import transformers

    from jaxalign.models import load_model
    from jaxalign.train import batching
    from jaxalign.train.step import make_token_set_prob_fn

    model, tokenizer = load_model(tiny_chat_model_dir)
    from flax import nnx

    graphdef, params = nnx.split(model)
    stop = tuple(int(t) for t in tokenizer.eos_token_ids)
    fn = make_token_set_prob_fn(graphdef, stop, chunk_size=4)
    rng = np.random.default_rng(1)
    prompt = rng.integers(5, 200, size=(2, 6)).astype(np.int32)
    prompt_mask = np.ones_like(prompt)
    prompt_mask[1, :2] = 0
    response = rng.integers(5, 200, size=(2, 5)).astype(np.int32)
    response_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    seq = batching.sequence_batch(prompt, prompt_mask, response, response_mask)
    got = np.asarray(fn(params, seq["tokens"], seq["valid"], seq["positions"]))

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, torch_dtype=torch.float32)
    for row in range(2):
        ids = seq["tokens"][row][seq["valid"][row]]
        with torch.no_grad():
            logits = hf(torch.tensor(ids[None].astype(np.int64))).logits[0].numpy().astype(np.float64)
        p_stop = _softmax(logits)[:, list(stop)].sum(axis=-1)  # at position k: before token k + 1
        cols = np.flatnonzero(seq["valid"][row])
        for k in range(1, len(cols)):
            np.testing.assert_allclose(got[row, cols[k]], p_stop[k - 1], rtol=2e-4, atol=1e-7)


def test_length_value_slope_hand_values_and_reference():
    # Percentiles 0, 0.5, 1 with lengths 10, 20, 30: 20 tokens from the lowest to the highest value.
    assert length_value_slope([10, 20, 30], [0.01, 0.5, 0.9]) == pytest.approx(20.0)
    assert length_value_slope([30, 20, 10], [0.01, 0.02, 0.03]) == pytest.approx(-20.0)
    # Ties share their mean rank: values (a, a, b) -> percentiles (0.25, 0.25, 1).
    x = np.array([0.25, 0.25, 1.0])
    y = np.array([4.0, 8.0, 20.0])
    assert length_value_slope(y, [0.1, 0.1, 0.7]) == pytest.approx(np.polyfit(x, y, 1)[0])
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    values, lengths = rng.choice([0.01, 0.02, 0.05, 0.1, 0.3], size=50), rng.integers(1, 48, size=50)
    pct = (rankdata(values) - 1) / 49
    assert length_value_slope(lengths, values) == pytest.approx(np.polyfit(pct, lengths, 1)[0])
    assert np.isnan(length_value_slope([1, 2], [0.5, 0.5]))


def test_eos_value_metrics_hand_values():
    # Two value buckets: rows 0, 1 low value, rows 2, 3 high value.
    eos = np.array([[0.1, 0.9, 0.0], [0.2, 0.4, 0.6], [0.0, 0.0, 0.5], [0.3, 0.3, 0.3]])
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]])
    values = np.array([0.1, 0.2, 0.8, 0.9])
    out = eos_value_metrics(eos, mask, values, num_buckets=2)
    assert out["length_q1"] == pytest.approx((2 + 3) / 2) and out["length_q2"] == pytest.approx((3 + 1) / 2)
    assert out["eos_prob_q1"] == pytest.approx((0.1 + 0.9 + 0.2 + 0.4 + 0.6) / 5)
    assert out["eos_prob_q2"] == pytest.approx((0.0 + 0.0 + 0.5 + 0.3) / 4)
    # Percentiles 0, 1/3, 2/3, 1 against lengths 2, 3, 3, 1.
    assert out["length_value_slope"] == pytest.approx(np.polyfit([0, 1 / 3, 2 / 3, 1], [2, 3, 3, 1], 1)[0])


def test_rlev_eval_reports_termination_by_value(tiny_chat_model_dir, tmp_path):
    """A tiny RLEV run's evals carry the quintile lengths, stop probabilities and the slope, consistent with
    the overall mean length."""
    from jaxalign import runs
    from jaxalign.config import apply_overrides, from_config_dict, load_config_file

    cd = load_config_file("configs/tiny_test.py")
    overrides = {
        "method": "rlev", "model.spec": tiny_chat_model_dir, "rollout.max_prompt_len": 96,
        "rollout.max_new_tokens": 6, "train.steps": 1, "train.eval_every": 0, "train.eval_examples": 10,
        "logging.progress": False, "checkpoint.every": 0,
    }
    cd = apply_overrides(cd, {k: str(v) for k, v in overrides.items()})
    import ml_collections

    with cd.unlocked():
        cd.rlev = ml_collections.ConfigDict(dict(num_train=16, num_eval=10, reward="human"))
    result = runs.train(from_config_dict(cd), tmp_path)
    for evaluation in (result.eval_before, result.eval_after):
        for q in range(1, 6):
            assert 0.0 <= evaluation[f"eval/eos_prob_q{q}"] <= 1.0
            assert 1.0 <= evaluation[f"eval/length_q{q}"] <= 6.0
        assert np.isfinite(evaluation["eval/length_value_slope"])
        lengths = [evaluation[f"eval/length_q{q}"] for q in range(1, 6)]
        assert min(lengths) <= evaluation["eval/resp_length"] <= max(lengths)


def test_exam_points_do_not_follow_difficulty():
    from scipy.stats import spearmanr

    train, held_out = make_exam_set(seed=0, num_train=2000, num_eval=400)
    for split in (train, held_out):
        level = np.array([LEVELS.index(e["difficulty"]) for e in split])
        points = np.array([e["score"] for e in split])
        assert abs(spearmanr(level, points).statistic) < 0.1
        # Every level has cheap and valuable questions.
        for lv in range(len(LEVELS)):
            assert points[level == lv].min() <= 2 and points[level == lv].max() >= 8
        # The top 20% by value holds easy questions at about their overall share.
        values = np.array([e["value"] for e in split])
        top = values >= np.quantile(values, 0.8)
        easy = level <= 1
        assert abs(easy[top].mean() - easy.mean()) < 0.1


def test_eval_at_start_false_skips_only_the_first_eval(tmp_path):
    from jaxalign import runs
    from jaxalign.config import apply_overrides, from_config_dict, load_config_file
    from jaxalign.train.metrics import read_metrics

    overrides = {"train.steps": "2", "train.eval_every": "0", "train.eval_at_start": "false",
                 "logging.progress": "false", "checkpoint.every": "0"}
    config = from_config_dict(apply_overrides(load_config_file("configs/tiny_test.py"), overrides))
    result = runs.train(config, tmp_path)
    evals = [r["step"] for r in read_metrics(tmp_path) if r["kind"] == "eval"]
    assert evals == [2] and result.eval_before == {} and result.eval_after


def test_runs_saved_before_new_fields_resume_unchanged():
    """A saved config without fields added later (init_from, eval_at_start, the lora section) is no change
    when the new config has the values that do what the old run did; other values are changes."""
    from jaxalign.runs import config_changes

    old = {"seed": 0, "model": {"spec": "m"}, "train": {"steps": 10}}
    new = {"seed": 0, "model": {"spec": "m", "init_from": ""},
           "train": {"steps": 10, "eval_at_start": True, "skip_memory_check": False},
           "lora": {"rank": 0, "alpha": 16.0, "targets": "q,k"}}
    assert config_changes(old, new) == []
    changed = {c.field for c in config_changes(old, {**new, "model": {"spec": "m", "init_from": "runs/sft"},
                                                     "lora": {"rank": 8, "alpha": 16.0}})}
    assert changed == {"model.init_from", "lora.rank", "lora.alpha"}
