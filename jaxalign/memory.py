"""Per-device memory estimate of a run, printed at start; a layout that cannot fit is refused before loading.

A run holds, per agent and per device: the trained parameters, their gradients and AdamW moments, the
frozen reference policy (when a KL term needs it), the sampler's copy of the weights (in the compute dtype
`model.dtype`, norm scales as stored), a separate critic,
and, while it runs, either the generation phase (the KV cache) or the update phase (gradients and
activations). The two phases never overlap, and the agents generate and update one after the other, so

    total per device = sum over agents of the resident memory
                       + the largest phase of any agent: max(KV cache, gradients + activations)

Everything is computed from the configs and the model's shape (config.json / GGUF metadata / preset: no
weights are read). Parameters are counted exactly, per device, with the sharding rules of
`jaxalign.sharding` (role "train" for the train state and reference, "sample" for the sampler). The
activations and the KV cache are formulas (below), so the result is an estimate: XLA's own temporaries
and fragmentation come on top, and judge models a method loads (RLEV's model verifier, WaltzRL's safety
judge) are not included.

Notation: d hidden size, L layers, F MLP width, H heads, K kv heads, E head dim, V vocabulary, each of
H, K, F, V divided by `mesh.tensor` when it divides (as the sharding rules do); c bytes of the compute
dtype; per device B = samples per step / (mini_batches * micro_batches * data * fsdp) training rows of
T = max_prompt_len + max_new_tokens tokens.

* Activations kept for the backward pass, per token and layer:
  `c * (4d + 3(H + K)E + 3F) + H * T * (4 + c)` (layer input, the two norm outputs and the residual; q, k,
  v and the rotated q, k; the attention output; gate, up and their product; float32 attention scores and
  their probabilities over T keys). Without remat: `B*T*L*layer`; with remat (`model.remat`) each layer
  keeps only its input and one layer is recomputed at a time: `B*T*(L*d*c + layer)`. Both add the
  log-prob chunk's float32 logits and their gradient, `2 * B * min(chunk, T) * V * 4`.
* Gradients: two copies of the trained parameters (the micro-batch accumulator and one micro-batch's
  gradient, or the optimizer's updates).
* KV cache of a training rollout: `2 (k, v) * L * rows * slots * K * E * bytes(cache dtype)`, rows = the
  sampler's padded prompt count times samples per prompt over data*fsdp, slots = the prompt width (rounded
  to the sampler's prompt bucket) plus the response width (rounded to its response bucket).

A `jaxalign sft` run (`config.kind == "sft"`) trains on B = sft.batch_size / (sft.micro_batches * data *
fsdp) rows of T = sft.max_len tokens and generates nothing (no KV cache, no sampler).

With LoRA (an agent's `lora` section) only the adapters are trained: gradients and optimizer state are
the adapters', the frozen base is held once in its `base_dtype` (agents on the same base share it), and
the reference is the base with adapters off (no copy).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping, Sequence

from jaxalign.config import AgentSpec, ConfigError, ExperimentConfig, ModelSpec

GIB = 1024 ** 3
MIB = 1024 ** 2


@dataclasses.dataclass(frozen=True)
class AgentMemory:
    """One agent's memory per device, in bytes (see the module docstring for each term)."""

    name: str
    params: int  # the trained parameters (with LoRA: the adapters)
    frozen_base: int  # LoRA: the frozen base weights (0 when another agent already holds the same base)
    gradients: int
    optimizer: int
    reference: int
    sampler: int
    critic: int  # a separate value model: its parameters and optimizer state
    kv_cache: int
    activations_remat: int
    activations_full: int
    remat: bool
    lora: bool = False

    @property
    def activations(self) -> int:
        """The activations with the configured `model.remat`."""
        return self.activations_remat if self.remat else self.activations_full

    @property
    def resident(self) -> int:
        """What the agent holds for the whole run."""
        return self.params + self.frozen_base + self.optimizer + self.reference + self.sampler + self.critic

    @property
    def update_phase(self) -> int:
        return self.gradients + self.activations

    @property
    def largest_phase(self) -> int:
        return max(self.kv_cache, self.update_phase)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """The per-device estimate of a run: every agent, the mesh and the device's limit (None: unknown)."""

    agents: tuple[AgentMemory, ...]
    mesh: tuple[int, int, int]
    device_limit: int | None = None
    device_kind: str = ""

    @property
    def total(self) -> int:
        return sum(a.resident for a in self.agents) + max((a.largest_phase for a in self.agents), default=0)

    @property
    def fits(self) -> bool:
        return self.device_limit is None or self.total <= self.device_limit

    def table(self) -> str:
        """The estimate as a text table (one column per agent)."""
        return format_estimate(self)


