"""A pool of child processes that runs host-side reward feature functions with a per-sample timeout.

Feature functions are picklable top-level functions `fn(text, example) -> dict[str, float]`. Rule-based
verifiers can hang (sympy on a pathological expression) or crash, and math-verify's own timeout is based on
signals, which only work on a process's main thread. So every call runs on the main thread of a child
process; the parent enforces the timeout by killing and replacing the child.

Process start. The training process has jax (and its threads) loaded, so children are never forked from
it. Each worker is a fresh interpreter started as `python -m jaxalign.rewards._worker`, the same
fork-free start as multiprocessing's "spawn" context, and talks to the parent over a `multiprocessing`
connection. Unlike "spawn", the parent's `__main__` script is *not* re-imported in the child (for the
`jaxalign` command that script imports jax), so a worker starts in roughly the time of a bare interpreter
(measured: about 0.05 s) plus whatever modules are listed in `preload` (math-verify with sympy adds
about 0.3 s, paid once per worker, not per sample). Workers are reused across `map` calls; only a
worker that hung or crashed is replaced. Children run with `JAX_PLATFORMS=cpu` so that a feature
function that happens to import jax cannot claim the accelerator.

A failure of any kind (timeout, crash, exception, a value that is not a dict of finite floats) becomes a
`RewardResult(ok=False, ...)` and is counted in `pool.stats`; `map` itself never raises for a sample.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import numbers
import os
import pickle
import subprocess
import sys
import time
from multiprocessing import connection as mp_connection
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

FAILURE_KINDS = ("timeout", "crash", "exception", "invalid")


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """Outcome of one feature-function call. `value` is empty when `ok` is False."""

    ok: bool
    value: dict[str, float]
    error: str | None = None
    failure: str | None = None  # one of FAILURE_KINDS when ok is False
    seconds: float = 0.0


def validate_features(value: Any) -> dict[str, float]:
    """Checks that a feature function returned a dict of finite real numbers; returns it as floats."""
    if not isinstance(value, Mapping):
        raise ValueError(f"feature function returned {type(value).__name__}, expected dict[str, float]")
    features: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(name, str):
            raise ValueError(f"feature name {name!r} is not a string")
        if isinstance(number, (bool, np.bool_)) or not isinstance(number, numbers.Real):
            raise ValueError(f"feature {name!r} is {type(number).__name__}, expected a real number")
        number = float(number)
        if not math.isfinite(number):
            raise ValueError(f"feature {name!r} is {number} (not finite)")
        features[name] = number
    return features


def collect_features(results: Sequence[RewardResult]) -> dict[str, np.ndarray]:
    """Stacks results into float arrays [n] per feature name, NaN where a sample failed or lacks it."""
    names = sorted({name for result in results if result.ok for name in result.value})
    features = {name: np.full(len(results), np.nan, dtype=np.float64) for name in names}
    for i, result in enumerate(results):
        for name, number in result.value.items():
            features[name][i] = number
    return features


class _Worker:
    """One child process and the parent's end of its connection."""

    def __init__(self, preload: Sequence[str], startup_timeout_s: float):
        parent_end, child_end = mp_connection.Pipe(duplex=True)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["JAX_PLATFORMS"] = "cpu"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jaxalign.rewards._worker", str(child_end.fileno())],
            pass_fds=(child_end.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child_end.close()
        self.conn = parent_end
        try:
            self.conn.send(("init", list(sys.path), list(preload)))
            if not self.conn.poll(startup_timeout_s):
                raise RuntimeError(f"reward worker did not start within {startup_timeout_s} s")
            status, detail = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise RuntimeError(f"reward worker died during start-up: {exc!r}") from None
        except RuntimeError:
            self.kill()
            raise
        if status != "ready":
            self.kill()
            raise RuntimeError(f"reward worker failed to start: {detail}")
        self.startup_seconds = float(detail)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.conn.close()

    def stop(self) -> None:
        """Asks the child to exit; kills it if it does not within a second."""
        try:
            self.conn.send(None)
            self.process.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class RewardPool:
    """Runs `fn(text, example)` over many samples in child processes, in order, with a timeout each.

    Args:
      num_workers: child processes; 0 runs everything in this process (for debugging; no timeout, but
        exceptions and invalid values are still failures).
      timeout_s: per-sample wall-clock limit, measured from when the sample is handed to a worker.
      preload: modules each worker imports at start-up, so their import time is not charged to the first
        sample's timeout (e.g. `("jaxalign.rewards.verifiers", "math_verify")`).
      startup_timeout_s: how long a worker may take to start (including `preload`).

    Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        num_workers: int,
        timeout_s: float,
        *,
        preload: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
    ):
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.preload = tuple(preload)
        self.startup_timeout_s = float(startup_timeout_s)
        self._workers: list[_Worker] = []
        self._closed = False
        self.stats: dict[str, int] = collections.Counter()
        self.startup_seconds: list[float] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "RewardPool":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Starts the workers now (otherwise the first `map` does)."""
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        while len(self._workers) < self.num_workers:
            self._workers.append(self._new_worker())

    def close(self) -> None:
        """Stops all workers. Idempotent."""
        for worker in self._workers:
            worker.stop()
        self._workers = []
        self._closed = True

    def _new_worker(self) -> _Worker:
        worker = _Worker(self.preload, self.startup_timeout_s)
        self.startup_seconds.append(worker.startup_seconds)
        return worker

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = self._new_worker()
        self.stats["restarts"] += 1

    # -- work ------------------------------------------------------------------------------------------
    def _record(self, result: RewardResult) -> RewardResult:
        self.stats["samples"] += 1
        if result.ok:
            self.stats["ok"] += 1
        else:
            self.stats["failed"] += 1
            self.stats[result.failure] += 1
        return result

    def _finish(self, ok: bool, payload: Any, seconds: float) -> RewardResult:
        if not ok:
            return RewardResult(False, {}, str(payload), "exception", seconds)
        try:
            return RewardResult(True, validate_features(payload), None, None, seconds)
        except ValueError as exc:
            return RewardResult(False, {}, f"invalid: {exc}", "invalid", seconds)

    def map(
        self, fn: Callable[[str, Mapping[str, Any]], dict[str, float]], items: Iterable[tuple[str, Mapping]]
    ) -> list[RewardResult]:
        """Runs `fn(text, example)` for each `(text, example)` in `items`; results in input order."""
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        items = list(items)
        self.stats["calls"] += 1
        if self.num_workers == 0:
            return [self._record(self._run_inline(fn, text, example)) for text, example in items]
        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"feature function {fn!r} cannot be pickled ({exc}); use a top-level function"
            ) from None
        self.start()
        return [self._record(result) for result in self._run_in_workers(fn, items)]

    def _run_inline(self, fn, text, example) -> RewardResult:
        started = time.perf_counter()
        try:
            value = fn(text, example)
        except Exception as exc:  # noqa: BLE001
            return RewardResult(False, {}, f"exception: {type(exc).__name__}: {exc}", "exception",
                                time.perf_counter() - started)
        return self._finish(True, value, time.perf_counter() - started)

    def _run_in_workers(self, fn, items) -> list[RewardResult]:
        results: list[RewardResult | None] = [None] * len(items)
        pending = collections.deque(range(len(items)))
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, start time)
        while pending or busy:
            for slot in range(len(self._workers)):
                if slot in busy or not pending:
                    continue
                index = pending.popleft()
                text, example = items[index]
                try:
                    payload = pickle.dumps((fn, text, example))
                except Exception as exc:  # noqa: BLE001
                    results[index] = RewardResult(False, {}, f"exception: sample cannot be pickled: {exc}",
                                                  "exception")
                    continue
                if not self._send(slot, (index, payload)):
                    results[index] = RewardResult(False, {}, "crash: worker could not take the sample", "crash")
                    continue
                busy[slot] = (index, time.perf_counter())
            if not busy:
                continue
            now = time.perf_counter()
            wait_s = max(0.0, min(start + self.timeout_s for _, start in busy.values()) - now)
            by_conn = {self._workers[slot].conn: slot for slot in busy}
            for conn in mp_connection.wait(list(by_conn), timeout=wait_s):
                slot = by_conn[conn]
                index, start = busy.pop(slot)
                try:
                    task_id, ok, payload = conn.recv()
                except Exception as exc:  # noqa: BLE001 - EOF, reset, or a garbled message: the child is gone.
                    try:  # the socket closes a moment before the process can be reaped
                        code = self._workers[slot].process.wait(timeout=1.0)
                    except subprocess.TimeoutExpired:
                        code = None
                    results[index] = RewardResult(
                        False, {}, f"crash: worker died (exit code {code}; {type(exc).__name__})", "crash",
                        time.perf_counter() - start)
                    self._replace(slot)
                    continue
                if task_id != index:  # cannot happen with one task in flight per worker; be loud if it does
                    raise RuntimeError(f"reward worker answered task {task_id}, expected {index}")
                results[index] = self._finish(ok, payload, time.perf_counter() - start)
            now = time.perf_counter()
            for slot, (index, start) in list(busy.items()):
                if now - start >= self.timeout_s:
                    busy.pop(slot)
                    results[index] = RewardResult(
                        False, {}, f"timeout: no result within {self.timeout_s} s", "timeout", now - start)
                    self._replace(slot)
        return results  # type: ignore[return-value]

    def _send(self, slot: int, message) -> bool:
        """Sends a task; a worker that died while idle is replaced once and the send retried."""
        for attempt in range(2):
            try:
                self._workers[slot].conn.send(message)
                return True
            except OSError:
                self._replace(slot)
        return False
