"""The KV-cache sampler on a tiny random model: cache consistency, log-probs, stops, keys, prefixes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.models import Transformer, causal_attention_mask, get_preset, positions_from_mask
from jaxalign.rollout import Sampler, SamplingParams, bucket_batch, decode_step, prefill
from jaxalign.rollout.sampler import round_up

TOL = 1e-4  # float32 weights, compute and cache


class ByteTokenizer:
    """One token per byte (the tiny preset's vocabulary is 256); a toy chat template."""

    def __init__(self, eos_token_ids=()):
        self.eos_token_ids = tuple(eos_token_ids)
        self.pad_id = 0
        self.vocab_size = 256

    def encode(self, text):
        return list(text.encode("latin-1"))

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("latin-1")

    def apply_chat_template(self, messages, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return self.encode(text + ("<assistant>" if add_generation_prompt else ""))


@pytest.fixture(scope="module")
def model():
    return Transformer(get_preset("tiny"), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def sampler(model):
    return Sampler(model, ByteTokenizer(), cache_dtype=jnp.float32)


PROMPTS = [[3, 14, 15, 92, 65], [35, 89], [79, 32, 38, 46, 26, 43, 38, 32, 79]]


@functools.partial(jax.jit, static_argnums=0)
def _forward_logits(graphdef, params, tokens_bt, valid_bt):
    model = nnx.merge(graphdef, params)
    hidden, _ = model(tokens_bt, positions_from_mask(valid_bt), causal_attention_mask(valid_bt))
    return model.unembed(hidden)


def full_forward_logits(model, tokens_bt, valid_bt):
    """Logits of a plain (cache-free) forward pass over padded sequences."""
    graphdef, params = nnx.split(model)
    return np.asarray(_forward_logits(graphdef, params, jnp.asarray(tokens_bt), jnp.asarray(valid_bt)))


def rollout_tokens(rollout):
    """Per sample: prompt tokens (unpadded) + response tokens under the mask."""
    out = []
    for i in range(rollout.num_samples):
        prompt = rollout.prompt_ids_np[i][rollout.prompt_mask_np[i] == 1].tolist()
        out.append((prompt, rollout.response_ids_np[i, : rollout.lengths_n[i]].tolist()))
    return out


def test_bucketing():
    assert [bucket_batch(c, 1) for c in (1, 3, 4, 5, 64, 65, 130)] == [1, 4, 4, 8, 64, 128, 192]
    assert bucket_batch(3, 8) == 8 and bucket_batch(9, 8) == 16 and bucket_batch(3, 6) == 6
    assert round_up(33, 32) == 64


def test_cached_decode_matches_full_forward_at_every_position(model):
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(1)
    width, cont, n = 8, 6, 2
    lengths = [8, 3]
    prompt_ids = np.zeros((2, width), np.int32)
    prompt_mask = np.zeros((2, width), np.int32)
    for i, length in enumerate(lengths):
        prompt_ids[i, width - length:] = rng.integers(1, 256, length)
        prompt_mask[i, width - length:] = 1
    continuation = rng.integers(1, 256, (2 * n, cont)).astype(np.int32)

    prefill_jit = jax.jit(prefill, static_argnums=0, static_argnames=("n", "cache_len", "cache_dtype"))
    decode_step_jit = jax.jit(decode_step, static_argnums=0)
    cache, last_logits = prefill_jit(graphdef, params, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask),
                                 n=n, cache_len=width + cont, cache_dtype=jnp.float32)
    mask_rep = np.repeat(prompt_mask, n, axis=0)
    ids_rep = np.repeat(prompt_ids, n, axis=0)
    cached_logits = [np.asarray(last_logits)]
    for j in range(cont - 1):
        valid = np.concatenate([mask_rep, np.arange(cont)[None].repeat(2 * n, 0) <= j], axis=1)
        logits, cache = decode_step_jit(graphdef, params, cache, jnp.asarray(continuation[:, j]),
                                    jnp.asarray(mask_rep.sum(1) + j), width + j, jnp.asarray(valid))
        cached_logits.append(np.asarray(logits))
    cached_btv = np.stack(cached_logits, axis=1)

    tokens = np.concatenate([ids_rep, continuation], axis=1)
    valid = np.concatenate([mask_rep, np.ones_like(continuation)], axis=1)
    full_btv = full_forward_logits(model, tokens, valid)[:, width - 1: width + cont - 1]
    np.testing.assert_allclose(cached_btv, full_btv, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("sp", [
    SamplingParams(max_new_tokens=12, temperature=0.7, top_k=20, n=2),
    SamplingParams(max_new_tokens=12, temperature=1.3, top_p=0.9, n=2),
    SamplingParams(max_new_tokens=12, greedy=True),
])
def test_logprobs_match_full_forward_recomputation(model, sampler, sp):
    rollout = sampler.generate(PROMPTS, sp, jax.random.key(5))
    assert rollout.num_samples == len(PROMPTS) * sp.n
    # Training layout: left-padded prompt then right-padded response, one plain forward pass.
    width = rollout.prompt_ids_np.shape[1]
    tokens = np.concatenate([rollout.prompt_ids_np, rollout.response_ids_np], axis=1)
    valid = np.concatenate([rollout.prompt_mask_np, rollout.response_mask_np], axis=1)
    logits = full_forward_logits(model, tokens, valid).astype(np.float64)
    z = logits[:, width - 1: -1] / sp.logprob_temperature
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = np.take_along_axis(logp, rollout.response_ids_np[..., None], axis=-1)[..., 0]
    mask = rollout.response_mask_np == 1
    np.testing.assert_allclose(rollout.logprobs_np[mask], expected[mask], atol=TOL)
    assert np.all(rollout.logprobs_np[~mask] == 0)
    if sp.greedy:
        np.testing.assert_array_equal(rollout.response_ids_np[mask], z.argmax(-1)[mask])


def test_stops_at_stop_ids_eos_and_stop_strings(model):
    free = Sampler(model, ByteTokenizer(), cache_dtype=jnp.float32)
    sp = SamplingParams(max_new_tokens=16, greedy=True)
    base = free.generate(PROMPTS, sp, jax.random.key(0))
    assert base.finish_reasons == ["length"] * 3 and np.all(base.lengths_n == 16)
    # Stop id: the 5th token of sample 0; every sample stops at its first occurrence, if any.
    stop_id = int(base.response_ids_np[0, 4])

    def expected_length(row):
        hits = np.flatnonzero(row == stop_id)
        return int(hits[0]) + 1 if hits.size else 16

    for stopper, params in [
        (free, SamplingParams(max_new_tokens=16, greedy=True, stop_token_ids=(stop_id,))),
        (Sampler(model, ByteTokenizer(eos_token_ids=(stop_id,)), cache_dtype=jnp.float32), sp),
    ]:
        r = stopper.generate(PROMPTS, params, jax.random.key(0))
        for i in range(3):
            length = expected_length(base.response_ids_np[i])
            assert r.lengths_n[i] == length
            assert r.finish_reasons[i] == ("stop" if length < 16 or base.response_ids_np[i, 15] == stop_id
                                           else "length")
            np.testing.assert_array_equal(r.response_ids_np[i, :length], base.response_ids_np[i, :length])
            assert np.all(r.response_ids_np[i, length:] == 0)
            np.testing.assert_array_equal(r.response_mask_np[i], np.arange(16) < length)
            text_len = length - 1 if r.finish_reasons[i] == "stop" else length
            assert r.texts[i] == base.texts[i][:text_len]
    # EOS ids are ignored when include_eos=False.
    eos_sampler = Sampler(model, ByteTokenizer(eos_token_ids=(stop_id,)), cache_dtype=jnp.float32)
    r = eos_sampler.generate(PROMPTS, SamplingParams(max_new_tokens=16, greedy=True, include_eos=False),
                             jax.random.key(0))
    np.testing.assert_array_equal(r.response_ids_np, base.response_ids_np)

    # Stop string: two characters of sample 2's text (one token per byte here).
    stop_string = base.texts[2][6:8]
    r = free.generate(PROMPTS, SamplingParams(max_new_tokens=16, greedy=True, stop_strings=(stop_string,)),
                      jax.random.key(0))
    for i in range(3):
        pos = base.texts[i].find(stop_string)
        if pos < 0:
            assert r.finish_reasons[i] == "length" and r.lengths_n[i] == 16
            continue
        end = pos + len(stop_string)
        assert r.texts[i] == base.texts[i][:end] and r.lengths_n[i] == end
        assert r.finish_reasons[i] == "stop"
        assert r.response_mask_np[i].sum() == end and np.all(r.logprobs_np[i, end:] == 0)


def test_max_new_tokens_one_and_input_errors(model, sampler):
    r = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=1, greedy=True), jax.random.key(0))
    assert r.response_ids_np.shape == (3, 1) and list(r.lengths_n) == [1, 1, 1]
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampler.generate([[1], []], SamplingParams(), jax.random.key(0))
    with pytest.raises(ValueError, match="outside"):
        sampler.generate([[1, 999]], SamplingParams(), jax.random.key(0))
    with pytest.raises(ValueError, match="max_prompt_len"):
        Sampler(model, None, max_prompt_len=4).generate([[1] * 5], SamplingParams(), jax.random.key(0))
    with pytest.raises(TypeError, match="SamplingParams"):
        sampler.generate(PROMPTS, {"max_new_tokens": 3}, jax.random.key(0))


def test_keys_reproducible_and_samples_differ(sampler):
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, n=4)
    a = sampler.generate(PROMPTS, sp, jax.random.key(11))
    b = sampler.generate(PROMPTS, sp, jax.random.key(11))
    c = sampler.generate(PROMPTS, sp, jax.random.key(12))
    np.testing.assert_array_equal(a.response_ids_np, b.response_ids_np)
    assert not np.array_equal(a.response_ids_np, c.response_ids_np)
    np.testing.assert_array_equal(a.group_ids_n, np.repeat(np.arange(3), 4))
    for g in range(3):
        rows = {tuple(row) for row in a.response_ids_np[g * 4:(g + 1) * 4]}
        assert len(rows) == 4, "the n samples of a prompt must differ"
        np.testing.assert_array_equal(a.prompt_ids_np[g * 4], a.prompt_ids_np[g * 4 + 3])