# ----------------------------------------------------------------------------------------------------
# Model shapes and per-device sizes
# ----------------------------------------------------------------------------------------------------


def model_config(spec: ModelSpec):
    """The `ModelConfig` of a model spec from its metadata only (preset, config.json or GGUF header), with
    the spec's dtypes and remat."""
    from jaxalign.models import gguf, hf
    from jaxalign.models.config import ModelConfig, get_preset
    from jaxalign.models.registry import ALIASES, RANDOM_PREFIX, check_model_spec

    check_model_spec(spec.spec, what="model.spec")
    fields = dict(param_dtype=spec.param_dtype, dtype=spec.dtype, remat=spec.remat)
    if spec.spec.startswith(RANDOM_PREFIX):
        return get_preset(spec.spec[len(RANDOM_PREFIX):], **fields)
    if spec.spec in ALIASES or spec.spec.endswith(".gguf"):
        path = gguf.default_gguf_path() if spec.spec in ALIASES else spec.spec
        return gguf.open_gguf(path).config(**fields)
    return ModelConfig.from_hf(hf.read_hf_config(spec.spec), **fields)


def _abstract_state(build: Callable[[], Any]):
    """The abstract `nnx.State` (shapes, dtypes, logical axes) of a module built by `build`; nothing is
    allocated."""
    from flax import nnx

    return nnx.split(nnx.eval_shape(build))[1]


