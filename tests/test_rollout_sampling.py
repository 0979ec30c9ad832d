"""Sampling maths: parameter validation, empirical distributions vs NumPy, log-prob definition, stops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.rollout import results
from jaxalign.rollout.sampling import (
    SamplingParams,
    is_stop_token,
    per_sample_keys,
    sample_tokens,
    truncate_logits,
)

LOGITS_V = np.array([2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, -3.0], np.float32)


def reference_distribution(logits_v, temperature, top_k, top_p):
    """Intended sampling distribution, written independently: temperature, then top-k, then top-p."""
    z = logits_v.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros(len(z), bool)
    k = len(z) if top_k == 0 else top_k
    keep[order[:k]] = True
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    if top_p < 1.0:
        sorted_p = p[order]
        before = np.cumsum(sorted_p) - sorted_p
        nucleus = np.zeros(len(z), bool)
        nucleus[order[before < top_p]] = True
        p = np.where(nucleus & keep, p, 0.0)
        p /= p.sum()
    return p


# Chi-square critical values at p = 1e-3 for df = 1..7.
CHI2_CRIT_1E3 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 3, 1.0), (1.0, 0, 0.8), (0.9, 5, 0.7), (2.0, 0, 0.95)],
)
def test_empirical_distribution_matches_numpy(temperature, top_k, top_p):
    num_draws = 20000
    logits_bv = jnp.broadcast_to(jnp.asarray(LOGITS_V), (num_draws, LOGITS_V.size))
    keys_b = per_sample_keys(jax.random.key(7), jnp.arange(num_draws), 3)
    draw = jax.jit(
        lambda lg, ks: sample_tokens(
            lg, ks, temperature=temperature, top_p=top_p if top_p < 1 else None, top_k=top_k, greedy=False
        )
    )
    tokens_b, logp_b = draw(logits_bv, keys_b)
    counts = np.bincount(np.asarray(tokens_b), minlength=LOGITS_V.size)
    expected = reference_distribution(LOGITS_V, temperature, top_k, top_p)
    support = expected > 0
    assert counts[~support].sum() == 0, f"drew tokens outside top-k/top-p: {counts}"
    df = int(support.sum()) - 1
    if df > 0:
        exp_counts = expected[support] * num_draws
        chi2 = float(((counts[support] - exp_counts) ** 2 / exp_counts).sum())
        assert chi2 < CHI2_CRIT_1E3[df], (chi2, counts, exp_counts)
    tv = 0.5 * np.abs(counts / num_draws - expected).sum()
    assert tv < 0.02
    # Log-probs: full-vocabulary log_softmax(logits / T), before truncation.
    z = LOGITS_V.astype(np.float64) / temperature
    full_logp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
    np.testing.assert_allclose(np.asarray(logp_b), full_logp[np.asarray(tokens_b)], atol=1e-5)


def test_greedy_takes_argmax_with_temperature_one_logprobs():
    rng = np.random.default_rng(0)
    logits_bv = rng.normal(size=(5, 11)).astype(np.float32)
    tokens_b, logp_b = sample_tokens(
        jnp.asarray(logits_bv), None, temperature=0.3, top_p=None, top_k=0, greedy=True
    )
    np.testing.assert_array_equal(np.asarray(tokens_b), logits_bv.argmax(-1))
    ref = logits_bv - np.log(np.exp(logits_bv).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(logp_b), ref[np.arange(5), logits_bv.argmax(-1)], atol=1e-5)


def test_truncate_keeps_most_likely_token_for_tiny_top_p():
    logits_bv = jnp.asarray(LOGITS_V)[None]
    out = np.asarray(truncate_logits(logits_bv, top_k=0, top_p=1e-6))
    assert np.isfinite(out[0, 0]) and np.all(np.isinf(out[0, 1:]))


def test_same_key_same_draws_and_keys_depend_on_sample_id():
    logits_bv = jnp.zeros((64, 50))
    key = jax.random.key(3)
    a, _ = sample_tokens(logits_bv, per_sample_keys(key, jnp.arange(64), 0), temperature=1.0,
                         top_p=None, top_k=0, greedy=False)
    b, _ = sample_tokens(logits_bv, per_sample_keys(key, jnp.arange(64), 0), temperature=1.0,
                         top_p=None, top_k=0, greedy=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(np.unique(np.asarray(a))) > 10
    # A row's draw depends on its sample id only, not on its place in the batch.
    c, _ = sample_tokens(logits_bv[:8], per_sample_keys(key, jnp.arange(8) + 10, 0), temperature=1.0,
                         top_p=None, top_k=0, greedy=False)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(a)[10:18])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(n=0), "n must"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop_strings=("",)), "stop_strings"),
        (dict(stop_token_ids=(-2,)), "stop_token_ids"),
    ],
)
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_greedy_allows_zero_temperature_and_is_hashable():
    sp = SamplingParams(greedy=True, temperature=0.0, stop_token_ids=[3, 4])
    assert sp.logprob_temperature == 1.0 and sp.stop_token_ids == (3, 4)
    hash(sp)
    with pytest.raises(TypeError, match="stop_strings"):
        SamplingParams(stop_strings="</a>")


def test_is_stop_token_ignores_padding():
    stop_ids = jnp.asarray([5, 9, -1, -1])
    got = is_stop_token(jnp.asarray([5, 1, 9, -1, 0]), stop_ids)
    np.testing.assert_array_equal(np.asarray(got), [True, False, True, False, False])


class CharTokenizer:
    """Token i is chr(ord('a') + i); token 25 ('z') plays EOS."""

    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


def test_assemble_rollout_stop_strings_stop_tokens_and_length():
    pad = 0
    resp = np.array(
        [
            [4, 5, 6, 25, 7, 7],  # "efg" + EOS: stop token counted, its text excluded
            [0, 1, 2, 3, 4, 5],  # "abcdef" with stop string "cd": cut after token 3
            [7, 7, 7, 7, 7, 7],  # length
            [1, 2, 3, 25, 0, 0],  # "bcd" + EOS; stop string "cd" ends at token 3 (before EOS)
        ],
        np.int32,
    )
    logp = -np.arange(24, dtype=np.float32).reshape(4, 6) - 1
    r = results.assemble_rollout(
        prompt_ids_np=np.ones((4, 2), np.int32),
        prompt_mask_np=np.ones((4, 2), np.int32),
        response_ids_np=resp,
        logprobs_np=logp,
        lengths_n=np.array([4, 6, 6, 4]),
        ended_by_stop_token_n=np.array([True, False, False, True]),
        n=2,
        stop_strings=("cd",),
        tokenizer=CharTokenizer(),
        pad_id=pad,
    )
    assert r.texts == ["efg", "abcd", "hhhhhh", "bcd"]
    np.testing.assert_array_equal(r.lengths_n, [4, 4, 6, 3])
    assert r.finish_reasons == ["stop", "stop", "length", "stop"]
    np.testing.assert_array_equal(r.response_mask_np.sum(1), r.lengths_n)
    assert np.all(r.response_ids_np[r.response_mask_np == 0] == pad)
    assert np.all(r.logprobs_np[r.response_mask_np == 0] == 0)
    np.testing.assert_array_equal(r.logprobs_np[1, :4], logp[1, :4])
    np.testing.assert_array_equal(r.group_ids_n, [0, 0, 1, 1])
