"""Train state (the optimizer itself is `jaxalign.algorithms.optim`).

A policy is trained as a pure pytree: `TrainState(step, params, opt_state)`, where `params` is the
`nnx.State` of `graphdef, params = nnx.split(model)`. Parameters are stored in the model's `param_dtype`
(float32 master weights) and the forward pass runs in the model's compute `dtype` (bfloat16 on
accelerators), so no separate mixed-precision wrapper is needed. The frozen reference policy is just
another params pytree, passed where needed; several policies (e.g. WaltzRL's two agents) are several
`TrainState`s sharing nothing global.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct




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
