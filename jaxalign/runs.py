"""Runs: train, supervised fine-tuning (`sft`), evaluate and export, with the method resolved by name
(`jaxalign.methods.build_method`) and handed to the loop, which imports no method. The CLI and notebooks
call these. A run directory holds one kind of run (`config.kind`: "rl" or "sft", `run_kind` in its
`config.json`); export and eval work on both.

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
RESUMABLE_FIELDS = ("train.steps", "train.eval_every", "train.eval_at_start", "train.skip_memory_check", "checkpoint.every",
                    "checkpoint.keep", "checkpoint.async_save", "logging.")
# A `jaxalign sft` run may also change its length and eval cadence, and every section SFT does not use (a
# config file may serve both commands: its RL sections only matter to `jaxalign eval --workdir` of the SFT
# run); an RL run does not use the `sft` section.
SFT_RESUMABLE_FIELDS = ("sft.steps", "sft.epochs", "sft.eval_every", "train.", "rollout.", "algorithm.", "critic.",
                        "agents", "stages", "rewards.", "method")
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


def resumable_fields(config: ExperimentConfig) -> tuple[str, ...]:
    """The fields a resume of `config`'s kind of run may change (see RESUMABLE_FIELDS)."""
    if config.kind == "sft":
        return RESUMABLE_FIELDS + SFT_RESUMABLE_FIELDS + (f"{config.method}.",)
    return RESUMABLE_FIELDS + ("sft.",)


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    field: str
    old: Any
    new: Any
    free: tuple[str, ...] = RESUMABLE_FIELDS  # the fields a resume may change (`resumable_fields`)

    @property
    def resumable(self) -> bool:
        return any(self.field == f or (f.endswith(".") and self.field.startswith(f)) for f in self.free)

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


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], free: tuple[str, ...] = RESUMABLE_FIELDS
                   ) -> list[ConfigChange]:
    """Every field (dotted path) whose value differs between two plain config dicts, sorted by name; a
    list (e.g. `stages`) is one field. `free`: the fields whose change is resumable."""
    a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    return [ConfigChange(k, a.get(k, _ABSENT), b.get(k, _ABSENT), free) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT) and not (k not in a and _added_as_before(k, b))]


# Fields added to the config after runs were saved, with the value that does what those runs did: a saved
# config without the field resumes under that value as unchanged (any other value is a change).
ADDED_FIELDS = {"model.init_from": "", "train.eval_at_start": True, "train.skip_memory_check": False,
                "lora.rank": 0}


