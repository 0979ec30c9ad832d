"""A preempted run (SIGTERM) finishes its step, saves a checkpoint at that step, exits with the documented
"stopped, resumable" code (75, distinct from a failure), and the next run in the same workdir resumes from
it. Runs the real `jaxalign train` command in a child process."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxalign.commands import EXIT_STOPPED
from jaxalign.train.checkpoint import Checkpointer

STARTUP_TIMEOUT_S = 240


def _env(cache_dir):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    # The second run loads the first run's compiled programs instead of compiling them again.
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _command(workdir, steps):
    return [sys.executable, "-m", "jaxalign.cli", "train", "--config=configs/tiny_test.py", f"--workdir={workdir}",
            f"--config.train.steps={steps}", "--config.train.eval_every=0", "--config.checkpoint.every=0",
            "--config.logging.progress=false"]


def _train_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row["step"] for row in rows if row["kind"] == "train"]


def test_sigterm_saves_at_the_current_step_and_the_next_run_resumes(tmp_path):
    workdir = tmp_path / "run"
    env = _env(tmp_path / "jax_cache")
    # Far more steps than the run will get to: it only ends through the signal.
    proc = subprocess.Popen(_command(workdir, 10_000), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _train_steps(workdir):
            if proc.poll() is not None:
                pytest.fail(f"training exited early with {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no training step completed in time")
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert EXIT_STOPPED == 75
    assert proc.returncode == EXIT_STOPPED, stderr[-3000:]
    assert "Traceback" not in stderr
    steps = _train_steps(workdir)
    stopped_at = steps[-1]
    assert steps == list(range(1, stopped_at + 1)) and stopped_at < 10_000
    assert f"stopping at step {stopped_at}" in stderr
    ckpt = Checkpointer(workdir)
    assert ckpt.all_steps() == [stopped_at]  # checkpoint.every=0: this save came from the signal
    ckpt.close()
    assert "metric" not in stdout  # no final eval table: the run did not finish

    # The re-run resumes from the saved step and trains two more.
    total = stopped_at + 2
    done = subprocess.run(_command(workdir, total), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in done.stderr
    assert _train_steps(workdir) == list(range(1, total + 1))
    ckpt = Checkpointer(workdir)
    assert ckpt.latest_step() == total
    ckpt.close()
