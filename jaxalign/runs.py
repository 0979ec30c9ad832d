"""Runs: train, evaluate and export, with the method resolved by name (`jaxalign.methods.build_method`)
and handed to the loop, which imports no method. The CLI and notebooks call these.

A run directory holds the config in force (`config.json`) and, when a resume changed it, the history of
the changes (`config_history.jsonl`, one JSON line per accepted resume: the step, each changed field with
its old and new value). Before a resume loads anything, `train` compares the config it is given with the
saved one (`check_resume`): fields that only change how long or how visibly the run goes (`RESUMABLE_FIELDS`)
may change; any other difference stops it with a `ConfigError` that lists every changed field, unless the
caller accepts the changes (`allow_config_change`, the CLI's `--allow-config-change`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import pathlib
from typing import Any, Mapping

import ml_collections

from jaxalign.config import ConfigError, ExperimentConfig, from_config_dict

log = logging.getLogger(__name__)

# Config fields a resume may change freely: the run's length, how often it evaluates, checkpoints and
# logs, how many checkpoints it keeps and what it shows. A field ending in "." is a whole section.
RESUMABLE_FIELDS = ("train.steps", "train.eval_every", "checkpoint.every", "checkpoint.keep", "checkpoint.async_save",
                    "logging.")
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    field: str
    old: Any
    new: Any

    @property
    def resumable(self) -> bool:
        return any(self.field == f or (f.endswith(".") and self.field.startswith(f)) for f in RESUMABLE_FIELDS)

    def __str__(self) -> str:
        return f"{self.field}: {_show(self.old)} \u2192 {_show(self.new)}"


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, sort_keys=True)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping) and tree:
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ConfigChange]:
    """Every field (dotted path) whose value differs between two plain config dicts, sorted by name; a
    list (e.g. `stages`) is one field."""
    a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    return [ConfigChange(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def check_workdir(workdir: str | pathlib.Path, option: str = "--workdir") -> None:
    """A run directory must be a directory (or not exist yet): a file there is a `ConfigError`."""
    from jaxalign.train.checkpoint import workdir_path

    path = workdir_path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {workdir} is a file, not a run directory; pass a directory (new or a run's)")


def check_export_dir(out_dir: str | pathlib.Path) -> None:
    """An export target must be a new or empty directory: a file or a non-empty directory is a `ConfigError`
    (nothing is overwritten)."""
    path = pathlib.Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; pass a new or empty directory for the HF model")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"--out {out_dir} is a non-empty directory; pass a new or empty one (nothing is overwritten)")


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """What `check_resume` found: the step a resume starts from (None: a fresh run), the accepted changes,
    and whether the run already finished (`latest_step` >= train.steps with its final eval written)."""

    latest_step: int | None
    changes: tuple[ConfigChange, ...] = ()
    finished: bool = False


def check_resume(config: ExperimentConfig, workdir: str | pathlib.Path, *,
                 allow_config_change: bool = False) -> ResumePlan:
    """Compares `config` with the run's saved config before anything is loaded; raises `ConfigError`
    listing every changed field (`old → new`) when a field outside `RESUMABLE_FIELDS` changed and
    `allow_config_change` is False. Reads only small files (no checkpoint is opened)."""
    from jaxalign.train.checkpoint import saved_steps, workdir_path

    check_workdir(workdir)
    path = workdir_path(workdir)
    steps = saved_steps(path) if path.exists() else []
    config_file = path / CONFIG_FILE
    if not steps or not config_file.exists():
        return ResumePlan(latest_step=None)  # nothing trained to resume: the loop starts the run over
    latest = steps[-1]
    changes = tuple(config_changes(json.loads(config_file.read_text()), config.raw))
    refused = [c for c in changes if not c.resumable]
    if refused and not allow_config_change:
        raise ConfigError(
            f"{workdir} holds a run (at step {latest}) with a different config: "
            + "; ".join(str(c) for c in refused)
            + ". Resuming would change the experiment: use a new --workdir, or pass --allow-config-change to "
              "accept the change (recorded in " + HISTORY_FILE + ")")
    return ResumePlan(latest_step=latest, changes=changes, finished=_finished(path, latest, config.train.steps))


def _finished(path, latest: int, steps: int) -> bool:
    """Whether the run ended: a checkpoint at or past train.steps and, at it, the final eval."""
    if latest > steps:
        return True
    if latest < steps:
        return False
    from jaxalign.train.metrics import read_metrics

    return any(r["kind"] == "eval" and r["step"] == latest for r in read_metrics(path))


def record_changes(workdir: str | pathlib.Path, config: ExperimentConfig, plan: ResumePlan) -> None:
    """Makes `config.json` the config in force and appends the accepted changes to the history."""
    from jaxalign.train.checkpoint import workdir_path

    if not plan.changes:
        return
    path = workdir_path(workdir)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entry = {"step": plan.latest_step, "time": now,
             "changes": [{"field": c.field, "old": None if c.old is _ABSENT else c.old,
                          "new": None if c.new is _ABSENT else c.new} for c in plan.changes]}
    history = path / HISTORY_FILE
    previous = history.read_text() if history.exists() else ""
    _write_whole(history, previous + json.dumps(entry, sort_keys=True) + "\n")
    _write_whole(path / CONFIG_FILE, config.to_json())


def _write_whole(path, text: str) -> None:
    """Replaces a file at once, so that another process (a host of a multi-host run) reading it meanwhile
    sees the old or the new text, never a part (object stores replace objects whole anyway)."""
    import os

    from jaxalign.train.checkpoint import is_local

    if not is_local(path):
        path.write_text(text)
        return
    temporary = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, os.fspath(path))


def train(config: ExperimentConfig, workdir: str | pathlib.Path, *, allow_config_change: bool = False):
    """Trains (or resumes) the run in `workdir`; returns the loop's `RunResult`.

    On a resume the config is checked first (`check_resume`). A run that already finished is not touched:
    it logs "already finished at step N" and returns its result (`RunResult.already_finished`); raising
    `train.steps` continues it.
    """
    import jax

    from jaxalign.methods.base import build_method
    from jaxalign.train.loop import train as train_loop

    plan = check_resume(config, workdir, allow_config_change=allow_config_change)
    if plan.finished:
        return _finished_result(config, workdir, plan.latest_step)
    if plan.changes:
        for change in plan.changes:
            level = logging.INFO if change.resumable else logging.WARNING
            log.log(level, "config change at step %d: %s%s", plan.latest_step, change,
                    "" if change.resumable else " (accepted by --allow-config-change)")
        if jax.process_index() == 0:
            record_changes(workdir, config, plan)
    return train_loop(config, workdir, build_method(config))


def _finished_result(config: ExperimentConfig, workdir, step: int):
    from jaxalign.train.checkpoint import workdir_path
    from jaxalign.train.loop import RunResult
    from jaxalign.train.metrics import read_metrics

    evals = [r for r in read_metrics(workdir) if r["kind"] == "eval"]
    pick = lambda r: {k: v for k, v in r.items() if k.startswith("eval/")}  # noqa: E731
    log.info("already finished at step %d (train.steps=%d); nothing to do. Raise --config.train.steps to "
             "continue it", step, config.train.steps)
    return RunResult(workdir_path(workdir), step, [], pick(evals[0]) if evals else {},
                     pick(evals[-1]) if evals else {}, False, already_finished=True)


def run_config_dict(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config a run saved in `<workdir>/config.json`, as a locked ConfigDict."""
    from jaxalign.train.checkpoint import workdir_path

    path = workdir_path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: {workdir} is not a jaxalign run directory")
    cd = ml_collections.ConfigDict(json.loads(path.read_text()))
    cd.lock()
    return cd


