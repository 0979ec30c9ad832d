"""Chunked log-probs and entropies equal the full-logits computation (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.algorithms.logprobs import logprobs_from_hidden, sequence_logprobs


def make_inputs(seed=0, b=3, t=11, d=8, v=37):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t, d)).astype(np.float32)
    w = rng.normal(scale=0.5, size=(d, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, t)).astype(np.int32)
    valid = np.ones((b, t), bool)
    valid[0, :3] = False  # left padding
    valid[1, -4:] = False  # right padding
    return hidden, w, tokens, valid


def numpy_reference(hidden, w, tokens, valid, temperature):
    b, t, _ = hidden.shape
    logp = np.zeros((b, t))
    ent = np.zeros((b, t))
    for i in range(b):
        for k in range(1, t):
            if not (valid[i, k] and valid[i, k - 1]):
                continue
            z = hidden[i, k - 1].astype(np.float64) @ w.astype(np.float64) / temperature
            z = z - z.max()
            logq = z - np.log(np.exp(z).sum())
            logp[i, k] = logq[tokens[i, k]]
            ent[i, k] = -(np.exp(logq) * logq).sum()
    return logp, ent


def full_logits_jnp(hidden, w, tokens, valid, temperature):
    logq = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", hidden, w)[:, :-1] / temperature, axis=-1)
    lp = jnp.take_along_axis(logq, tokens[:, 1:, None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logq) * logq, axis=-1)
    pair = (valid[:, 1:] & valid[:, :-1]).astype(jnp.float32)
    zero = jnp.zeros((hidden.shape[0], 1))
    return jnp.concatenate([zero, lp * pair], 1), jnp.concatenate([zero, ent * pair], 1)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_match_numpy(chunk_size, temperature):
    hidden, w, tokens, valid = make_inputs()
    logp, ent = logprobs_from_hidden(hidden, w, tokens, valid, temperature=temperature, chunk_size=chunk_size)
    want_logp, want_ent = numpy_reference(hidden, w, tokens, valid, temperature)
    np.testing.assert_allclose(np.asarray(logp), want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [3, 16])
def test_gradients_match_full_logits(chunk_size):
    hidden, w, tokens, valid = make_inputs(1)
    rng = np.random.default_rng(2)
    c_logp, c_ent = rng.normal(size=(2,) + tokens.shape).astype(np.float32)

    def objective(fn):
        def f(h, w_):
            lp, en = fn(h, w_)
            return jnp.sum(c_logp * lp) + jnp.sum(c_ent * en)

        return jax.grad(f, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(w))

    chunked = objective(
        lambda h, w_: logprobs_from_hidden(h, w_, tokens, valid, temperature=0.8, chunk_size=chunk_size)
    )
    full = objective(lambda h, w_: full_logits_jnp(h, w_, tokens, valid, 0.8))
    for got, want in zip(chunked, full):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_full_logits_never_materialise():
    hidden, w, tokens, valid = make_inputs(b=2, t=33, v=101)

    def f(h):
        return jnp.sum(logprobs_from_hidden(h, w, tokens, valid, chunk_size=8)[0])

    jaxpr = jax.make_jaxpr(jax.grad(f))(jnp.asarray(hidden))
    shapes = []

    def collect(jx):
        for eqn in jx.eqns:
            shapes.extend(tuple(getattr(o.aval, "shape", ())) for o in eqn.outvars)
            for param in eqn.params.values():
                for inner in param if isinstance(param, (list, tuple)) else [param]:
                    inner = getattr(inner, "jaxpr", inner)
                    if hasattr(inner, "eqns"):
                        collect(inner)

    collect(jaxpr.jaxpr)
    vocab_shapes = [s for s in shapes if s and s[-1] == 101]
    assert vocab_shapes, "expected chunk logits in the program"
    assert all(int(np.prod(s)) <= 2 * 8 * 101 for s in vocab_shapes), vocab_shapes


def test_apply_function_path_and_bad_input():
    hidden, w, tokens, valid = make_inputs(3)
    emb = np.random.default_rng(0).normal(size=(37, 8)).astype(np.float32)

    def apply(tok, val):
        return jnp.asarray(emb)[tok] * val[..., None]

    got = sequence_logprobs(apply, tokens, valid, w_dv=w, chunk_size=4)
    want = numpy_reference(np.asarray(apply(tokens, valid)), w, tokens, valid, 1.0)
    np.testing.assert_allclose(np.asarray(got[0]), want[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="w_dv"):
        logprobs_from_hidden(hidden, w.T, tokens, valid)
