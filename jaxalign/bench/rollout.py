"""Rollout throughput benchmark: the jitted sampler on random weights, against a bandwidth roofline.

Decoding one token per sequence reads every weight and the whole KV cache once per step, so its floor is
`(param bytes + KV bytes read per step) / memory bandwidth`; the benchmark reports the achieved fraction
of that floor. KV bytes per step count all cache slots (prompt width + response bucket), because the
decode attention reads every slot and masks the unused ones.

Default bandwidths (bytes/s) by device kind, overridable with `bandwidth_gbps`: the vendors' peak HBM
figures for GPUs and TPUs, and a nominal 20 GB/s for a CPU host (only a rough scale there).

Each setting prints one JSON line. With torch + CUDA importable, transformers' `generate` runs on the
same shapes (same random-weight architecture, sampling, no EOS) and the speed ratio is reported.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import sharding as sharding_lib
from jaxalign.models.config import get_preset
from jaxalign.rollout.sampler import RESPONSE_BUCKET, Sampler, _prefill_jit, round_up
from jaxalign.rollout.sampling import SamplingParams

# Peak memory bandwidth in bytes/s, matched against a lower-cased device_kind (first match wins).
DEFAULT_BANDWIDTH = (
    ("h200", 4.8e12),
    ("h100", 3.35e12),
    ("a100", 2.0e12),
    ("l4", 0.3e12),
    ("v6", 1.64e12),
    ("v5p", 2.76e12),
    ("v5", 0.82e12),
    ("v4", 1.2e12),
    ("cpu", 20e9),
)


def default_bandwidth(device) -> float:
    """Peak memory bandwidth (bytes/s) of one device, from `DEFAULT_BANDWIDTH`."""
    kind = f"{device.platform} {device.device_kind}".lower()
    for name, bandwidth in DEFAULT_BANDWIDTH:
        if name in kind:
            return bandwidth
    raise ValueError(f"no default memory bandwidth for device {device.device_kind!r}; pass bandwidth_gbps")


def tree_bytes(tree) -> int:
    """Total bytes of a pytree of arrays (global, all shards together)."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of (possibly sharded or replicated) jax arrays."""
    return int(sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree)))


def _hf_generate_tokens_per_s(cfg, batch: int, prompt_len: int, new_tokens: int, dtype: str) -> float | None:
    """transformers' `generate` (sampling, KV cache) on the same shapes with random weights; None when
    torch with CUDA is unavailable."""
    # torch is never a jaxalign dependency: it is the optional baseline this benchmark compares against,
    # looked up at run time only when the user has it installed.
    try:
        torch = importlib.import_module("torch")
        import transformers
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    hf_config = transformers.AutoConfig.for_model(**cfg.to_hf())
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype]
    model = transformers.AutoModelForCausalLM.from_config(hf_config, torch_dtype=torch_dtype).cuda().eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device="cuda")
    kwargs = dict(do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens, top_k=0,
                  attention_mask=torch.ones_like(ids), pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    del model
    torch.cuda.empty_cache()
    return batch * new_tokens / seconds


def bench_one(sampler: Sampler, *, batch: int, prompt_len: int, new_tokens: int, bandwidth: float,
              seed: int = 0) -> dict:
    """Times one generate call (after a compiling warm-up) and derives the roofline numbers.

    `bandwidth` is one device's memory bandwidth in bytes/s.
    """
    cfg = sampler.cfg
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, include_eos=False)

    start = time.perf_counter()
    sampler.generate(prompts, sp, jax.random.key(seed))
    compile_s = time.perf_counter() - start

    # Prefill alone, to separate it from the decode loop.
    width = round_up(prompt_len, sampler.prompt_bucket)
    cache_len = width + round_up(new_tokens, RESPONSE_BUCKET)
    ids = sampler._put_batch(np.asarray(prompts, np.int32))
    mask = sampler._put_batch(np.ones((batch, prompt_len), np.int32))
    prefill_args = dict(n=1, cache_len=cache_len, cache_dtype=sampler.cache_dtype,
                        cache_sharding=sampler._cache_sharding_for(batch, cache_len))
    jax.block_until_ready(_prefill_jit(sampler.graphdef, sampler.params, ids, mask, **prefill_args))
    start = time.perf_counter()
    jax.block_until_ready(_prefill_jit(sampler.graphdef, sampler.params, ids, mask, **prefill_args))
    prefill_s = time.perf_counter() - start

    rollout = sampler.generate(prompts, sp, jax.random.key(seed + 1))
    total_s = sampler.last_stats["seconds"]
    steps = sampler.last_stats["decode_steps"]
    generated = rollout.num_generated_tokens
    step_s = max(total_s - prefill_s, 1e-9) / steps

    param_bytes = tree_bytes(sampler.params)
    kv_bytes = 2 * cfg.num_layers * sampler.last_stats["batch"] * cache_len * cfg.num_kv_heads * \
        cfg.head_dim * sampler.cache_dtype.itemsize
    # Every device reads its own copy/shard of the weights and its part of the batch's cache.
    num_devices = len(jax.tree.leaves(sampler.params)[0].sharding.device_set)
    floor_step_s = (per_device_bytes(sampler.params) + kv_bytes / num_devices) / bandwidth
    return dict(
        batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
        generated_tokens=generated, seconds=round(total_s, 4), compile_s=round(compile_s, 2),
        prefill_s=round(prefill_s, 4), decode_steps=steps,
        tokens_per_s=round(generated / total_s, 1),
        decode_tokens_per_s=round(batch / step_s, 1),
        ms_per_step=round(step_s * 1e3, 4),
        param_bytes=param_bytes, kv_bytes_per_step=kv_bytes,
        bandwidth_bytes_per_s_per_device=bandwidth,
        roofline_tokens_per_s=round(batch / floor_step_s, 1),
        roofline_fraction=round(floor_step_s / step_s, 4),
    )