def run_config(workdir: str | pathlib.Path) -> ExperimentConfig:
    """The resolved, validated config a run saved in `<workdir>/config.json`."""
    return from_config_dict(run_config_dict(workdir))


def restored_agents(config: ExperimentConfig, workdir: str | pathlib.Path | None):
    """Every agent of `config`, with the latest checkpoint of `workdir` loaded (as built without one)."""
    from jaxalign.sharding import make_mesh
    from jaxalign.train.agents import build_agents, load_state_tree, state_tree
    from jaxalign.train.checkpoint import Checkpointer, abstract_like

    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    agents = build_agents(config, mesh)
    if workdir is not None:
        ckpt = Checkpointer(workdir, keep=config.checkpoint.keep, async_save=False)
        restored = ckpt.restore_latest(abstract_like(state_tree(agents)))
        ckpt.close()
        if restored is None:
            raise ConfigError(f"{workdir} has no readable checkpoint")
        load_state_tree(agents, restored[1])  # also refreshes the samplers with the policies' weights
    return agents


def evaluate_checkpoint(config: ExperimentConfig, workdir: str | pathlib.Path | None) -> dict[str, float]:
    """The method's eval episode (every agent acting, greedy) on a run's latest checkpoint, or on the
    config's models when there is no workdir. Uses the stage of the last training step."""
    import time

    from jaxalign.methods.base import build_method
    from jaxalign.rewards.pool import RewardPool
    from jaxalign.train import batching
    from jaxalign.train.loop import evaluate

    method = build_method(config)
    start = time.perf_counter()
    log.info("loading %s%s", ", ".join(sorted({a.model.spec for a in config.agents.values()})),
             f" and the latest checkpoint of {workdir}" if workdir is not None else "")
    agents = restored_agents(config, workdir)
    log.info("loaded in %.1f s", time.perf_counter() - start)
    method.apply_stage(config.stage_at(config.train.steps)[1].overrides)
    method.setup(agents)
    _, eval_examples = method.load_data()
    count = min(config.train.eval_examples or len(eval_examples), len(eval_examples))
    log.info("eval: %d examples, greedy (the first batch compiles)", count)
    start = time.perf_counter()
    with RewardPool(config.rewards.num_workers, config.rewards.timeout_s) as pool:
        metrics = evaluate(config, method, agents, pool, eval_examples, batching.PromptCounters())
    log.info("eval done in %.1f s", time.perf_counter() - start)
    return metrics


def export_checkpoint(workdir: str | pathlib.Path, out_dir: str | pathlib.Path, agent: str | None = None) -> str:
    """Writes one agent's policy of the latest checkpoint of `workdir` as an HF model directory; returns
    the agent's name. `agent` may be omitted when the run has one."""
    from flax import nnx

    from jaxalign.models import export_hf

    check_workdir(workdir)
    check_export_dir(out_dir)
    config = run_config(workdir)
    if agent is None:
        if len(config.agents) != 1:
            raise ConfigError(f"{workdir} has {len(config.agents)} agents ({', '.join(config.agents)}); "
                              "choose one with --agent NAME")
        agent = next(iter(config.agents))
    if agent not in config.agents:
        raise ConfigError(f"--agent {agent!r} is not an agent of {workdir}; its agents: {', '.join(config.agents)}")
    chosen = restored_agents(config, workdir)[agent]
    # `policy_params` is the policy alone, also when a shared value head lives in the same train state.
    export_hf(nnx.merge(chosen.graphdef, chosen.policy_params), chosen.tokenizer, str(out_dir))
    return agent
