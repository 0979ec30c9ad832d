"""Logit parity with transformers on tiny random Llama / Qwen2 / Qwen3 checkpoints, export round trip,
and strict-loading errors."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import jax
import jax.numpy as jnp

from jaxalign.models import hf
from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import causal_attention_mask, positions_from_mask

COMMON = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
              num_attention_heads=6, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
              max_position_embeddings=256)


def _hf_configs():
    return {
        "llama": transformers.LlamaConfig(
            **COMMON, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 4.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16}),
        "qwen2": transformers.Qwen2Config(**COMMON, tie_word_embeddings=True,
                                          rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        "qwen3": transformers.Qwen3Config(**COMMON, tie_word_embeddings=False,
                                          rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    }


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (norm scales and biases too) so that every mapping is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def save_random_hf_model(arch: str, directory, seed: int = 0):
    config = _hf_configs()[arch]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    _randomise(model, seed)
    model.save_pretrained(directory)
    return model


def hf_logits(model, tokens_bt: np.ndarray, valid_bt: np.ndarray) -> np.ndarray:
    positions = np.maximum(np.cumsum(valid_bt, axis=-1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens_bt), attention_mask=torch.as_tensor(valid_bt),
                    position_ids=torch.as_tensor(positions))
    return out.logits.float().numpy()


def our_logits(model, tokens_bt: np.ndarray, valid_bt: np.ndarray) -> np.ndarray:
    valid = jnp.asarray(valid_bt)
    hidden, _ = model(jnp.asarray(tokens_bt), positions_from_mask(valid), causal_attention_mask(valid))
    return np.asarray(model.unembed(hidden))


def _batch(vocab: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(2, 12))
    valid = np.ones((2, 12), dtype=np.int64)
    valid[1, :3] = 0  # left padding on the second row
    return tokens, valid


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_logits_match_transformers(arch, tmp_path):
    ref = save_random_hf_model(arch, tmp_path)
    model = hf.load_hf(str(tmp_path))
    cfg = model.cfg
    assert cfg.arch == arch
    assert cfg.qkv_bias == (arch == "qwen2") and cfg.qk_norm == (arch == "qwen3")
    assert cfg.tie_embeddings == (arch == "qwen2")
    assert (cfg.rope_scaling is not None) == (arch == "llama")
    tokens, valid = _batch(cfg.vocab_size)
    expected = hf_logits(ref, tokens, valid)
    got = our_logits(model, tokens, valid)
    mask = valid.astype(bool)
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_export_round_trip_loads_in_transformers(arch, tmp_path):
    save_random_hf_model(arch, tmp_path / "src", seed=3)
    model = hf.load_hf(str(tmp_path / "src"))
    hf.export_hf(model, None, str(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"),
                                                                 dtype=torch.float32).eval()
    tokens, valid = _batch(model.cfg.vocab_size, seed=5)
    mask = valid.astype(bool)
    np.testing.assert_allclose(hf_logits(reloaded, tokens, valid)[mask],
                               our_logits(model, tokens, valid)[mask], atol=1e-4, rtol=0)


def test_bfloat16_load_is_close_to_float32(tmp_path):
    save_random_hf_model("qwen2", tmp_path)
    model32 = hf.load_hf(str(tmp_path))
    model16 = hf.load_hf(str(tmp_path), param_dtype="bfloat16")
    assert model16.layers.q_proj[...].dtype == jnp.bfloat16
    tokens, valid = _batch(model32.cfg.vocab_size)
    logits16 = our_logits(model16, tokens, valid)
    assert logits16.dtype == np.float32
    mask = valid.astype(bool)
    ref = our_logits(model32, tokens, valid)[mask]
    rel = np.abs(logits16[mask] - ref).max() / np.abs(ref).max()
    assert rel < 0.1


def test_sharded_checkpoint_index(tmp_path):
    save_random_hf_model("qwen3", tmp_path / "single")
    tensors = load_file(str(tmp_path / "single" / "model.safetensors"))
    out = tmp_path / "sharded"
    os.makedirs(out)
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for file_name, chunk in (("model-00001-of-00002.safetensors", names[:half]),
                             ("model-00002-of-00002.safetensors", names[half:])):
        save_file({n: tensors[n] for n in chunk}, str(out / file_name), metadata={"format": "pt"})
        weight_map.update({n: file_name for n in chunk})
    with open(out / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(tmp_path / "single" / "config.json") as f:
        (out / "config.json").write_text(f.read())
    a = hf.load_hf(str(tmp_path / "single"))
    b = hf.load_hf(str(out))
    tokens, valid = _batch(a.cfg.vocab_size)
    np.testing.assert_array_equal(our_logits(a, tokens, valid), our_logits(b, tokens, valid))


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def llama_dir(tmp_path):
    save_random_hf_model("llama", tmp_path)
    return tmp_path


def _edit_tensors(directory, edit):
    path = str(directory / "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(llama_dir):
    _edit_tensors(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        hf.load_hf(str(llama_dir))


def test_unexpected_tensor_is_named(llama_dir):
    _edit_tensors(llama_dir, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias":
                                                 np.zeros(48, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected tensor.*model\.layers\.0\.self_attn\.q_proj\.bias"):
        hf.load_hf(str(llama_dir))


def test_shape_mismatch_is_named(llama_dir):
    _edit_tensors(llama_dir, lambda t: t.update({"model.norm.weight": np.ones(47, np.float32)}))
    with pytest.raises(ValueError, match=r"model\.norm\.weight.*shape \(47,\)"):
        hf.load_hf(str(llama_dir))


def test_non_float_tensor_is_named(llama_dir):
    _edit_tensors(llama_dir, lambda t: t.update({"model.norm.weight": np.ones(48, np.int8)}))
    with pytest.raises(ValueError, match=r"model\.norm\.weight.*dtype int8"):
        hf.load_hf(str(llama_dir))


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(_hf_configs()["llama"].to_dict() |
                                                     {"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load_hf(str(tmp_path))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unsupported model architecture.*GemmaForCausalLM"):
        ModelConfig.from_hf({"architectures": ["GemmaForCausalLM"], "vocab_size": 8})


def test_unsupported_rope_type():
    config = _hf_configs()["llama"].to_dict() | {"architectures": ["LlamaForCausalLM"]}
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ValueError, match="unsupported rope type 'yarn'"):
        ModelConfig.from_hf(config)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_config_round_trip_through_transformers(arch):
    hf_config = _hf_configs()[arch].to_dict() | {"architectures": [f"{type(_hf_configs()[arch]).__name__[:-6]}ForCausalLM"]}
    cfg = ModelConfig.from_hf(hf_config)
    again = ModelConfig.from_hf(transformers.AutoConfig.for_model(**cfg.to_hf()).to_dict()
                                | {"architectures": cfg.to_hf()["architectures"]})
    assert again == cfg
