"""LoRA adapters for the stacked-layer `Transformer`: a frozen base plus trainable low-rank updates.

A target projection `y = x W` (W of shape [*in, *out] in our layout, e.g. q_proj [d, h, e]) becomes
`y = x W + (alpha / rank) * (x A) B` with `A` [*in, r] (PEFT's `lora_A`) and `B` [r, *out] (`lora_B`),
`B` = 0 at the start, so the first forward pass is the base's. The adapters live in a `LoraAdapters`
module attached to the model as `model.layers.lora`, stacked on the same leading `layers` axis as the base
weights, so they are scanned with them (one `lax.scan`, remat per layer); their variables are
`nnx.LoRAParam`, which separates them from the base (`nnx.Param`) in `nnx.split(model, nnx.LoRAParam, ...)`.

Why our own implementation and not `qwix`: qwix intercepts the einsums of a module and matches their
right-hand side to a parameter of that module, creating one adapter per call. Our decoder runs every layer
inside one `lax.scan` over slices of stacked weights, in one function of the `Transformer` module: the
einsum operands are scan slices, not module parameters, and q/k/v/o/MLP share one module, so qwix finds no
weight to adapt and could not create stacked adapters. A small explicit implementation keeps the scan,
the logical-axis sharding and the HF/PEFT name mapping in our hands.

Memory: the base is split from the adapters (`split_lora`) and shared, never copied: the reference policy
is the base itself (a graphdef without adapters, `base_graphdef`), agents on the same base share one copy,
and only adapters are trained, checkpointed and hold optimizer state.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.config import LORA_TARGETS
from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import LOGICAL_AXES_KEY, Transformer

TARGETS = LORA_TARGETS
_ADAPTERS_PATH = ("layers", "lora")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, scale numerator, target projections and dropout of the adapters (see the module doc)."""

    rank: int
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    dropout: float = 0.0

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"LoRA targets {list(self.targets)}: give distinct names out of {', '.join(TARGETS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


Shape = tuple[int, ...]
Axes = tuple[str, ...]


def target_dims(cfg: ModelConfig, target: str) -> tuple[Shape, Axes, Shape, Axes]:
    """(input shape, input logical axes, output shape, output logical axes) of one layer's projection."""
    d, f, h, k, e = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dims = {
        "q_proj": ((d,), ("embed",), (h, e), ("heads", "head_dim")),
        "k_proj": ((d,), ("embed",), (k, e), ("kv_heads", "head_dim")),
        "v_proj": ((d,), ("embed",), (k, e), ("kv_heads", "head_dim")),
        "o_proj": ((h, e), ("heads", "head_dim"), (d,), ("embed",)),
        "gate_proj": ((d,), ("embed",), (f,), ("mlp",)),
        "up_proj": ((d,), ("embed",), (f,), ("mlp",)),
        "down_proj": ((f,), ("mlp",), (d,), ("embed",)),
    }
    if target not in dims:
        raise ValueError(f"unknown LoRA target {target!r}; known: {', '.join(TARGETS)}")
    return dims[target]


def _lora_param(value: jax.Array, logical_axes: tuple[str | None, ...]) -> nnx.LoRAParam:
    # The rank axis has no logical name (None): it is small and replicated.
    return nnx.LoRAParam(value, eager_sharding=False, **{LOGICAL_AXES_KEY: logical_axes})


