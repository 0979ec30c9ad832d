"""Orbax checkpoints of a run: every agent's params and optimizer state (and its critic's, for PPO with a
learned critic; see `jaxalign.train.agents.state_tree`), the step, the data position and the resolved
config; keep-last-k, async save, auto-resume, fallback past a corrupt latest checkpoint, and a SIGTERM flag
the loop polls so a preempted job saves and exits cleanly.

Layout under `<workdir>/checkpoints/<step>/`: `state` (the array pytree), `meta` (JSON: step, data position,
PRNG seed info, anything else the loop needs to resume) and `config` (JSON of the resolved config).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """A run directory as a path object for local directories (made absolute) and object-store URLs
    (`gs://bucket/dir`, needs `gcsfs`); every file of a run is written through it."""
    text = os.fspath(workdir)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in os.fspath(path)


def saved_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of the finished checkpoints under `<workdir>/checkpoints`, read from the directory names
    alone (nothing is restored, no checkpoint manager is opened); in-progress saves are not counted."""
    directory = workdir_path(workdir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


class Checkpointer:
    """Saves and restores `(state pytree, meta dict)` pairs under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = workdir_path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta", "config"))

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: Mapping[str, Any], config_json: Mapping[str, Any]) -> None:
        """Starts a (possibly async) save; a save at an existing step is skipped."""
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(dict(meta)),
                config=ocp.args.JsonSave(dict(config_json)),
            ),
            force=True,
        )

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest readable checkpoint into `abstract_state`'s structure and shardings.

        Returns `(step, state, meta)` or None when there is no checkpoint. A checkpoint that fails to
        restore (partial write, corrupt file) is skipped with a warning and the previous one is tried.
        """
        for step in reversed(self.all_steps()):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # any failure to read means "unusable", and an older one may be fine
                log.warning("checkpoint at step %d is unreadable (%s: %s); falling back to an older one",
                            step, type(e).__name__, e)
                continue
            return step, restored["state"], dict(restored["meta"])
        return None

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, the restore target orbax needs."""

    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, np.ndarray):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x

    return jax.tree.map(leaf, tree)


class StopSignal:
    """Turns SIGTERM (and SIGINT) into a flag the loop checks between steps; restores handlers on exit."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self.received: int | None = None

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum
        log.warning("received %s: will save a checkpoint and stop after the current step",
                    signal.Signals(signum).name)

    def should_stop(self) -> bool:
        """True on every process once any process got the signal (hosts agree on when to stop)."""
        flag = self.received is not None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
        return flag

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