def test_continue_from_prefix_equals_uninterrupted_generation(sampler):
    sp = SamplingParams(max_new_tokens=16, greedy=True)
    full = sampler.generate(PROMPTS, sp, jax.random.key(0))
    resumed = sampler.generate([p + full.response_ids_np[i, :5].tolist() for i, p in enumerate(PROMPTS)],
                               SamplingParams(max_new_tokens=11, greedy=True), jax.random.key(0))
    np.testing.assert_array_equal(resumed.response_ids_np, full.response_ids_np[:, 5:])
    np.testing.assert_allclose(resumed.logprobs_np, full.logprobs_np[:, 5:], atol=TOL)

    texts = sampler.generate_text(["hello", "a longer question?"], sp, jax.random.key(0))
    prefixes = [t[0][:6] for t in texts]
    continued = sampler.continue_text(["hello", "a longer question?"], prefixes,
                                      SamplingParams(max_new_tokens=10, greedy=True), jax.random.key(0))
    for text, prefix, cont in zip(texts, prefixes, continued):
        assert prefix + cont[0] == text[0]


def test_generate_text_chunks_and_chat_template(sampler):
    prompts = ["one", [{"role": "system", "content": "s"}, {"role": "user", "content": "two"}], "three"]
    sp = SamplingParams(max_new_tokens=8, greedy=True, n=2)
    whole = sampler.generate_text(prompts, sp, jax.random.key(0), batch_size=8)
    chunked = sampler.generate_text(prompts, sp, jax.random.key(0), batch_size=2, progress=True)
    assert len(whole) == 3 and all(len(t) == 2 for t in whole)
    assert whole == chunked
    ids = ByteTokenizer().apply_chat_template(prompts[1])
    direct = sampler.generate([ids], sp, jax.random.key(0))
    assert direct.texts[:1] == whole[1][:1]


