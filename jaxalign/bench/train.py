"""Train-step benchmark: forward + backward + optimizer update of the policy loss, tokens/s and MFU.

Runs the real `make_train_step` (chunked log-probs, PPO-clip objective, micro-batch scan, AdamW, donated
state) on random weights and a random batch, and prints one JSON line. MFU is
`train_flops_per_token(cfg, seq_len) * tokens/s / (peak FLOP/s per device * devices)`.

Peak FLOP/s per device: `jaxalign.train.metrics.PEAK_FLOPS` (dense bfloat16, vendor figures), matched against the device kind and
overridable with `peak_tflops`.
A CPU has no default, so MFU is reported as null there unless a peak is given.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from jaxalign import sharding as sharding_lib
from jaxalign.train.batching import split_micro_batches
from jaxalign.algorithms.losses import LossConfig, loss_weights
from jaxalign.models.config import get_preset
from jaxalign.algorithms.optim import OptimConfig, make_optimizer
from jaxalign.train.state import init_train_state
from jaxalign.train.metrics import peak_flops_per_device
from jaxalign.train.step import make_train_step, train_flops_per_token

TINY = dict(preset="tiny", batch=8, seq_len=64, dtype="float32", steps=3, micro_batches=2)


def _random_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab: int, prompt_len: int):
    tokens = rng.integers(0, vocab, size=(batch, seq_len)).astype(np.int32)
    valid = np.ones((batch, seq_len), bool)
    loss_mask = np.zeros((batch, seq_len), np.float32)
    loss_mask[:, prompt_len:] = 1.0
    return {
        "tokens": tokens,
        "valid": valid,
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
        "loss_mask": loss_mask,
        "loss_weights": loss_weights(loss_mask, "token_mean"),
        "advantages": rng.normal(size=(batch, seq_len)).astype(np.float32) * loss_mask,
        "old_logp": np.full((batch, seq_len), -np.log(vocab), np.float32) * loss_mask,
    }


def run_train_bench(
    preset: str = "qwen2.5-0.5b",
    batch: int = 16,
    seq_len: int = 1024,
    dtype: str = "bfloat16",
    steps: int = 10,
    *,
    micro_batches: int = 1,
    remat: bool = True,
    mesh_shape: tuple[int, int, int] = (1, -1, 1),
    logprob_chunk_size: int = 256,
    peak_tflops: float | None = None,
    seed: int = 0,
) -> dict:
    """Times `steps` train steps after one compile step; returns (and does not print) the result dict.

    `batch` rows of `seq_len` tokens per step (half prompt, half response: the loss covers the response
    half, but every token goes through forward and backward), split into `micro_batches`. Parameters are
    float32 masters, compute runs in `dtype`. `mesh_shape` is (data, fsdp, tensor), -1 = the rest.
    """
    if steps < 1 or batch < 1 or seq_len < 2:
        raise ValueError(f"need steps >= 1, batch >= 1, seq_len >= 2; got {steps}, {batch}, {seq_len}")
    cfg = get_preset(preset).replace(dtype=dtype, param_dtype="float32", remat=remat)
    mesh = sharding_lib.make_mesh(*mesh_shape)
    model = sharding_lib.create_sharded(cfg, mesh, "train", seed=seed)
    graphdef, params = nnx.split(model)
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6, weight_decay=0.01))
    state = init_train_state(params, optimizer)
    loss_cfg = LossConfig(aggregation="token_mean", logprob_chunk_size=logprob_chunk_size)
    train_step = make_train_step(graphdef, optimizer, loss_cfg, mesh=mesh)
    host_batch = _random_batch(np.random.default_rng(seed), batch, seq_len, cfg.vocab_size, seq_len // 2)
    micro = split_micro_batches(host_batch, micro_batches)
    device_batch = {key: sharding_lib.put_batch(value, mesh, batch_axis=1) for key, value in micro.items()}

    start = time.perf_counter()
    state, metrics = train_step(state, device_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = train_step(state, device_batch)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start

    devices = mesh.devices.size
    tokens_per_s = steps * batch * seq_len / elapsed
    flops_per_token = train_flops_per_token(cfg, seq_len)
    peak = peak_tflops * 1e12 if peak_tflops else peak_flops_per_device(jax.devices()[0].device_kind)
    mfu = None if peak is None else flops_per_token * tokens_per_s / (peak * devices)
    return {
        "bench": "train",
        "preset": preset,
        "params": cfg.num_params(),
        "batch": batch,
        "seq_len": seq_len,
        "micro_batches": micro_batches,
        "dtype": dtype,
        "remat": remat,
        "mesh": dict(mesh.shape),
        "device": jax.devices()[0].device_kind,
        "devices": devices,
        "compile_and_first_step_s": round(compile_s, 3),
        "step_s": round(elapsed / steps, 5),
        "tokens_per_s": round(tokens_per_s, 1),
        "tokens_per_s_per_device": round(tokens_per_s / devices, 1),
        "flops_per_token": flops_per_token,
        "peak_flops_per_device": peak,
        "mfu": None if mfu is None else round(mfu, 4),
        "final_loss": float(metrics["loss"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`jaxalign bench train [--tiny] [--preset ...] ...`: prints one JSON line."""
    parser = argparse.ArgumentParser(prog="jaxalign bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long CPU-sized run (tiny preset)")
    parser.add_argument("--preset", default="qwen2.5-0.5b")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1 = the rest)")
    parser.add_argument("--chunk-size", type=int, default=256, help="log-prob time chunk")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak per device")
    args = parser.parse_args(argv)
    kwargs = dict(
        preset=args.preset, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype, steps=args.steps,
        micro_batches=args.micro_batches,
    )
    if args.tiny:
        kwargs.update(TINY)
    mesh_shape = tuple(int(x) for x in args.mesh.split(","))
    if len(mesh_shape) != 3:
        raise SystemExit(f"--mesh needs three sizes data,fsdp,tensor; got {args.mesh!r}")
    result = run_train_bench(
        **kwargs, remat=not args.no_remat, mesh_shape=mesh_shape, logprob_chunk_size=args.chunk_size,
        peak_tflops=args.peak_tflops,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
