"""Stop strings checked inside the decode loop: the byte window against a Python reference, the byte
table against real decoding, and the sampler's early exit with rollouts equal to host-side stopping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.models import Transformer, get_preset
from jaxalign.rollout import Sampler, SamplingParams
from jaxalign.rollout import stop_strings as stop_lib
from jaxalign.sharding import make_mesh


def _reference_hits(token_bytes, tokens, stops):
    """hit[t]: a stop string ends inside the bytes token t adds (plain Python on the joined bytes)."""
    text, hits = b"", []
    for token in tokens:
        before = len(text)
        text += token_bytes[token]
        hits.append(any(text[:end].endswith(s) for s in stops for end in range(before + 1, len(text) + 1)))
    return hits


@pytest.mark.parametrize("seed", range(6))
def test_advance_matches_python_reference(seed):
    rng = np.random.default_rng(seed)
    alphabet = b"abc"
    # Tokens of 0..5 bytes (0 = a special token), over a small alphabet so that stop strings occur.
    token_bytes = [bytes(rng.choice(list(alphabet), size=rng.integers(0, 6))) for _ in range(30)]
    stops = [bytes(rng.choice(list(alphabet), size=rng.integers(1, 7))) for _ in range(rng.integers(1, 4))]
    table_vm, lengths_v = stop_lib.byte_table(token_bytes, vocab_size=32)
    stop_bytes = stop_lib.StopBytes(jnp.asarray(table_vm), jnp.asarray(lengths_v),
                                    jnp.asarray(stop_lib.encode_stops([s.decode() for s in stops])))
    tokens_bt = rng.integers(0, 30, size=(5, 40))
    window = stop_lib.empty_window(5, stop_bytes)
    advance = jax.jit(stop_lib.advance)
    got_bt = []
    for t in range(tokens_bt.shape[1]):
        window, hit_b = advance(window, jnp.asarray(tokens_bt[:, t]), stop_bytes)
        got_bt.append(np.asarray(hit_b))
    got_bt = np.stack(got_bt, axis=1)
    for row in range(5):
        expected = _reference_hits(token_bytes, tokens_bt[row].tolist(), stops)
        np.testing.assert_array_equal(got_bt[row], expected)
    assert got_bt.any() and not got_bt.all(), "the random case should exercise both outcomes"


def test_encode_stops_buckets_and_errors():
    stops = stop_lib.encode_stops(["</payoff>", "é"])
    assert stops.shape == (4, 16)
    assert bytes(stops[0, -9:].astype(np.uint8)) == b"</payoff>" and np.all(stops[0, :-9] == -1)
    assert bytes(stops[1, -2:].astype(np.uint8)) == "é".encode() and np.all(stops[2:] == -1)
    with pytest.raises(ValueError, match="no stop strings"):
        stop_lib.encode_stops([])
    with pytest.raises(ValueError, match="only 3"):
        stop_lib.byte_table([b"a"] * 5, vocab_size=3)


class Utf8ByteTokenizer:
    """One token per code point 0..255 (the tiny preset's vocabulary), decoded as text; with or without
    an exact byte table."""

    def __init__(self, with_table: bool):
        self.eos_token_ids = ()
        self.pad_id = 0
        self.vocab_size = 256
        if with_table:
            self.token_bytes = tuple(chr(i).encode("utf-8") for i in range(256))

    def decode(self, ids):
        return "".join(chr(int(i)) for i in ids)


PROMPTS = [[3, 14, 15, 92, 65], [35, 89], [79, 32, 38, 46, 26, 43, 38, 32, 79]]


@pytest.fixture(scope="module")
def model():
    return Transformer(get_preset("tiny"), rngs=nnx.Rngs(0))


def _assert_same_rollout(a, b):
    np.testing.assert_array_equal(a.response_ids_np, b.response_ids_np)
    np.testing.assert_array_equal(a.response_mask_np, b.response_mask_np)
    np.testing.assert_allclose(a.logprobs_np, b.logprobs_np, atol=1e-5)
    assert a.texts == b.texts and a.finish_reasons == b.finish_reasons


SAMPLED = dict(max_new_tokens=24, temperature=1.0)  # the tiny random model repeats itself when greedy


@pytest.mark.parametrize("mesh_shape", [None, dict(data=2, fsdp=2, tensor=2)])
def test_sampler_exits_early_with_the_host_side_result(model, mesh_shape):
    mesh = None if mesh_shape is None else make_mesh(**mesh_shape)
    on_device = Sampler(model, Utf8ByteTokenizer(with_table=True), mesh=mesh, cache_dtype=jnp.float32)
    host_only = Sampler(model, Utf8ByteTokenizer(with_table=False), cache_dtype=jnp.float32)
    key = jax.random.key(0)
    base = host_only.generate(PROMPTS, SamplingParams(**SAMPLED), key)
    assert len({len(set(t)) for t in base.texts}) > 1 and all(len(set(t)) > 10 for t in base.texts)
    # Two-character stop strings from samples 0 and 2 (a draw does not depend on the stop strings).
    stops = (base.texts[0][3:5], base.texts[2][5:7])
    sp = SamplingParams(**SAMPLED, stop_strings=stops)
    got, expected = on_device.generate(PROMPTS, sp, key), host_only.generate(PROMPTS, sp, key)
    _assert_same_rollout(got, expected)
    assert got.finish_reasons[0] == got.finish_reasons[2] == "stop"
    assert got.texts[0] == base.texts[0][:5] and got.texts[2].endswith(stops[1])
    assert host_only.last_stats["decode_steps"] == 24
    # n samples per prompt, more stop strings (some multi-byte in UTF-8): equal draw for draw.
    sp = SamplingParams(max_new_tokens=24, temperature=1.0, n=3,
                        stop_strings=stops + tuple(base.texts[1][i] for i in (2, 9, 15)))
    _assert_same_rollout(on_device.generate(PROMPTS, sp, jax.random.key(3)),
                         host_only.generate(PROMPTS, sp, jax.random.key(3)))


def test_all_rows_stopped_by_strings_end_the_loop(model):
    sampler = Sampler(model, Utf8ByteTokenizer(with_table=True), cache_dtype=jnp.float32)
    key = jax.random.key(0)
    base = sampler.generate(PROMPTS, SamplingParams(**SAMPLED), key)
    stops = tuple(text[6:8] for text in base.texts)
    got = sampler.generate(PROMPTS, SamplingParams(**SAMPLED, stop_strings=stops), key)
    assert got.finish_reasons == ["stop"] * 3
    for text, stopped in zip(base.texts, got.texts):
        assert stopped == text[: min(text.find(s) + len(s) for s in stops if s in text)]
    assert np.all(got.lengths_n <= 8)
    # The loop ran only as long as the longest response: no token was generated after a stop.
    assert sampler.last_stats["decode_steps"] == int(got.lengths_n.max())
