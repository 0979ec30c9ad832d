"""HuggingFace safetensors checkpoints in and out, without torch.

Loading maps HF tensor names (`model.layers.N.self_attn.q_proj.weight`, ...) onto the stacked layout of
`Transformer`, converts to the requested parameter dtype on the host one parameter at a time and places
each straight into its target sharding (`jax.make_array_from_callback`), so no device ever holds more
than its shard. Loading is strict: a missing, unexpected, misshapen or non-float tensor is an error that
names the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxalign import sharding as sharding_lib
from jaxalign.models.config import ModelConfig
from jaxalign.models.transformer import Transformer

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class TensorSource(Protocol):
    """Named host tensors in HF layout (torch `nn.Linear` weights are [out, in])."""

    def names(self) -> Iterable[str]: ...

    def get(self, name: str) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class _TensorMapping:
    """How one of our parameters relates to HF tensors.

    `path` is the attribute path in `Transformer`; `hf_name` a template with `{layer}` for stacked
    parameters; `hf_shape` the HF tensor shape; `to_ours`/`to_hf` convert one (per-layer) tensor.
    """

    path: tuple[str, ...]
    hf_name: str
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def stacked(self) -> bool:
        return "{layer}" in self.hf_name


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def tensor_mappings(cfg: ModelConfig) -> list[_TensorMapping]:
    """The HF <-> stacked-layout mapping of every parameter of a model with configuration `cfg`."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    h, k, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def in_proj(heads):  # HF [heads*e, d] <-> ours [d, heads, e]
        return (lambda w: w.T.reshape(d, heads, e), lambda w: w.reshape(d, heads * e).T)

    def bias(heads):  # HF [heads*e] <-> ours [heads, e]
        return (lambda b: b.reshape(heads, e), lambda b: b.reshape(heads * e))

    transpose = (lambda w: w.T, lambda w: w.T)
    keep = (_identity, _identity)
    prefix = "model.layers.{layer}."
    mappings = [
        _TensorMapping(("embedding",), "model.embed_tokens.weight", (v, d), *keep),
        _TensorMapping(("final_norm",), "model.norm.weight", (d,), *keep),
        _TensorMapping(("layers", "attn_norm"), prefix + "input_layernorm.weight", (d,), *keep),
        _TensorMapping(("layers", "q_proj"), prefix + "self_attn.q_proj.weight", (h * e, d), *in_proj(h)),
        _TensorMapping(("layers", "k_proj"), prefix + "self_attn.k_proj.weight", (k * e, d), *in_proj(k)),
        _TensorMapping(("layers", "v_proj"), prefix + "self_attn.v_proj.weight", (k * e, d), *in_proj(k)),
        _TensorMapping(("layers", "o_proj"), prefix + "self_attn.o_proj.weight", (d, h * e),
                       lambda w: w.T.reshape(h, e, d), lambda w: w.reshape(h * e, d).T),
        _TensorMapping(("layers", "mlp_norm"), prefix + "post_attention_layernorm.weight", (d,), *keep),
        _TensorMapping(("layers", "gate_proj"), prefix + "mlp.gate_proj.weight", (f, d), *transpose),
        _TensorMapping(("layers", "up_proj"), prefix + "mlp.up_proj.weight", (f, d), *transpose),
        _TensorMapping(("layers", "down_proj"), prefix + "mlp.down_proj.weight", (d, f), *transpose),
    ]
    if cfg.qkv_bias:
        mappings += [
            _TensorMapping(("layers", "q_bias"), prefix + "self_attn.q_proj.bias", (h * e,), *bias(h)),
            _TensorMapping(("layers", "k_bias"), prefix + "self_attn.k_proj.bias", (k * e,), *bias(k)),
            _TensorMapping(("layers", "v_bias"), prefix + "self_attn.v_proj.bias", (k * e,), *bias(k)),
        ]
    if cfg.qk_norm:
        mappings += [
            _TensorMapping(("layers", "q_norm"), prefix + "self_attn.q_norm.weight", (e,), *keep),
            _TensorMapping(("layers", "k_norm"), prefix + "self_attn.k_norm.weight", (e,), *keep),
        ]
    if not cfg.tie_embeddings:
        mappings.append(_TensorMapping(("lm_head",), "lm_head.weight", (v, d), *transpose))
    return mappings


def _expected_hf_names(mapping: _TensorMapping, cfg: ModelConfig) -> list[str]:
    if mapping.stacked:
        return [mapping.hf_name.format(layer=i) for i in range(cfg.num_layers)]
    return [mapping.hf_name]