def _abstract_mesh(mesh: Sequence[int]):
    from jax.sharding import AbstractMesh, AxisType

    from jaxalign.sharding import MESH_AXES

    return AbstractMesh(tuple(mesh), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def per_device_bytes(state, mesh: Sequence[int], role: str, *, dtype=None, norms_as_stored: bool = False) -> int:
    """Bytes one device holds of an (abstract) parameter state sharded by `role`'s rules on a mesh of
    sizes (data, fsdp, tensor); `dtype` replaces the stored dtype (e.g. a frozen base in bfloat16), except
    for the norm scales with `norms_as_stored` (the sampler's compute-dtype copy keeps them)."""
    import jax
    from flax import nnx

    from jaxalign.rollout.sampler import is_norm_path
    from jaxalign.sharding import logical_to_spec

    abstract = _abstract_mesh(mesh)
    total = 0
    leaves = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    for path, variable in leaves:
        value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        cast = dtype is not None and not (norms_as_stored and is_norm_path(path))
        shape = tuple(value.shape)
        axes = variable.get_metadata().get("logical_axes") if isinstance(variable, nnx.Variable) else None
        local = list(shape)
        if axes is not None:
            for dim, entry in enumerate(logical_to_spec(axes, abstract, role, shape)):
                names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
                local[dim] //= math.prod(abstract.shape[name] for name in names)
        total += math.prod(local) * _itemsize(dtype if cast else value.dtype)
    return total


def _split(size: int, tensor: int) -> int:
    """A dimension over the `tensor` axis, whole when it does not divide (the sharding rules' fallback)."""
    return size // tensor if size % tensor == 0 else size


def _itemsize(dtype) -> int:
    import jax.numpy as jnp

    return jnp.dtype(dtype).itemsize


# ----------------------------------------------------------------------------------------------------
# Activations and KV cache (formulas of the module docstring)
# ----------------------------------------------------------------------------------------------------


def activation_bytes(cfg, *, rows: int, seq_len: int, chunk: int, tensor: int, remat: bool) -> int:
    """Activations one device keeps for a micro-batch of `rows` sequences of `seq_len` tokens."""
    c = _itemsize(cfg.dtype)
    d, e = cfg.hidden_size, cfg.head_dim
    h, k = _split(cfg.num_heads, tensor), _split(cfg.num_kv_heads, tensor)
    f, v = _split(cfg.intermediate_size, tensor), _split(cfg.vocab_size, tensor)
    layer = c * (4 * d + 3 * (h + k) * e + 3 * f) + h * seq_len * (4 + c)
    logits = 2 * rows * min(chunk, seq_len) * v * 4
    if remat:
        return rows * seq_len * (cfg.num_layers * d * c + layer) + logits
    return rows * seq_len * cfg.num_layers * layer + logits


def _sampler_defaults() -> Mapping[str, Any]:
    from jaxalign.rollout import Sampler

    return {name: p.default for name, p in inspect.signature(Sampler).parameters.items()}


def kv_cache_bytes(cfg, rollout, *, batch_parallel: int, tensor: int) -> int:
    """The KV cache one device holds while a training rollout generates."""
    from jaxalign.rollout.sampler import RESPONSE_BUCKET, bucket_batch, round_up

    defaults = _sampler_defaults()
    rows = bucket_batch(rollout.prompts_per_step, batch_parallel) * rollout.samples_per_prompt // batch_parallel
    slots = (round_up(rollout.max_prompt_len, defaults["prompt_bucket"])
             + round_up(rollout.max_new_tokens, RESPONSE_BUCKET))
    return (2 * cfg.num_layers * rows * slots * _split(cfg.num_kv_heads, tensor) * cfg.head_dim
            * _itemsize(defaults["cache_dtype"]))


# ----------------------------------------------------------------------------------------------------
# The estimate
# ----------------------------------------------------------------------------------------------------


def _lora_section(spec: AgentSpec):
    """The agent's LoRA settings (None: full fine-tuning)."""
    return spec.lora if spec.uses_lora else None


def agent_memory(spec: AgentSpec, cfg, mesh: Sequence[int], *, base_held: bool = False,
                 sft=None) -> AgentMemory:
    """One agent's per-device memory on a mesh of sizes (data, fsdp, tensor). `cfg` is its model's
    `ModelConfig` (dtypes and remat as configured); `base_held`: another agent already holds the same
    frozen LoRA base; `sft`: the `SFTSpec` of a `jaxalign sft` run (batches of `sft.batch_size`
    conversations of up to `sft.max_len` tokens, no generation, so no KV cache)."""
    from flax import nnx

    from jaxalign.models.transformer import Transformer

    data, fsdp, tensor = mesh
    policy = _abstract_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    lora = _lora_section(spec)
    if lora is None:
        trained_state = policy
        if spec.uses_critic and spec.critic is not None and spec.critic.mode == "shared":
            from jaxalign.models.value import ActorCritic

            trained_state = _abstract_state(lambda: ActorCritic(cfg, rngs=nnx.Rngs(0)))
        params = per_device_bytes(trained_state, mesh, "train")
        frozen = 0
        reference = per_device_bytes(policy, mesh, "train") if spec.algorithm.needs_reference else 0
        sampler = _sampler_copy_bytes(policy, mesh, cfg.dtype)
    else:
        adapters = _lora_adapter_state(cfg, lora)
        params = per_device_bytes(adapters, mesh, "train")
        base_dtype = lora.base_dtype or cfg.param_dtype
        frozen = 0 if base_held else per_device_bytes(policy, mesh, "train", dtype=base_dtype)
        reference = 0  # the base with the adapters off
        sampler = _lora_sampler_bytes(policy, adapters, mesh, cfg.dtype, lora.sampler)
    critic = 0
    if spec.uses_critic and spec.critic is not None and spec.critic.mode == "separate":
        from jaxalign.models.value import ValueModel

        value = per_device_bytes(_abstract_state(lambda: ValueModel(cfg, rngs=nnx.Rngs(0))), mesh, "train")
        critic = 3 * value  # parameters and two AdamW moments
    r, a = spec.rollout, spec.algorithm
    if sft is None:
        rows = r.samples_per_step // (a.mini_batches * a.micro_batches * data * fsdp)
        seq_len = r.max_prompt_len + r.max_new_tokens
        kv_cache = kv_cache_bytes(cfg, r, batch_parallel=data * fsdp, tensor=tensor)
    else:
        rows = max(1, sft.batch_size // (sft.micro_batches * data * fsdp))
        seq_len, kv_cache, sampler = sft.max_len, 0, 0  # no generation: no KV cache, no sampler
    chunk = a.loss_config(r.temperature).logprob_chunk_size
    return AgentMemory(
        name=spec.name, params=params, frozen_base=frozen, gradients=2 * params, optimizer=2 * params,
        reference=reference, sampler=sampler, critic=critic, kv_cache=kv_cache,
        activations_remat=activation_bytes(cfg, rows=rows, seq_len=seq_len, chunk=chunk, tensor=tensor, remat=True),
        activations_full=activation_bytes(cfg, rows=rows, seq_len=seq_len, chunk=chunk, tensor=tensor, remat=False),
        remat=cfg.remat, lora=lora is not None,
    )


def _lora_adapter_state(cfg, lora):
    """The abstract adapters of a LoRA agent (in `model.param_dtype`, as `jaxalign.models.lora` makes them)."""
    from flax import nnx

    from jaxalign.models.lora import LoraAdapters, LoraConfig

    settings = LoraConfig(rank=int(lora.rank), alpha=float(lora.alpha), targets=tuple(lora.targets),
                          dropout=float(lora.dropout))
    return _abstract_state(lambda: LoraAdapters(cfg, settings, rngs=nnx.Rngs(0), dtype=cfg.param_dtype))


def _sampler_copy_bytes(policy, mesh, compute_dtype) -> int:
    """The sampler's own copy of the weights (`Sampler(param_dtype="compute")`): every weight in the compute
    dtype except the norm scales, in the "sample" sharding."""
    return per_device_bytes(policy, mesh, "sample", dtype=compute_dtype, norms_as_stored=True)


def _lora_sampler_bytes(policy, adapters, mesh, compute_dtype, mode: str) -> int:
    """A LoRA agent's sampler: its own copy of the merged weights in the compute dtype ("merged"), or of the
    adapters only, applied in the forward pass on the shared base ("adapters")."""
    if mode == "merged":
        return _sampler_copy_bytes(policy, mesh, compute_dtype)
    return per_device_bytes(adapters, mesh, "sample")


def estimate(config: ExperimentConfig, *, num_devices: int | None = None, device_limit: int | None = None,
             device_kind: str = "") -> MemoryEstimate:
    """The per-device estimate of `config` (every agent) on `num_devices` devices (default: all)."""
    if num_devices is None:
        import jax

        num_devices = jax.device_count()
    mesh = config.mesh.resolved(num_devices)
    sft = config.sft if config.kind == "sft" else None
    shapes: dict[ModelSpec, Any] = {}  # one metadata read per model
    agents, bases = [], set()
    for spec in config.agents.values():
        if spec.model not in shapes:
            shapes[spec.model] = model_config(spec.model)
        lora = _lora_section(spec)
        # LoRA agents on the same model, base dtype and starting run share one base (`train.agents`).
        base = (spec.model.spec, lora.base_dtype or spec.model.param_dtype, spec.model.init_from) if lora else None
        agents.append(agent_memory(spec, shapes[spec.model], mesh, base_held=base in bases, sft=sft))
        if base is not None:
            bases.add(base)
    return MemoryEstimate(tuple(agents), tuple(mesh), device_limit, device_kind)


def device_memory_limit(device=None) -> int | None:
    """The memory XLA may use on `device` (default: the first local device), from
    `memory_stats()["bytes_limit"]`; None where unknown (a CPU)."""
    if device is None:
        import jax

        device = jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


# ----------------------------------------------------------------------------------------------------
# Printing and refusing
# ----------------------------------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.2f} MiB"


def format_estimate(est: MemoryEstimate) -> str:
    """A text table: one row per term, one column per agent, then the total per device."""
    data, fsdp, tensor = est.mesh
    limit = _size(est.device_limit) if est.device_limit is not None else "unknown"
    lines = [f"memory per device (estimate): mesh data={data} fsdp={fsdp} tensor={tensor}, "
             f"device {est.device_kind or '?'} with {limit}"]
    rows = [
        ("params (trained)", lambda a: a.params),
        ("frozen base (LoRA)", lambda a: a.frozen_base),
        ("gradients", lambda a: a.gradients),
        ("optimizer state", lambda a: a.optimizer),
        ("reference policy", lambda a: a.reference),
        ("sampler copy", lambda a: a.sampler),
        ("critic", lambda a: a.critic),
        ("KV cache (rollout)", lambda a: a.kv_cache),
        ("activations, remat on", lambda a: a.activations_remat),
        ("activations, remat off", lambda a: a.activations_full),
    ]
    optional = ("frozen base (LoRA)", "critic", "KV cache (rollout)")  # shown where some agent has one
    rows = [(label, get) for label, get in rows if label not in optional or any(get(a) for a in est.agents)]
    width = max(12, *(len(a.name) for a in est.agents))
    lines.append(f"  {'':24s}" + "".join(f"{a.name:>{width + 2}s}" for a in est.agents))
    for label, get in rows:
        lines.append(f"  {label:24s}" + "".join(f"{_size(get(a)):>{width + 2}s}" for a in est.agents))
    lines.append(f"  {'remat (model.remat)':24s}" + "".join(f"{'on' if a.remat else 'off':>{width + 2}s}"
                                                             for a in est.agents))
    resident = sum(a.resident for a in est.agents)
    phase = max(est.agents, key=lambda a: a.largest_phase)
    which = "KV cache" if phase.kv_cache >= phase.update_phase else "gradients + activations"
    lines.append(f"  total per device: {_size(est.total)} = resident {_size(resident)} (params, optimizer, "
                 f"reference, sampler{', critic' if any(a.critic for a in est.agents) else ''} of every agent) "
                 f"+ largest phase {_size(phase.largest_phase)} ({which} of {phase.name})")
    return "\n".join(lines)


def _advice(est: MemoryEstimate) -> str:
    """What would shrink the largest terms, as config fields to change."""
    resident = sum(a.resident for a in est.agents)
    phase = max(est.agents, key=lambda a: a.largest_phase)
    tips = []
    if resident >= phase.largest_phase:
        if not all(a.lora for a in est.agents):
            tips.append("train LoRA adapters instead of the whole model (--config.lora.rank=16)")
        tips.append("shard the weights over more devices (mesh.fsdp, mesh.tensor)")
        tips.append("store the parameters in bfloat16 (model.param_dtype=bfloat16)")
    if phase.update_phase >= phase.kv_cache:
        if not phase.remat:
            tips.append("recompute activations in the backward pass (model.remat=true)")
        tips.append("split the update into more micro-batches (algorithm.micro_batches)")
    else:
        tips.append("generate fewer samples at once (rollout.prompts_per_step, rollout.samples_per_prompt)")
    tips.append("shorten sequences (rollout.max_prompt_len, rollout.max_new_tokens)")
    return "; ".join(tips)


def check_memory(config: ExperimentConfig, *, device_limit: int | None = ..., skip: bool | None = None,
                 show: Callable[[str], None] | None = print) -> MemoryEstimate:
    """Prints the per-device estimate of `config` (process 0) and raises `ConfigError`, with the numbers and
    what to change, when the device's memory is known and the estimate exceeds it.

    `device_limit` defaults to `device_memory_limit()`; `skip` (default `train.skip_memory_check`) prints
    the estimate but never refuses.
    """
    import jax

    if device_limit is ...:
        device_limit = device_memory_limit()
    device = jax.local_devices()[0]
    est = estimate(config, device_limit=device_limit, device_kind=f"{device.platform}:{device.device_kind}")
    if show is not None and jax.process_index() == 0:
        show(est.table())
    skip = config.train.skip_memory_check if skip is None else skip
    if not est.fits:
        message = (f"the run needs about {_size(est.total)} per device but the device has "
                   f"{_size(est.device_limit)} ({est.device_kind}); per device: "
                   + ", ".join(f"{a.name}: params {_size(a.params + a.frozen_base)}, optimizer "
                               f"{_size(a.optimizer)}, reference {_size(a.reference)}, sampler {_size(a.sampler)}, "
                               f"KV cache {_size(a.kv_cache)}, gradients + activations {_size(a.update_phase)}"
                               for a in est.agents)
                   + f". To fit: {_advice(est)}.")
        if skip:
            import logging

            logging.getLogger(__name__).warning("%s (train.skip_memory_check=true: starting anyway)", message)
        else:
            raise ConfigError(message + " To start anyway: --config.train.skip_memory_check=true")
    return est
