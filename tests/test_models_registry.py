"""load_model specs, the HF-directory tokenizer, export with a tokenizer, and the error cases."""

import json

import numpy as np
import pytest
import tokenizers
import transformers

import jax

from jaxalign import sharding
from jaxalign.models import export_hf, load_model
from jaxalign.models.tokenizer import tokenizer_from_hf_dir
from test_models_hf import hf_logits, our_logits, save_random_hf_model

WORDS = ["<unk>", "<s>", "</s>", "<pad>", "<|end|>", "hello", "world", "user", "assistant", ":", "hi"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")


def save_word_tokenizer(directory, *, with_pad=True):
    vocab = {word: i for i, word in enumerate(WORDS)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.decoder = tokenizers.decoders.WordPiece()
    special = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if with_pad:
        special["pad_token"] = "<pad>"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 4]}))


def test_random_preset_without_and_with_mesh():
    model, tokenizer = load_model("random:tiny")
    assert tokenizer is None and model.cfg.num_layers == 2
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, _ = load_model("random:tiny", mesh=mesh, role="train", param_dtype="bfloat16")
    q = sharded.layers.q_proj[...]
    assert q.dtype == jax.numpy.bfloat16 and sharded.cfg.dtype == "bfloat16"
    assert q.sharding.spec == sharding.logical_to_spec(("layers", "embed", "heads", "head_dim"), mesh,
                                                       "train", q.shape)
    assert len(q.addressable_shards) == 8


def test_hf_directory_with_tokenizer_and_mesh(tmp_path):
    ref = save_random_hf_model("qwen2", tmp_path)
    save_word_tokenizer(tmp_path)
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    model, tokenizer = load_model(str(tmp_path), mesh=mesh, role="sample")
    assert model.layers.gate_proj[...].sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
    assert tokenizer.eos_token_ids == (2, 4)
    assert tokenizer.pad_id == 3 and tokenizer.bos_id == 1 and tokenizer.vocab_size == len(WORDS)
    assert tokenizer.encode("hello world") == [5, 6]
    assert tokenizer.decode([5, 6, 2]) == "hello world"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == [7, 9, 10, 2, 8, 9]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                         add_generation_prompt=False) == [7, 9, 10, 2]
    tokens = np.array([[5, 6, 7, 8, 9, 10, 1, 2]])
    valid = np.ones_like(tokens)
    np.testing.assert_allclose(our_logits(model, tokens, valid), hf_logits(ref, tokens, valid), atol=1e-4)


def test_export_with_tokenizer(tmp_path):
    save_random_hf_model("llama", tmp_path / "src")
    save_word_tokenizer(tmp_path / "src")
    model, tokenizer = load_model(str(tmp_path / "src"))
    export_hf(model, tokenizer, str(tmp_path / "out"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eos_token_id"] == [2, 4] and config["pad_token_id"] == 3
    reloaded_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert reloaded_tok("hello world", add_special_tokens=False)["input_ids"] == [5, 6]
    again, again_tok = load_model(str(tmp_path / "out"))
    assert again_tok.encode("world hello") == [6, 5]
    tokens = np.array([[5, 6, 7, 8]])
    np.testing.assert_array_equal(our_logits(again, tokens, np.ones_like(tokens)),
                                  our_logits(model, tokens, np.ones_like(tokens)))


def test_pad_falls_back_to_eos(tmp_path):
    save_word_tokenizer(tmp_path, with_pad=False)
    tokenizer_from_hf_dir.cache_clear()
    assert tokenizer_from_hf_dir(str(tmp_path)).pad_id == 2


def test_missing_tokenizer_is_an_error(tmp_path):
    save_random_hf_model("qwen3", tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_model(str(tmp_path))


def test_unknown_specs_list_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model spec 'gpt-9'.*\.gguf.*smollm2-135m-instruct.*random:<preset>"):
        load_model("gpt-9")
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        load_model("random:huge")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_model(str(tmp_path))
