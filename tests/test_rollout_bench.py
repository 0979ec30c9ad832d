"""The rollout benchmark's tiny setting: runs in seconds on CPU and reports consistent numbers."""

import json

import jax
import pytest

from jaxalign.bench.rollout import default_bandwidth, main, run_rollout_bench
from jaxalign.models import get_preset


def test_tiny_bench_reports_consistent_numbers():
    lines = []
    rows = run_rollout_bench(preset="tiny", batches=(8,), prompt_len=32, new_tokens=16, dtype="float32",
                             cache_dtype="bfloat16", bandwidth_gbps=10.0, compare_hf=False,
                             print_fn=lines.append)
    assert len(rows) == 1 and json.loads(lines[0]) == rows[0]
    row = rows[0]
    cfg = get_preset("tiny")
    assert row["generated_tokens"] == 8 * 16 and row["decode_steps"] == 16
    assert row["param_bytes"] == cfg.num_params() * 4
    # K and V, every layer, every cache slot (32 prompt + 32 response bucket), bfloat16.
    assert row["kv_bytes_per_step"] == 2 * cfg.num_layers * 8 * 64 * cfg.num_kv_heads * cfg.head_dim * 2
    assert row["tokens_per_s"] == pytest.approx(row["generated_tokens"] / row["seconds"], rel=0.01)
    devices = len(jax.devices())
    floor_s = (row["param_bytes"] + row["kv_bytes_per_step"] / devices) / 10e9
    assert row["roofline_fraction"] == pytest.approx(floor_s / (row["ms_per_step"] / 1e3), rel=0.01)
    assert 0 < row["roofline_fraction"] < 1


def test_main_parses_arguments_and_rejects_bad_batches(capsys):
    with pytest.raises(ValueError, match="divisible"):
        main(["--preset", "tiny", "--batches", "3", "--prompt-len", "8", "--new-tokens", "2", "--no-hf"])
    assert default_bandwidth(jax.devices()[0]) > 0
