"""Model configuration: one frozen dataclass for the Llama / Mistral / Qwen2 / Qwen3 decoder family.

`ModelConfig.from_hf` reads a HuggingFace ``config.json`` dictionary (both the transformers 4 layout with
``rope_theta``/``rope_scaling`` at top level and the transformers 5 layout with ``rope_parameters``), and
`ModelConfig.to_hf` writes one that ``transformers.AutoConfig`` understands.

Mistral is the Llama layout (no biases, no q/k norm) under another name; it is kept as its own arch only so
that export writes a Mistral config back. Its sliding-window attention is not implemented: a Mistral
config whose `sliding_window` is shorter than `max_position_embeddings` is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")

# HF architecture class name -> our arch name, and the reverse for export.
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_ARCH_TO_HF = {arch: hf_name for hf_name, arch in HF_ARCHITECTURES.items()}
_LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def canonical_dtype_name(dtype: Any) -> str:
    """Returns the canonical name ("float32", "bfloat16", "float16") of a dtype given as str or dtype."""
    try:
        name = np.dtype(dtype).name
    except TypeError as err:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {SUPPORTED_DTYPES}") from err
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {SUPPORTED_DTYPES}")
    return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer.

    `rope_scaling` is None or a sorted tuple of (key, value) pairs of a llama3 scaling (keys `factor`,
    `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`). `param_dtype` is the
    storage dtype of the weights, `dtype` the compute dtype; softmax and norms always run in float32.
    Dtypes are stored as canonical names ("float32", "bfloat16"); numpy/jax dtypes are accepted.
    """

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, float], ...] | None = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 4096
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of {ARCHITECTURES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("rms_norm_eps and rope_theta must be positive")
        object.__setattr__(self, "param_dtype", canonical_dtype_name(self.param_dtype))
        object.__setattr__(self, "dtype", canonical_dtype_name(self.dtype))
        if self.rope_scaling is not None:
            scaling = dict(self.rope_scaling)
            missing = [key for key in _LLAMA3_ROPE_KEYS if key not in scaling]
            unknown = [key for key in scaling if key not in _LLAMA3_ROPE_KEYS]
            if missing or unknown:
                raise ValueError(
                    f"rope_scaling must hold exactly the llama3 keys {_LLAMA3_ROPE_KEYS}; "
                    f"missing {missing}, unknown {unknown}")
            object.__setattr__(
                self, "rope_scaling", tuple(sorted((k, float(v)) for k, v in scaling.items())))

    @property
    def num_groups(self) -> int:
        """Query heads per kv head (GQA group size)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> "ModelConfig":
        """Returns a copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Number of parameters of a model with this configuration."""
        d, f, e = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * e * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += e * (self.num_heads + 2 * self.num_kv_heads)
        if self.qk_norm:
            attn += 2 * e
        per_layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embed + d

    @classmethod
    def from_hf(cls, config: dict[str, Any], **overrides) -> "ModelConfig":
        """Builds a config from a HuggingFace config.json dictionary.

        Supports LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM;
        `overrides` replace fields (e.g. `param_dtype`, `remat`). A Mistral config with a `sliding_window`
        shorter than `max_position_embeddings` raises (full causal attention would differ from it).
        """
        architectures = config.get("architectures") or []
        known = [name for name in architectures if name in HF_ARCHITECTURES]
        if not known:
            raise ValueError(
                f"unsupported model architecture {architectures or config.get('model_type')!r}; "
                f"supported: {sorted(HF_ARCHITECTURES)}")
        arch = HF_ARCHITECTURES[known[0]]
        hidden_act = config.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {hidden_act!r}; only 'silu' (SwiGLU) is implemented")
        if config.get("mlp_bias", False):
            raise ValueError("mlp_bias=True is not supported")
        if config.get("use_sliding_window", False):
            raise ValueError("use_sliding_window=True is not supported")
        if arch == "mistral":
            _check_mistral(config)

        rope_params = dict(config.get("rope_parameters") or {})
        legacy_scaling = config.get("rope_scaling")
        if legacy_scaling:
            rope_params.update(legacy_scaling)
        rope_theta = float(config.get("rope_theta", rope_params.get("rope_theta", 10000.0)))
        rope_type = rope_params.get("rope_type", rope_params.get("type", "default"))
        if rope_type == "llama3":
            rope_scaling = tuple((key, float(rope_params[key])) for key in _LLAMA3_ROPE_KEYS)
        elif rope_type in ("default", None):
            rope_scaling = None
        else:
            raise ValueError(f"unsupported rope type {rope_type!r}; supported: default, llama3")

        num_heads = int(config["num_attention_heads"])
        hidden_size = int(config["hidden_size"])
        head_dim = config.get("head_dim") or hidden_size // num_heads
        if arch == "qwen2":
            qkv_bias = True
        else:
            qkv_bias = bool(config.get("attention_bias", False))
        fields = dict(
            arch=arch,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            qk_norm=arch == "qwen3",
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf(self) -> dict[str, Any]:
        """Returns a HuggingFace config.json dictionary for this configuration."""
        if self.arch == "qwen2" and not self.qkv_bias:
            raise ValueError("Qwen2 in transformers always has qkv bias; cannot export qkv_bias=False")
        if self.arch == "mistral" and self.qkv_bias:
            raise ValueError("Mistral in transformers has no qkv bias; cannot export qkv_bias=True")
        if self.arch != "qwen3" and self.qk_norm:
            raise ValueError(f"arch {self.arch!r} has no q/k norm in transformers; cannot export qk_norm")
        if self.arch == "qwen3" and not self.qk_norm:
            raise ValueError("Qwen3 in transformers always has q/k norm; cannot export qk_norm=False")
        rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope_parameters.update(dict(self.rope_scaling))
            rope_parameters["rope_type"] = "llama3"
            rope_parameters["original_max_position_embeddings"] = int(
                rope_parameters["original_max_position_embeddings"])
        config: dict[str, Any] = {
            "architectures": [_ARCH_TO_HF[self.arch]],
            "model_type": self.arch,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": self.param_dtype,
            "dtype": self.param_dtype,
        }
        if self.arch in ("llama", "qwen3"):
            config["attention_bias"] = self.qkv_bias
            config["mlp_bias"] = False
        if self.arch in ("qwen2", "qwen3"):
            config["use_sliding_window"] = False
        if self.arch == "mistral":
            config["sliding_window"] = None  # full causal attention, as computed here
        return config


def _check_mistral(config: dict[str, Any]) -> None:
    """Refuses Mistral configs that need what `Transformer` lacks (sliding-window attention, biases)."""
    window = config.get("sliding_window")
    max_positions = int(config.get("max_position_embeddings", 4096))
    if window is not None and int(window) < max_positions:
        raise ValueError(
            f"unsupported Mistral config: sliding_window={window} is shorter than max_position_embeddings="
            f"{max_positions}, and jaxalign's attention has no sliding window (it attends to every earlier "
            "token, which differs from the checkpoint's attention beyond the window); only configs with "
            "sliding_window null (or >= max_position_embeddings) are supported")
    if config.get("attention_bias", False):
        raise ValueError("unsupported Mistral config: attention_bias=True (Mistral has no qkv bias)")


def _preset(**fields) -> ModelConfig:
    return ModelConfig(**fields)


PRESETS: dict[str, ModelConfig] = {
    # A test-sized shape: every code path (GQA, bias-free llama) at a few hundred KB.
    "tiny": _preset(arch="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
                    tie_embeddings=True, max_position_embeddings=512),
    "smollm2-135m": _preset(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                            num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
                            rms_norm_eps=1e-5, tie_embeddings=True, max_position_embeddings=8192),
    "qwen2.5-0.5b": _preset(arch="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                            num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1000000.0,
                            rms_norm_eps=1e-6, tie_embeddings=True, qkv_bias=True,
                            max_position_embeddings=32768),
    "qwen2.5-7b": _preset(arch="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                          num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1000000.0,
                          rms_norm_eps=1e-6, tie_embeddings=False, qkv_bias=True,
                          max_position_embeddings=32768),
    "qwen3-0.6b": _preset(arch="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                          num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1000000.0,
                          rms_norm_eps=1e-6, tie_embeddings=True, qk_norm=True,
                          max_position_embeddings=40960),
    "llama3.2-1b": _preset(arch="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                           num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0,
                           rope_scaling=(("factor", 32.0), ("high_freq_factor", 4.0),
                                         ("low_freq_factor", 1.0),
                                         ("original_max_position_embeddings", 8192.0)),
                           rms_norm_eps=1e-5, tie_embeddings=True, max_position_embeddings=131072),
    "llama3.1-8b": _preset(arch="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                           num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
                           rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                                         ("original_max_position_embeddings", 8192.0)),
                           rms_norm_eps=1e-5, tie_embeddings=False, max_position_embeddings=131072),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """Returns `PRESETS[name]` with `overrides` applied; unknown names raise listing the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
