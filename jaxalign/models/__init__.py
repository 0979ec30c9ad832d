"""Models: configuration and presets, the stacked-layer nnx Transformer, HF/GGUF loaders, tokenizer."""

from jaxalign.models.config import PRESETS, ModelConfig, get_preset
from jaxalign.models.gguf import load_gguf
from jaxalign.models.hf import export_hf, load_hf
from jaxalign.models.registry import load_model
from jaxalign.models.tokenizer import Tokenizer
from jaxalign.models.transformer import (
    KVCache,
    Transformer,
    causal_attention_mask,
    positions_from_mask,
)

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "Tokenizer",
    "Transformer",
    "causal_attention_mask",
    "export_hf",
    "get_preset",
    "load_gguf",
    "load_hf",
    "load_model",
    "positions_from_mask",
]
