"""Entry point of a reward-pool child process (`python -m jaxalign.rewards._worker FD`).

This module is deliberately light: it imports only the standard library, so a worker starts in the time
of a bare interpreter and never loads jax. The feature functions it runs import what they need (e.g.
math-verify) on first use, or at start-up through the pool's `preload` list.

Protocol over the inherited `multiprocessing` connection (pickled messages):
  parent -> child  ("init", sys_path, preload_modules)        once, first
  child  -> parent ("ready", startup_seconds) | ("init_error", message)
  parent -> child  (task_id, payload)    payload = pickle.dumps((fn, text, example))
  child  -> parent (task_id, True, features) | (task_id, False, "exception: ...")
A `None` task ends the worker; so does the parent closing its end.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import time
import traceback
from multiprocessing.connection import Connection


def _short_traceback(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()


def serve(conn: Connection) -> None:
    """Runs tasks from `conn` until the parent sends `None` or goes away."""
    started = time.perf_counter()
    try:
        _, sys_path, preload = conn.recv()
        sys.path[:] = list(sys_path)
        for module_name in preload:
            importlib.import_module(module_name)
    except BaseException as exc:  # noqa: BLE001 - any start-up failure is reported to the parent.
        conn.send(("init_error", _short_traceback(exc)))
        return
    conn.send(("ready", time.perf_counter() - started))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, payload = message
        try:
            fn, text, example = pickle.loads(payload)
            features = fn(text, example)
            reply = (task_id, True, features)
            # Fail here, not in conn.send, if the result cannot cross the process boundary.
            pickle.dumps(reply)
        except Exception as exc:  # noqa: BLE001 - a failing feature function is a counted failure.
            reply = (task_id, False, f"exception: {_short_traceback(exc)}")
        conn.send(reply)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m jaxalign.rewards._worker CONNECTION_FD")
    serve(Connection(int(argv[1])))


if __name__ == "__main__":
    main(sys.argv)
