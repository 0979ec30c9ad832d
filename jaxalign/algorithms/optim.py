"""The optimizer: AdamW with warmup, a constant or cosine schedule and gradient clipping (pure maths, no
state or mesh; `jaxalign.train.state` builds the train state around it)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

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
