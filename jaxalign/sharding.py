"""Device mesh and logical-axis sharding rules.

The mesh has three axes: `data` (pure data parallelism, weights replicated), `fsdp` (data parallelism
with weights sharded along their `embed` dimension) and `tensor` (Megatron-style: heads, kv heads, MLP
width and vocabulary split). Model parameters name their dimensions with logical axes (see
`jaxalign.models.transformer`); `RULES[role]` maps each logical name to mesh axes:

- role "train": `embed` over `fsdp`; `heads`, `kv_heads`, `mlp`, `vocab` over `tensor`.
- role "sample": weights are not sharded over `fsdp` (a sampler wants whole layers per device for fast
  decoding); only the `tensor` split remains.

Fallback (deterministic): a dimension whose size is not divisible by the product of its mesh axes'
sizes, or whose mesh axis is already used by an earlier dimension of the same array, is replicated.
For example 3 kv heads over `tensor=2` keeps the kv-head dimension whole on every device.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_TENSOR_RULES = (
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
    ("head_dim", ()),
    ("layers", ()),
    ("norm", ()),
    ("batch", BATCH_AXES),
)

RULES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "train": (("embed", ("fsdp",)),) + _TENSOR_RULES,
    "sample": (("embed", ()),) + _TENSOR_RULES,
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None
              ) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh with Auto axis types; one size may be -1 ("the rest")."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sum(size == -1 for size in sizes) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if any(size == 0 or size < -1 for size in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got data={data} fsdp={fsdp} "
                         f"tensor={tensor}")
    known = math.prod(size for size in sizes if size != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices are not divisible by the fixed mesh axes "
                             f"(product {known})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                         f"{math.prod(sizes)} devices, have {len(devices)}")
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types)
    device_grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(device_grid, MESH_AXES, axis_types=axis_types)


def _rules_for(role: str) -> dict[str, tuple[str, ...]]:
    if role not in RULES:
        raise ValueError(f"unknown sharding role {role!r}; expected one of {sorted(RULES)}")
    return dict(RULES[role])


def logical_to_spec(names: Sequence[str | None], mesh: Mesh, role: str,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """PartitionSpec for dimensions with logical `names`, applying the replication fallback."""
    rules = _rules_for(role)
    if shape is not None and len(shape) != len(names):
        raise ValueError(f"logical axes {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"no sharding rule for logical axis {name!r} (role {role!r}); "
                             f"known: {sorted(rules)}")
        axes = tuple(axis for axis in rules[name] if mesh.shape.get(axis, 1) > 1)
        size = math.prod(mesh.shape[axis] for axis in axes)
        divisible = shape is None or shape[dim] % size == 0
        if not axes or used.intersection(axes) or not divisible:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_sharding(names: Sequence[str | None], mesh: Mesh, role: str,
                     shape: Sequence[int] | None = None) -> NamedSharding:
    """NamedSharding for dimensions with logical `names` (pass `shape` to enable the fallback)."""
    return NamedSharding(mesh, logical_to_spec(names, mesh, role, shape))


def _logical_axes_of(variable: nnx.Variable) -> tuple[str, ...]:
    axes = variable.get_metadata().get("logical_axes")
    if axes is None:
        raise ValueError(f"variable {type(variable).__name__} of shape {variable.get_value().shape} has no "
                         "'logical_axes' metadata")
    return tuple(axes)


def param_shardings(params_state: Any, mesh: Mesh, role: str) -> Any:
    """Shardings for an `nnx.State` (or any pytree with `nnx.Variable` leaves, abstract or concrete).

    Returns the same structure with each variable's value replaced by its `NamedSharding`, usable as
    jit `in_shardings`/`out_shardings` or with `jax.device_put`. Variables without logical axes
    (e.g. counters) are replicated.
    """
    _rules_for(role)

    def sharding_for(variable):
        if not isinstance(variable, nnx.Variable):
            return NamedSharding(mesh, PartitionSpec())
        if "logical_axes" not in variable.get_metadata():
            return variable.replace(NamedSharding(mesh, PartitionSpec()))
        shape = variable.get_value().shape
        return variable.replace(logical_sharding(_logical_axes_of(variable), mesh, role, shape))

    return jax.tree.map(sharding_for, params_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a host batch: leading axis over ("data", "fsdp"), the rest replicated."""
    if ndim < 1:
        raise ValueError(f"a batch array needs at least one dimension, got ndim={ndim}")
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def put_batch(array_np: Any, mesh: Mesh | None, batch_axis: int = 0) -> jax.Array:
    """A host array as a global array split over ("data", "fsdp") along `batch_axis` (the one way host
    batches reach the mesh: sampler prompts, training batches, benchmarks).

    Every process holds the same whole array (rollouts are gathered to all hosts), so each process just
    puts the rows of its own devices. Without a mesh: the array on the default device.
    """
    array_np = np.asarray(array_np)
    if mesh is None:
        return jnp.asarray(array_np)
    spec = [None] * array_np.ndim
    spec[batch_axis] = BATCH_AXES
    return jax.make_array_from_callback(array_np.shape, NamedSharding(mesh, PartitionSpec(*spec)),
                                        lambda index: array_np[index])


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def to_host(tree: Any) -> Any:
    """Every array of `tree` as a whole NumPy array on this host.

    On one process this is `jax.device_get`; with several processes (multi-host) each array is gathered
    from all hosts, so every host gets the full value (rollouts, metrics, exported weights).
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def create_sharded(cfg, mesh: Mesh, role: str = "train", seed: int = 0):
    """Builds a randomly initialised `Transformer` whose parameters are created already sharded.

    Initialisation is traced abstractly (`nnx.eval_shape`) to learn shapes and logical axes, then run
    inside one jit with `out_shardings`, so no device ever holds the whole model.
    """
    from jaxalign.models.transformer import Transformer

    abstract_model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract_model)
    shardings = param_shardings(abstract_state, mesh, role)

    def init_state():
        return nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)))

    state = jax.jit(init_state, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
