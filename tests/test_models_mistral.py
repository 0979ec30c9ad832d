"""MistralForCausalLM: logit parity with transformers through `load_model`, export round trip, and the
refusal of sliding-window configs."""

import json

import numpy as np
import pytest
import torch
import transformers

from jaxalign.models import export_hf, load_model
from jaxalign.models.config import ModelConfig
from test_models_hf import hf_logits, our_logits
from test_models_registry import save_word_tokenizer

VOCAB = 128


def _mistral_config(**changes) -> transformers.MistralConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                  max_position_embeddings=512, sliding_window=None, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    fields.update(changes)
    return transformers.MistralConfig(**fields)


def save_random_mistral(directory, seed: int = 0, **changes) -> transformers.MistralForCausalLM:
    """A tiny random transformers Mistral (every weight, norm scales included, random) saved as safetensors
    with a word-level tokenizer, so that `load_model` accepts the directory."""
    torch.manual_seed(seed)
    model = transformers.MistralForCausalLM(_mistral_config(**changes)).to(torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    save_word_tokenizer(directory)
    return model


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(3, 10))
    valid = np.ones((3, 10), dtype=np.int64)
    valid[1, :4] = 0  # left padding
    valid[2, :1] = 0
    return tokens, valid


# head_dim None: derived as hidden / heads (16); 24: an explicit head_dim that differs from it.
@pytest.mark.parametrize("head_dim", [None, 24])
def test_logits_match_transformers(head_dim, tmp_path):
    ref = save_random_mistral(tmp_path, head_dim=head_dim)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]
    model, tokenizer = load_model(str(tmp_path))
    cfg = model.cfg
    assert tokenizer is not None
    assert cfg.arch == "mistral" and cfg.head_dim == (head_dim or 16)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.num_layers) == (4, 2, 2)
    assert not cfg.qkv_bias and not cfg.qk_norm and not cfg.tie_embeddings
    assert cfg.rope_theta == 1e6
    tokens, valid = _batch(seed=1)
    mask = valid.astype(bool)
    np.testing.assert_allclose(our_logits(model, tokens, valid)[mask], hf_logits(ref, tokens, valid)[mask],
                               atol=1e-4, rtol=0)


def test_export_round_trip_is_mistral(tmp_path):
    ref = save_random_mistral(tmp_path / "src", seed=3, head_dim=24)
    model, tokenizer = load_model(str(tmp_path / "src"))
    export_hf(model, tokenizer, str(tmp_path / "out"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"] and config["model_type"] == "mistral"
    assert config["sliding_window"] is None and config["head_dim"] == 24
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    assert type(reloaded).__name__ == "MistralForCausalLM"
    tokens, valid = _batch(seed=5)
    mask = valid.astype(bool)
    np.testing.assert_allclose(hf_logits(reloaded, tokens, valid)[mask], hf_logits(ref, tokens, valid)[mask],
                               atol=1e-4, rtol=0)
    again, _ = load_model(str(tmp_path / "out"))
    assert again.cfg == model.cfg


def _config_dict(**changes) -> dict:
    return _mistral_config(**changes).to_dict() | {"architectures": ["MistralForCausalLM"]}


@pytest.mark.parametrize("window", [4096, 511])
def test_sliding_window_is_refused(window):
    with pytest.raises(ValueError, match=r"sliding_window=%d.*no sliding window" % window):
        ModelConfig.from_hf(_config_dict(sliding_window=window, max_position_embeddings=512 if window == 511
                                         else 32768))


def test_sliding_window_refused_by_load_model(tmp_path):
    save_random_mistral(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"sliding_window": 128}))
    with pytest.raises(ValueError, match="sliding_window=128"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("window", [None, 512, 4096])
def test_sliding_window_not_shorter_than_context_is_accepted(window):
    cfg = ModelConfig.from_hf(_config_dict(sliding_window=window))  # max_position_embeddings=512
    assert cfg.arch == "mistral" and cfg.max_position_embeddings == 512
