"""The train-step benchmark runs end to end at the tiny setting; its FLOP count matches a hand count and its
throughput fits the wall clock measured around it."""

import math
import time

from jaxalign.bench.train import TINY, run_train_bench

# The "tiny" preset (tied embeddings, so every parameter takes part in a matmul): 90432 parameters (see
# tests/test_rollout_bench.py). FLOPs per trained token at seq_len 64: 6 N = 542592 plus the attention term
# 6 * layers 2 * heads 4 * head dim 16 * 64 = 49152.
TINY_FLOPS_PER_TOKEN = 6 * 90432 + 6 * 2 * 4 * 16 * 64


def test_tiny_bench_matches_hand_numbers_and_the_wall_clock():
    assert TINY["batch"] * TINY["seq_len"] == 512 and TINY_FLOPS_PER_TOKEN == 591744
    start = time.perf_counter()
    result = run_train_bench(**{**TINY, "steps": 2}, mesh_shape=(2, 2, 2), peak_tflops=1.0)
    wall_s = time.perf_counter() - start
    assert result["devices"] == 8 and result["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert result["params"] == 90432 and result["flops_per_token"] == TINY_FLOPS_PER_TOKEN
    # 512 tokens per step; the two timed steps and the compiling first one fit inside the call.
    assert 2 * result["step_s"] + result["compile_and_first_step_s"] <= wall_s
    assert result["tokens_per_s"] >= 2 * 512 / wall_s
    assert math.isclose(result["tokens_per_s"] * result["step_s"], 512, rel_tol=1e-2)
    # MFU at a 1 TFLOP/s peak per device over 8 devices.
    assert math.isclose(result["mfu"], 591744 * result["tokens_per_s"] / 8e12, rel_tol=1e-2, abs_tol=1e-4)
    assert math.isfinite(result["final_loss"])