def run_rollout_bench(preset: str = "qwen2.5-0.5b", batches: Sequence[int] = (64, 256), prompt_len: int = 128,
                      new_tokens: int = 256, dtype: str = "bfloat16", cache_dtype: str = "bfloat16",
                      bandwidth_gbps: float | None = None, compare_hf: bool = True, seed: int = 0,
                      print_fn: Callable[[str], None] | None = print) -> list[dict]:
    """Benchmarks the sampler on random `preset` weights; prints and returns one dict per batch size.

    The mesh is data-parallel over all local devices (batch must divide by the device count). Use
    `preset="tiny"` with small shapes for a seconds-long CPU run.
    """
    if prompt_len < 1 or new_tokens < 1 or not batches:
        raise ValueError("prompt_len and new_tokens must be >= 1 and batches non-empty")
    cfg = get_preset(preset, param_dtype=dtype, dtype=dtype)
    mesh = sharding_lib.make_mesh(data=-1)
    devices = mesh.devices.size
    for batch in batches:
        if batch % devices:
            raise ValueError(f"batch {batch} is not divisible by the {devices} devices of the mesh")
    model = sharding_lib.create_sharded(cfg, mesh, role="sample", seed=seed)
    sampler = Sampler(model, None, mesh=mesh, max_prompt_len=prompt_len, cache_dtype=jnp.dtype(cache_dtype))
    del model
    device = jax.devices()[0]
    bandwidth = bandwidth_gbps * 1e9 if bandwidth_gbps else default_bandwidth(device)

    results = []
    for batch in batches:
        row = dict(bench="rollout", preset=preset, dtype=dtype, cache_dtype=cache_dtype,
                   device=device.device_kind, num_devices=devices, backend=jax.default_backend())
        row.update(bench_one(sampler, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                             bandwidth=bandwidth, seed=seed))
        if compare_hf:
            hf = _hf_generate_tokens_per_s(cfg, batch, prompt_len, new_tokens, dtype)
            if hf is not None:
                row.update(hf_tokens_per_s=round(hf, 1), speedup_vs_hf=round(row["tokens_per_s"] / hf, 2))
        results.append(row)
        if print_fn is not None:
            print_fn(json.dumps(row))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """`jaxalign bench rollout [--preset P --batches 64,256 --prompt-len 128 --new-tokens 256 ...]`."""
    parser = argparse.ArgumentParser(prog="jaxalign bench rollout", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="qwen2.5-0.5b")
    parser.add_argument("--batches", default="64,256", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--cache-dtype", default="bfloat16")
    parser.add_argument("--bandwidth-gbps", type=float, default=None,
                        help="per-device memory bandwidth; default by device kind")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv) if argv is not None else None)
    run_rollout_bench(preset=args.preset, batches=tuple(int(b) for b in args.batches.split(",")),
                      prompt_len=args.prompt_len, new_tokens=args.new_tokens, dtype=args.dtype,
                      cache_dtype=args.cache_dtype, bandwidth_gbps=args.bandwidth_gbps,
                      compare_hf=not args.no_hf, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
