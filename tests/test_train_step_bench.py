"""The train-step benchmark runs end to end at the tiny setting and reports consistent numbers."""

import math

from jaxalign.bench.train import TINY, run_train_bench
from jaxalign.models.config import get_preset
from jaxalign.train.step import train_flops_per_token


def test_tiny_bench_reports_consistent_throughput():
    result = run_train_bench(**{**TINY, "steps": 2}, mesh_shape=(2, 2, 2), peak_tflops=1.0)
    assert result["devices"] == 8 and result["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    tokens = TINY["batch"] * TINY["seq_len"]
    assert math.isclose(result["tokens_per_s"], tokens / result["step_s"], rel_tol=1e-2)
    assert result["flops_per_token"] == train_flops_per_token(get_preset("tiny"), TINY["seq_len"])
    want_mfu = result["flops_per_token"] * result["tokens_per_s"] / (1e12 * 8)
    assert math.isclose(result["mfu"], want_mfu, rel_tol=1e-2, abs_tol=1e-4)
    assert math.isfinite(result["final_loss"])