def _added_as_before(key: str, new: Mapping[str, Any]) -> bool:
    if key in ADDED_FIELDS:
        return new[key] == ADDED_FIELDS[key]
    # The other LoRA fields do nothing while the rank is 0 (full fine-tuning, as before LoRA existed).
    return key.startswith("lora.") and new.get("lora.rank", 0) == 0


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
    listing every changed field (`old → new`) when a field outside `resumable_fields(config)` changed and
    `allow_config_change` is False, and when the directory holds the other kind of run (`jaxalign train`
    vs `jaxalign sft`). Reads only small files (no checkpoint is opened). Whether an SFT run finished is
    decided by its loop, which knows the number of steps only once the data is loaded."""
    from jaxalign.train.checkpoint import saved_steps, workdir_path

    check_workdir(workdir)
    path = workdir_path(workdir)
    steps = saved_steps(path) if path.exists() else []
    config_file = path / CONFIG_FILE
    if not steps or not config_file.exists():
        return ResumePlan(latest_step=None)  # nothing trained to resume: the loop starts the run over
    latest = steps[-1]
    saved = json.loads(config_file.read_text())
    saved_kind = saved.get("run_kind", "rl")
    if saved_kind != config.kind:
        if saved_kind == "sft":
            raise ConfigError(f"{workdir} holds a supervised fine-tuning run (jaxalign sft, at step {latest}); to "
                              f"start RL from it use a new --workdir with --config.model.init_from={workdir}")
        raise ConfigError(f"{workdir} holds an RL run (jaxalign train, at step {latest}); use a new --workdir "
                          "for jaxalign sft")
    changes = tuple(config_changes(saved, config.raw, resumable_fields(config)))
    refused = [c for c in changes if not c.resumable]
    if refused and not allow_config_change:
        raise ConfigError(
            f"{workdir} holds a run (at step {latest}) with a different config: "
            + "; ".join(str(c) for c in refused)
            + ". Resuming would change the experiment: use a new --workdir, or pass --allow-config-change to "
              "accept the change (recorded in " + HISTORY_FILE + ")")
    finished = config.kind == "rl" and _finished(path, latest, config.train.steps)
    return ResumePlan(latest_step=latest, changes=changes, finished=finished)


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
    from jaxalign.methods.base import build_method
    from jaxalign.train.loop import train as train_loop

    plan = check_resume(config, workdir, allow_config_change=allow_config_change)
    if plan.finished:
        return _finished_result(config, workdir, plan.latest_step)
    from jaxalign.memory import check_memory

    check_memory(config)  # prints the per-device estimate; refuses (ConfigError) a layout that cannot fit
    _accept_changes(config, workdir, plan)
    return train_loop(config, workdir, build_method(config))


def _accept_changes(config: ExperimentConfig, workdir, plan: ResumePlan) -> None:
    """Logs the config changes of a resume and records them (process 0)."""
    import jax

    if plan.changes:
        for change in plan.changes:
            level = logging.INFO if change.resumable else logging.WARNING
            log.log(level, "config change at step %d: %s%s", plan.latest_step, change,
                    "" if change.resumable else " (accepted by --allow-config-change)")
        if jax.process_index() == 0:
            record_changes(workdir, config, plan)


def sft(config: ExperimentConfig, workdir: str | pathlib.Path, *, allow_config_change: bool = False):
    """Supervised fine-tuning (or its resume) of `config` (from `from_config_dict(cd, kind="sft")`) in
    `workdir`; returns the loop's `RunResult` (`jaxalign.train.sft.train_sft`). The resume check is
    `train`'s, with the SFT run's free fields (`resumable_fields`)."""
    from jaxalign.train.sft import train_sft

    if config.kind != "sft":
        raise ConfigError("runs.sft needs an SFT config: from_config_dict(cd, kind='sft')")
    plan = check_resume(config, workdir, allow_config_change=allow_config_change)
    from jaxalign.memory import check_memory

    check_memory(config)  # prints the per-device estimate; refuses (ConfigError) a layout that cannot fit
    _accept_changes(config, workdir, plan)
    return train_sft(config, workdir)


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
    eval_examples = method.load_eval_data()  # no training-split work (e.g. value prediction)
    count = min(config.train.eval_examples or len(eval_examples), len(eval_examples))
    log.info("eval: %d examples, greedy (the first batch compiles)", count)
    start = time.perf_counter()
    with RewardPool(config.rewards.num_workers, config.rewards.timeout_s) as pool:
        metrics = evaluate(config, method, agents, pool, eval_examples, batching.PromptCounters())
    log.info("eval done in %.1f s", time.perf_counter() - start)
    return metrics


def export_checkpoint(workdir: str | pathlib.Path, out_dir: str | pathlib.Path, agent: str | None = None, *,
                      adapter: bool = False) -> str:
    """Writes one agent's policy of the latest checkpoint of `workdir` as an HF model directory (LoRA
    adapters merged into the weights), or with `adapter` its LoRA adapters as a PEFT adapter directory for
    the config's base model; returns the agent's name. `agent` may be omitted when the run has one."""
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
    spec = config.agents[agent]
    if adapter and not spec.uses_lora:
        raise ConfigError(f"--adapter: agent {agent!r} of {workdir} was fully fine-tuned (lora.rank=0), so it has no "
                          "LoRA adapters; export the whole model without --adapter")
    chosen = restored_agents(config, workdir)[agent]
    # `policy_params` is the policy alone, also when a shared value head lives in the same train state.
    policy = nnx.merge(chosen.graphdef, chosen.policy_params)
    if adapter:
        from jaxalign.models.hf import export_peft

        export_peft(policy, str(out_dir), base_model=_peft_base_name(spec.model.spec))
    else:
        export_hf(policy, chosen.tokenizer, str(out_dir))
    return agent


def _peft_base_name(spec: str) -> str:
    """`base_model_name_or_path` of an exported adapter: a local model as an absolute path, else the spec."""
    import os

    return os.path.abspath(spec) if os.path.exists(spec) else spec
