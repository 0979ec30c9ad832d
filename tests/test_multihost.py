"""Multi-host training, for real: two `jaxalign train` processes with 4 CPU devices each, joined by
`jax.distributed` (coordinator on localhost, gloo collectives), one 8-device mesh across both. The run,
a preemption and its resume included, must reproduce a single process with 8 devices metric for metric:
rollouts are gathered to every host, batches built from the whole host batch, checkpoints written by
both processes and restored by both."""

import json
import os
import socket
import subprocess
import sys

import pytest

from jaxalign.train.metrics import read_metrics

TIMEOUT_S = 420
STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(cache_dir, **extra):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # The resumed run loads the first run's compiled programs instead of compiling them again.
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env.update(extra)
    return env


def _command(workdir, steps):
    return [sys.executable, "-m", "jaxalign.cli", "train", "--config=configs/tiny_test.py", f"--workdir={workdir}",
            f"--config.train.steps={steps}", "--config.train.eval_every=3", "--config.checkpoint.every=2",
            "--config.logging.progress=false", "--log-level=WARNING"]


def _run_two_processes(workdir, steps, cache_dir):
    port = _free_port()
    procs = []
    for process_id in range(2):
        env = _env(cache_dir, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(process_id))
        procs.append(subprocess.Popen(_command(workdir, steps), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
    return outputs


def _comparable(records):
    out = []
    for r in records:
        out.append({k: v for k, v in r.items()
                    if isinstance(v, (int, float)) and not k.startswith(("time/", "perf/"))})
    return out


def test_two_processes_match_one_process_with_a_resume(tmp_path):
    single = tmp_path / "single"
    result = subprocess.run(_command(single, STEPS), env=_env(tmp_path / "cache", XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]

    multi = tmp_path / "multi"
    _run_two_processes(multi, STEPS // 2, tmp_path / "cache")  # a run that ends half way (as if preempted after a save) ...
    assert str(STEPS // 2) in os.listdir(multi / "checkpoints")
    _run_two_processes(multi, STEPS, tmp_path / "cache")  # ... and its resume, on both processes

    expected, got = _comparable(read_metrics(single)), _comparable(read_metrics(multi))
    assert [r["step"] for r in got] == [r["step"] for r in expected] and len(got) >= STEPS
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for key in want:
            assert have[key] == pytest.approx(want[key], abs=1e-4), (want["step"], key)
    # The second run resumed (no step trained twice) and only process 0 wrote: one record per step.
    raw = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in raw if r["kind"] == "train"] == list(range(1, STEPS + 1))