def _check_tensor(name: str, array: np.ndarray, expected_shape: tuple[int, ...]) -> None:
    if array.dtype.name not in _FLOAT_DTYPES:
        raise ValueError(f"tensor {name!r} has dtype {array.dtype.name}; expected a float dtype "
                         f"{_FLOAT_DTYPES} (quantised checkpoints are not supported)")
    if tuple(array.shape) != tuple(expected_shape):
        raise ValueError(f"tensor {name!r} has shape {tuple(array.shape)}; the config expects "
                         f"{tuple(expected_shape)}")


def build_from_source(cfg: ModelConfig, source: TensorSource, *, mesh: Mesh | None = None,
                      role: str = "train") -> Transformer:
    """Builds a `Transformer` whose parameters come from `source` (HF names and layout).

    Every expected tensor must be present and no other may be; `lm_head.weight` is accepted and ignored
    only when it equals the tied embedding's role (tied configs). Parameters are placed directly in the
    sharding that `jaxalign.sharding` assigns for `role` on `mesh` (first device when `mesh` is None).
    """
    mappings = tensor_mappings(cfg)
    available = set(source.names())
    expected = {name for m in mappings for name in _expected_hf_names(m, cfg)}
    missing = sorted(expected - available)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"checkpoint is missing tensor(s) {missing[:5]}{more}")
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    unexpected = sorted(name for name in available - expected - ignorable
                        if not name.endswith("rotary_emb.inv_freq"))
    if unexpected:
        more = f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise ValueError(f"checkpoint has unexpected tensor(s) {unexpected[:5]}{more} for arch "
                         f"{cfg.arch!r} (qkv_bias={cfg.qkv_bias}, qk_norm={cfg.qk_norm}, "
                         f"tie_embeddings={cfg.tie_embeddings})")

    abstract_model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract_model)
    shardings = None if mesh is None else sharding_lib.param_shardings(abstract_state, mesh, role)
    flat_abstract = dict(nnx.to_flat_state(abstract_state))
    flat_shardings = None if shardings is None else dict(nnx.to_flat_state(shardings))
    param_dtype = np.dtype(jnp.dtype(cfg.param_dtype))

    loaded: dict[tuple[str, ...], nnx.Variable] = {}
    for mapping in mappings:
        variable = flat_abstract[mapping.path]
        target_shape = variable.get_value().shape
        per_layer = []
        for name in _expected_hf_names(mapping, cfg):
            array = np.asarray(source.get(name))
            _check_tensor(name, array, mapping.hf_shape)
            per_layer.append(mapping.to_ours(array).astype(param_dtype))
        host = np.stack(per_layer) if mapping.stacked else per_layer[0]
        assert host.shape == target_shape, (mapping.path, host.shape, target_shape)
        if flat_shardings is None:
            device_array = jnp.asarray(host)
        else:
            target = flat_shardings[mapping.path].get_value()
            device_array = jax.make_array_from_callback(host.shape, target, lambda index, host=host: host[index])
        loaded[mapping.path] = variable.replace(device_array)
        del host, per_layer
    if set(loaded) != set(flat_abstract):
        raise RuntimeError(f"parameters without an HF mapping: {sorted(set(flat_abstract) - set(loaded))}")
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


class SafetensorsSource:
    """Tensors of a local HF directory: `model.safetensors` or a sharded `*.index.json` checkpoint."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        index_path = os.path.join(directory, "model.safetensors.index.json")
        single_path = os.path.join(directory, "model.safetensors")
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map: dict[str, str] = json.load(f)["weight_map"]
        elif os.path.exists(single_path):
            weight_map = None  # filled below from the single file
        else:
            raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory!r}"
                                    " (only safetensors checkpoints are supported)")
        self._handles: dict[str, Any] = {}
        if weight_map is None:
            handle = safe_open(single_path, framework="np")
            self._handles["model.safetensors"] = handle
            weight_map = {name: "model.safetensors" for name in handle.keys()}
        else:
            for file_name in sorted(set(weight_map.values())):
                path = os.path.join(directory, file_name)
                if not os.path.exists(path):
                    raise FileNotFoundError(f"checkpoint shard {file_name!r} listed in the index is missing")
                self._handles[file_name] = safe_open(path, framework="np")
        self._weight_map = weight_map

    def names(self) -> Iterable[str]:
        return self._weight_map.keys()

    def get(self, name: str) -> np.ndarray:
        return self._handles[self._weight_map[name]].get_tensor(name)


def read_hf_config(directory: str) -> dict[str, Any]:
    """The parsed config.json of a local HF directory (clear error when absent)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory!r} is not a HF model directory: config.json not found")
    with open(path) as f:
        return json.load(f)


