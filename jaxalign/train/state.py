"""Train state and optimizer.

A policy is trained as a pure pytree: `TrainState(step, params, opt_state)`, where `params` is the
`nnx.State` of `graphdef, params = nnx.split(model)`. Parameters are stored in the model's `param_dtype`
(float32 master weights) and the forward pass runs in the model's compute `dtype` (bfloat16 on
accelerators), so no separate mixed-precision wrapper is needed. The frozen reference policy is just
another params pytree, passed where needed; several policies (e.g. WaltzRL's two agents) are several
`TrainState`s sharing nothing global.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, a constant or cosine schedule and global-norm gradient clipping.

    Attributes:
      learning_rate: peak learning rate.
      warmup_steps: linear warmup from 0 over this many optimizer steps.
      schedule: "constant" or "cosine" (cosine decay to `min_lr_ratio * learning_rate` at `total_steps`).
      total_steps: length of the cosine schedule, warmup included (required for "cosine").
      min_lr_ratio: floor of the cosine schedule relative to the peak.
      b1, b2, eps: Adam moments.
      weight_decay: decoupled weight decay, applied to matrices only (not to norms and biases).
      grad_clip_norm: clip the global gradient norm to this value; None = no clipping.
    """

    learning_rate: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "constant"
    total_steps: int | None = None
    min_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 1.0

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "cosine" and (self.total_steps is None or self.total_steps <= self.warmup_steps):
            raise ValueError(
                f"the cosine schedule needs total_steps > warmup_steps, got total_steps={self.total_steps}, "
                f"warmup_steps={self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0) or self.eps <= 0:
            raise ValueError(f"need 0 <= b1, b2 < 1 and eps > 0, got {self.b1}, {self.b2}, {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be None or > 0, got {self.grad_clip_norm}")


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """The learning rate as a function of the optimizer step (the host logs `schedule(state.step)`)."""
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.learning_rate)
    else:
        main = optax.cosine_decay_schedule(
            cfg.learning_rate, cfg.total_steps - cfg.warmup_steps, alpha=cfg.min_lr_ratio
        )
    if cfg.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clipping (if set) followed by AdamW on `make_schedule(cfg)`."""
    adamw = optax.adamw(
        make_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=lambda params: jax.tree.map(lambda x: jnp.ndim(x) >= 2, params),
    )
    if cfg.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)


@struct.dataclass
class TrainState:
    """One policy's training state: `step` (int32 scalar), `params` (nnx.State), `opt_state`."""

    step: jax.Array
    params: Any
    opt_state: Any


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh `TrainState`. The optimizer state is created inside `jax.jit`, so it inherits the (possibly
    sharded) layout of `params`; scalars land replicated on the same devices."""

    def init(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))

    shardings = [getattr(leaf, "sharding", None) for leaf in jax.tree.leaves(params)]
    mesh = getattr(shardings[0], "mesh", None) if shardings else None
    if mesh is None:
        return jax.jit(init)(params)
    from jax.sharding import NamedSharding, PartitionSpec

    abstract = jax.eval_shape(init, params)
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    # Moments mirror the parameter tree: give them the parameter shardings; everything else replicated.
    opt_sh = _mirror_param_shardings(abstract.opt_state, params, param_sh, replicated)
    out = TrainState(step=replicated, params=param_sh, opt_state=opt_sh)
    return jax.jit(init, out_shardings=out)(params)


def _mirror_param_shardings(opt_state: Any, params: Any, param_sh: Any, default: Any) -> Any:
    """Shardings for an optax state: subtrees with the structure of `params` get `param_sh`."""
    params_def = jax.tree.structure(params)

    def is_param_tree(node):
        try:
            return jax.tree.structure(node) == params_def
        except Exception:  # noqa: BLE001 - non-pytree nodes are simply not parameter trees
            return False

    return jax.tree.map(
        lambda node: param_sh if is_param_tree(node) else jax.tree.map(lambda _: default, node),
        opt_state,
        is_leaf=is_param_tree,
    )


def state_shardings(state: TrainState) -> TrainState:
    """The shardings of every leaf of a concrete `TrainState` (for jit in/out shardings)."""
    return jax.tree.map(lambda x: x.sharding, state)
