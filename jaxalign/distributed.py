"""Multi-process start-up: detects a multi-host launch and calls `jax.distributed.initialize()` once,
before anything starts a jax backend (the CLI calls it first)."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def distributed_init_kwargs(environ=None) -> dict | None:
    """Arguments for `jax.distributed.initialize()` when this is one of several processes, else None.

    `JAXALIGN_DISTRIBUTED=1` forces initialisation (the TPU launcher sets it: JAX then finds the slice's
    hosts itself), `=0` disables it. `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`)
    gives an explicit coordinator (multi-node GPU); SLURM and Open MPI jobs with several tasks and TPU VMs
    with several worker hosts are detected from their environment.
    """
    env = os.environ if environ is None else environ
    flag = env.get("JAXALIGN_DISTRIBUTED", "auto").strip().lower()
    if flag in ("0", "false", "no"):
        return None
    kwargs: dict = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
            if env.get(name):
                kwargs[key] = int(env[name])
    multi = (
        flag in ("1", "true", "yes") or bool(kwargs)
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )
    return kwargs if multi else None


def maybe_initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when launched as one of several processes (see
    `distributed_init_kwargs`); a no-op for a single process or when already initialised."""
    kwargs = distributed_init_kwargs()
    if kwargs is not None and not jax.distributed.is_initialized():
        jax.distributed.initialize(**kwargs)
        log.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