def load_hf(directory: str, *, mesh: Mesh | None = None, role: str = "train", param_dtype=None,
            dtype=None, remat: bool | None = None) -> Transformer:
    """Loads a local HF checkpoint (config.json + safetensors) into a sharded `Transformer`.

    `param_dtype` defaults to float32, `dtype` (compute) to `param_dtype`.
    """
    overrides: dict[str, Any] = {"param_dtype": param_dtype or "float32"}
    overrides["dtype"] = dtype or overrides["param_dtype"]
    if remat is not None:
        overrides["remat"] = remat
    cfg = ModelConfig.from_hf(read_hf_config(directory), **overrides)
    return build_from_source(cfg, SafetensorsSource(directory), mesh=mesh, role=role)


def hf_state_dict(model: Transformer) -> dict[str, np.ndarray]:
    """All parameters of `model` as host NumPy arrays with HF names and layout (parameter dtype)."""
    cfg = model.cfg
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors: dict[str, np.ndarray] = {}
    for mapping in tensor_mappings(cfg):
        host = np.asarray(sharding_lib.to_host(flat[mapping.path].get_value()))
        if mapping.stacked:
            for layer in range(cfg.num_layers):
                tensors[mapping.hf_name.format(layer=layer)] = np.ascontiguousarray(
                    mapping.to_hf(host[layer]))
        else:
            tensors[mapping.hf_name] = np.ascontiguousarray(mapping.to_hf(host))
    return tensors


def export_hf(model: Transformer, tokenizer, out_dir: str) -> None:
    """Writes config.json + model.safetensors (+ tokenizer files when `tokenizer` is given) that
    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads. LoRA adapters are folded into the
    weights (`W + scale A B`)."""
    from safetensors.numpy import save_file

    from jaxalign.models.lora import merged_model

    model = merged_model(model)
    os.makedirs(out_dir, exist_ok=True)
    config = model.cfg.to_hf()
    if tokenizer is not None:
        eos_ids = list(tokenizer.eos_token_ids)
        config["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
        config["pad_token_id"] = tokenizer.pad_id
        if tokenizer.bos_id is not None:
            config["bos_token_id"] = tokenizer.bos_id
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(hf_state_dict(model), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(out_dir)
    _readable_like_new_files(out_dir)


# HF module of each LoRA target inside `model.layers.N` (PEFT names its tensors after these modules).
_LORA_MODULES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                 "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                 "down_proj": "mlp.down_proj"}


def peft_state_dict(model: Transformer) -> dict[str, np.ndarray]:
    """The LoRA adapters of `model` with PEFT's names and layout: `lora_A.weight` [r, in] and `lora_B.weight`
    [out, r] of `base_model.model.model.layers.N.<module>` (in and out flattened as in the HF weights)."""
    from jaxalign.models.lora import adapters_of

    adapters = adapters_of(model)
    if adapters is None:
        raise ValueError("the model has no LoRA adapters to export")
    tensors: dict[str, np.ndarray] = {}
    for target, (a, b) in adapters.stacked_weights().items():
        a, b = np.asarray(sharding_lib.to_host(a)), np.asarray(sharding_lib.to_host(b))
        rank = a.shape[-1]
        for layer in range(model.cfg.num_layers):
            prefix = f"base_model.model.model.layers.{layer}.{_LORA_MODULES[target]}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[layer].reshape(-1, rank).T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[layer].reshape(rank, -1).T)
    return tensors


def export_peft(model: Transformer, out_dir: str, *, base_model: str | None = None) -> None:
    """Writes a PEFT LoRA adapter directory (`adapter_config.json`, `adapter_model.safetensors`) of a model
    with adapters: `peft.PeftModel.from_pretrained(<the transformers base model>, out_dir)` gives the same
    logits as `model`. `base_model` is recorded as `base_model_name_or_path`."""
    from safetensors.numpy import save_file

    from jaxalign.models.lora import lora_config_of

    lora = lora_config_of(model)
    if lora is None:
        raise ValueError("the model has no LoRA adapters to export")
    alpha = int(lora.alpha) if float(lora.alpha).is_integer() else float(lora.alpha)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": lora.rank, "lora_alpha": alpha, "lora_dropout": lora.dropout,
        "target_modules": list(lora.targets), "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "modules_to_save": None, "use_rslora": False, "use_dora": False,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
        "revision": None,
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(peft_state_dict(model), os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    _readable_like_new_files(out_dir)


def _readable_like_new_files(directory: str) -> None:
    """Gives every file in `directory` the permissions of a newly created file (0666 less the umask): some
    writers (safetensors) create theirs 0600, which other users of a shared model directory cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.chmod(path, 0o666 & ~umask)
