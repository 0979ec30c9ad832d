"""Models: configuration and presets, the stacked-layer nnx Transformer, HF/GGUF loaders, tokenizer."""

from jaxalign.models.config import PRESETS, ModelConfig, get_preset
from jaxalign.models.hf import export_hf, load_hf
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
    "Transformer",
    "causal_attention_mask",
    "export_hf",
    "get_preset",
    "load_hf",
    "positions_from_mask",
]
