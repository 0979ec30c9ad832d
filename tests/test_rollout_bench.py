"""The rollout benchmark's tiny setting: runs in seconds on CPU; its byte accounting matches hand numbers
and its timings fit the wall clock measured around it."""

import json
import time

import jax
import pytest

from jaxalign.bench.rollout import default_bandwidth, main, run_rollout_bench

# The "tiny" preset by hand: hidden 64, MLP 128, 4 heads and 2 KV heads of 16 dims, 2 layers, vocabulary 256,
# tied embeddings. Per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 12288, MLP 3*64*128 = 24576, two norms
# 128 -> 36992; two layers 73984 + embedding 256*64 = 16384 + final norm 64 = 90432 parameters.
TINY_PARAM_BYTES = 90432 * 4  # float32
# K and V x 2 layers x batch 8 x 64 cache slots (prompt bucket 32 + response bucket 32) x 2 KV heads x 16 dims
# x 2 bytes (bfloat16).
TINY_KV_BYTES = 2 * 2 * 8 * 64 * 2 * 16 * 2


def test_tiny_bench_matches_hand_numbers_and_the_wall_clock():
    assert (TINY_PARAM_BYTES, TINY_KV_BYTES) == (361728, 131072)
    lines = []
    start = time.perf_counter()
    rows = run_rollout_bench(preset="tiny", batches=(8,), prompt_len=32, new_tokens=16, dtype="float32",
                             cache_dtype="bfloat16", bandwidth_gbps=10.0, compare_hf=False,
                             print_fn=lines.append)
    wall_s = time.perf_counter() - start
    assert len(rows) == 1 and json.loads(lines[0]) == rows[0]
    row = rows[0]
    assert row["generated_tokens"] == 8 * 16 and row["decode_steps"] == 16
    assert row["param_bytes"] == TINY_PARAM_BYTES and row["kv_bytes_per_step"] == TINY_KV_BYTES
    # The roofline step: every device reads the whole (replicated) weights and 1/8 of the cache at 10 GB/s.
    floor_s = (361728 + 131072 / len(jax.devices())) / 10e9
    assert len(jax.devices()) == 8 and floor_s == pytest.approx(3.78112e-5)
    assert row["roofline_tokens_per_s"] == pytest.approx(8 / 3.78112e-5, rel=1e-5)  # 211577.5 tokens/s
    assert row["roofline_fraction"] == pytest.approx(floor_s / (row["ms_per_step"] / 1e3), rel=0.01, abs=1e-4)
    # Timings: the timed call, its prefill and its decode steps all fit inside the wall clock of the benchmark.
    assert 0 < row["prefill_s"] < row["seconds"] and row["ms_per_step"] * 16 / 1e3 <= row["seconds"] + 1e-3
    assert row["seconds"] + row["compile_s"] <= wall_s
    assert row["tokens_per_s"] >= 8 * 16 / wall_s
    assert 0 < row["roofline_fraction"] < 1


def test_main_parses_arguments_and_rejects_bad_batches(capsys):
    with pytest.raises(ValueError, match="divisible"):
        main(["--preset", "tiny", "--batches", "3", "--prompt-len", "8", "--new-tokens", "2", "--no-hf"])
    assert default_bandwidth(jax.devices()[0]) > 0