class LoraAdapters(nnx.Module):
    """`A` and `B` of every target, stacked over layers: `<target>_a` [l, *in, r], `<target>_b` [l, r, *out].

    `A` starts uniform in ±1/sqrt(fan_in) (PEFT's default Kaiming-uniform bound), `B` at zero. `scale`
    (alpha / rank), `dropout` and `targets` are static (part of the graphdef)."""

    def __init__(self, cfg: ModelConfig, lora: LoraConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.targets = tuple(lora.targets)
        self.rank = int(lora.rank)
        self.alpha = float(lora.alpha)
        self.scale = lora.scale
        self.dropout = float(lora.dropout)
        l, r = cfg.num_layers, lora.rank
        for target in self.targets:
            in_shape, in_axes, out_shape, out_axes = target_dims(cfg, target)
            bound = 1.0 / math.sqrt(math.prod(in_shape))
            a = jax.random.uniform(rngs.params(), (l, *in_shape, r), dtype, -bound, bound)
            setattr(self, f"{target}_a", _lora_param(a, ("layers", *in_axes, None)))
            setattr(self, f"{target}_b", _lora_param(jnp.zeros((l, r, *out_shape), dtype), ("layers", None, *out_axes)))

    @property
    def config(self) -> LoraConfig:
        return LoraConfig(rank=self.rank, alpha=self.alpha, targets=self.targets, dropout=self.dropout)

    def stacked_weights(self) -> dict[str, tuple[jax.Array, jax.Array]]:
        """`{target: (A [l, *in, r], B [l, r, *out])}` as raw arrays (scanned over layers with the base)."""
        return {t: (getattr(self, f"{t}_a")[...], getattr(self, f"{t}_b")[...]) for t in self.targets}


# ----------------------------------------------------------------------------------------------------
# Models with adapters
# ----------------------------------------------------------------------------------------------------


def adapters_of(model: Transformer) -> LoraAdapters | None:
    """The model's `LoraAdapters`, or None for a plain model."""
    return getattr(model.layers, "lora", None)


def lora_config_of(model: Transformer) -> LoraConfig | None:
    adapters = adapters_of(model)
    return None if adapters is None else adapters.config


def add_lora(model: Transformer, lora: LoraConfig, *, seed: int = 0, mesh=None, role: str = "train",
             dtype=None) -> Transformer:
    """A new `Transformer` object with fresh adapters on `model`'s weights (the same arrays: nothing of the
    base is copied; `model` itself is left as it is). The adapters are created in `dtype` (default: the
    model's `param_dtype`), already sharded by the `role` rules when a mesh is given."""
    if adapters_of(model) is not None:
        raise ValueError("the model already has LoRA adapters")
    cfg = model.cfg
    dtype = jnp.dtype(dtype or cfg.param_dtype)

    def create():
        return LoraAdapters(cfg, lora, rngs=nnx.Rngs(seed), dtype=dtype)

    if mesh is None:
        adapters = create()
    else:
        from jaxalign import sharding as sharding_lib

        graphdef, abstract = nnx.split(nnx.eval_shape(create))
        shardings = sharding_lib.param_shardings(abstract, mesh, role)
        adapters = nnx.merge(graphdef, jax.jit(lambda: nnx.state(create()), out_shardings=shardings)())
    graphdef, state = nnx.split(model)
    out = nnx.merge(graphdef, state)
    out.layers.lora = adapters
    return out


def split_lora(model: Transformer) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`(graphdef, adapters, base)`: `nnx.merge(graphdef, adapters, base)` is the model again."""
    return nnx.split(model, nnx.LoRAParam, ...)


def base_graphdef(cfg: ModelConfig) -> nnx.GraphDef:
    """The graphdef of a plain `Transformer` with config `cfg`: `nnx.merge(base_graphdef(cfg), base)` is the
    base model (adapters off) on the base state of `split_lora`, without copying it."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[0]


def is_adapter_path(path: tuple) -> bool:
    return tuple(str(p) for p in path[:2]) == _ADAPTERS_PATH


def merged_state(state: nnx.State, lora: LoraConfig, *, dtype=None) -> nnx.State:
    """The state of a plain `Transformer` with the adapters folded in: `W + (alpha / rank) A B` for every
    target, computed in float32 and cast to W's dtype, or to `dtype` (the sampler gives the compute dtype,
    which the forward pass casts every weight to anyway: a bfloat16 base with float32 adapters and float32
    compute merges into float32, so small updates are not rounded away). `state` is a LoRA model's full
    state (base and adapters). Pure and jittable."""
    flat = dict(nnx.to_flat_state(state))
    adapters = {tuple(str(p) for p in path[2:]): v for path, v in flat.items() if is_adapter_path(path)}
    out = {}
    for path, variable in flat.items():
        if is_adapter_path(path):
            continue
        name = str(path[-1])
        if tuple(str(p) for p in path[:-1]) == ("layers",) and name in lora.targets:
            w = variable.get_value()
            a, b = adapters[(f"{name}_a",)].get_value(), adapters[(f"{name}_b",)].get_value()
            delta = jax.vmap(lambda a_, b_: jnp.tensordot(a_, b_, axes=1))(
                a.astype(jnp.float32), b.astype(jnp.float32))
            merged = w.astype(jnp.float32) + lora.scale * delta
            variable = variable.replace(merged.astype(w.dtype if dtype is None else dtype))
        out[path] = variable
    return nnx.from_flat_state(out)


def merged_model(model: Transformer) -> Transformer:
    """A plain `Transformer` whose weights have the adapters folded in (the model itself for a plain one)."""
    lora = lora_config_of(model)
    if lora is None:
        return model
    _, state = nnx.split(model)
    return nnx.merge(base_graphdef(model.cfg), merged_state(state, lora))