def test_update_params_copies_new_weights(model, sampler):
    other = Transformer(get_preset("tiny"), rngs=nnx.Rngs(1))
    sp = SamplingParams(max_new_tokens=8, greedy=True)
    fresh = Sampler(other, ByteTokenizer(), cache_dtype=jnp.float32).generate(PROMPTS, sp, jax.random.key(0))
    s = Sampler(model, ByteTokenizer(), cache_dtype=jnp.float32)
    before = s.generate(PROMPTS, sp, jax.random.key(0))
    seconds = s.update_params(other)
    assert seconds > 0
    after = s.generate(PROMPTS, sp, jax.random.key(0))
    np.testing.assert_array_equal(after.response_ids_np, fresh.response_ids_np)
    assert not np.array_equal(before.response_ids_np, after.response_ids_np)
    # A pure-dict copy of the weights (e.g. a checkpoint's) and a jitted round trip work too.
    s.update_params(model)
    s.update_params(jax.jit(lambda p: p)(nnx.to_pure_dict(nnx.state(other))))
    np.testing.assert_array_equal(s.generate(PROMPTS, sp, jax.random.key(0)).response_ids_np,
                                  fresh.response_ids_np)
    with pytest.raises(ValueError, match="does not match"):
        s.update_params({"w": jnp.zeros(3)})


def test_compute_dtype_copy_decodes_exactly_like_the_models_own_weights():
    # float32 weights, bfloat16 compute: the default copy holds the matmul weights in bfloat16 (what the
    # forward casts them to) and the norm scales in float32 (read in float32): half the bytes, same tokens and
    # log-probs as a sampler that keeps the float32 weights.
    bf16 = Transformer(get_preset("tiny", dtype="bfloat16"), rngs=nnx.Rngs(0))
    sp = SamplingParams(max_new_tokens=12, temperature=1.0)
    compute = Sampler(bf16, ByteTokenizer(), cache_dtype=jnp.float32)
    stored = Sampler(bf16, ByteTokenizer(), cache_dtype=jnp.float32, param_dtype=None)
    dtypes = {jax.tree_util.keystr(path): x.dtype for path, x in jax.tree_util.tree_leaves_with_path(compute.params)}
    for name, dtype in dtypes.items():
        assert dtype == (jnp.float32 if "norm" in name else jnp.bfloat16), name
    norm_values = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(compute.params)
                      if "norm" in jax.tree_util.keystr(path))
    total_values = sum(x.size for x in jax.tree.leaves(compute.params))
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    assert nbytes(compute.params) == 2 * (total_values - norm_values) + 4 * norm_values
    assert nbytes(stored.params) == 4 * total_values
    a = compute.generate(PROMPTS, sp, jax.random.key(3))
    b = stored.generate(PROMPTS, sp, jax.random.key(3))
    np.testing.assert_array_equal(a.response_ids_np, b.response_ids_np)
    np.testing.assert_array_equal(a.logprobs_np, b.logprobs_np)
    # An explicit dtype casts every floating weight, norms included.
    explicit = Sampler(bf16, ByteTokenizer(), param_dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(explicit.params))
