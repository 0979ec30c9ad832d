"""The host loop: the cadence of a run, for any number of agents.

Each step (see `docs/architecture.md`):
  1. episodes: `method.episode(ctx)` -> `{agent: Samples}` (`jaxalign.train.episodes`);
  2. learner: for each agent its stage trains (and `method.trains(agent, step)`), `learner.prepare` (the
     batch on the mesh once; old/reference log-probs, values, advantages) and `learner.update`;
  3. weight sync: the trained agents' samplers get their new parameters (on device);
  4. cadence: metrics (`<agent>/<metric>` when there are several agents), samples, eval, checkpoint,
     SIGTERM.

Per-phase timings: the episode's (`time/generate_s`, `time/reward_s`, `time/judge_s`) for the whole step,
and the learner's (logprobs, values, advantages, update, weight_sync) per agent; `time/step_s` is their sum.

Stages (`config.stages`) switch the method's overrides (`method.apply_stage`) and which agents train; an
agent that does not train keeps its parameters and optimizer state bit for bit. The checkpoint holds every
agent's state (`{"agents": {name: ...}}`), the data position, the prompt counters and the stage, so a
resume (across a stage boundary too) continues exactly.

The method is resolved by name outside this package (`jaxalign.runs`) and handed in: `train/` imports no
method.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from jaxalign.config import ExperimentConfig
from jaxalign.sharding import make_mesh
from jaxalign.train import batching, learner, metrics as metrics_lib
from jaxalign.train.agents import build_agents, load_state_tree, state_tree
from jaxalign.train.checkpoint import Checkpointer, StopSignal, abstract_like, workdir_path
from jaxalign.train.episodes import EpisodeContext
from jaxalign.train.samples import Samples

log = logging.getLogger(__name__)

TIMING_PREFIXES = ("time/", "perf/")  # metrics that legitimately differ between identical runs


@dataclasses.dataclass
class RunResult:
    workdir: Any  # etils.epath.Path
    final_step: int
    history: list[dict]
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    stopped_early: bool  # stopped by SIGTERM/SIGINT after saving a checkpoint; rerunning resumes it
    already_finished: bool = False  # the run had finished before this call: nothing was trained or evaluated


def evaluate(config: ExperimentConfig, method, agents, pool, eval_examples, counters) -> dict[str, float]:
    """The method's eval episode (greedy, every agent acting) on the first `train.eval_examples` examples."""
    examples = list(eval_examples[: config.train.eval_examples or len(eval_examples)])
    if not examples:
        return {}
    ctx = EpisodeContext(agents=agents, pool=pool, key=jax.random.key(0), counters=counters,
                         progress=config.logging.progress and jax.process_index() == 0)
    out = method.eval_episode(examples, ctx)
    return {k if k.startswith("eval/") else f"eval/{k}": float(v) for k, v in out.items()}


def _timed_eval(config: ExperimentConfig, method, agents, pool, eval_examples, counters, when: str
                ) -> tuple[dict[str, float], dict[str, float]]:
    """`evaluate` with its time logged: (the metrics, the eval record = the metrics + `time/eval_s`)."""
    count = min(config.train.eval_examples or len(eval_examples), len(eval_examples))
    log.info("eval %s: %d examples, greedy", when, count)
    start = time.perf_counter()
    metrics = evaluate(config, method, agents, pool, eval_examples, counters)
    seconds = time.perf_counter() - start
    log.info("eval %s done in %.1f s", when, seconds)
    return metrics, {**metrics, "time/eval_s": seconds}


def _agent_record(agent, samples: Samples, timer, update_metrics) -> dict[str, float]:
    """One agent's metrics of a step (unprefixed; throughput is added once the step's time is known)."""
    policy, critic = update_metrics
    rewards, lengths = samples.rewards_n, samples.lengths_n
    record = dict(samples.stats)
    record.update(policy)
    record.update(critic)
    record.update({
        "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
        "response/length_mean": float(lengths.mean()),
        "response/truncated_frac": float(np.mean([f == "length" for f in samples.finish_reasons]))
        if samples.finish_reasons else 0.0,
        **{f"reward/{k}": float(np.nanmean(v)) for k, v in samples.components.items()},
    })
    record.update({k: v for k, v in timer.metrics().items() if k != "time/step_s"})
    return record


def _throughput(agent, batch, step_seconds: float) -> dict[str, float]:
    """tokens/s and MFU of an agent's update over the whole step's time."""
    spec = agent.spec
    trained = batch.trained_tokens
    forward = trained * (int(spec.algorithm.recompute_old_logprobs) + int(agent.ref_params is not None)
                         + int(agent.has_critic))  # + the critic's value pass
    passes = spec.algorithm.epochs * (1 + int(agent.critic_step is not None))
    return metrics_lib.throughput_metrics(
        tokens=trained, step_seconds=step_seconds, num_devices=jax.device_count(),
        train_flops=metrics_lib.model_flops(agent.num_params, trained * passes, forward),
        device_kind=jax.devices()[0].device_kind,
    )


def train(config: ExperimentConfig, workdir: str | os.PathLike, method) -> RunResult:
    """Runs (or resumes) training of `method` (a built `Method`) in `workdir`; see the module docstring."""
    from jaxalign.rewards.pool import RewardPool

    workdir = workdir_path(workdir)  # a local directory or gs://bucket/dir
    is_main = jax.process_index() == 0
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    load_start = time.perf_counter()
    log.info("loading %s", ", ".join(sorted({a.model.spec for a in config.agents.values()})))
    agents = build_agents(config, mesh)
    method.setup(agents)  # models at data or scoring time (predicted values, a judge)
    log.info("models loaded in %.1f s", time.perf_counter() - load_start)
    train_examples, eval_examples = method.load_data()
    if method.data_report and is_main:
        log.info("dataset: %s", dict(method.data_report))
    counters = batching.PromptCounters()
    multi = len(agents) > 1

    ckpt = Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=config.logging.tensorboard, enabled=is_main)
    start_step, position = 0, 0
    restored = ckpt.restore_latest(abstract_like(state_tree(agents)))
    if restored is not None:
        start_step, tree, meta = restored
        load_state_tree(agents, tree)
        position = int(meta["data_position"])
        counters = batching.PromptCounters(**meta.get("prompt_counters", {}))
        if is_main:
            metrics_lib.truncate_metrics(workdir, start_step)
        log.info("resumed from step %d (data position %d, stage %s)", start_step, position,
                 meta.get("stage", 0))
    elif is_main:
        metrics_lib.truncate_metrics(workdir, -1)  # records of an attempt that crashed before its first save
        (workdir / "config.json").write_text(config.to_json())
    stream = batching.DataStream(len(train_examples), config.seed, position)
    base_key = jax.random.key(config.seed)
    history: list[dict] = []
    previous_evals = [r for r in metrics_lib.read_metrics(workdir) if r["kind"] == "eval"]
    stage_index = -1

    def enter_stage(step: int) -> None:
        nonlocal stage_index
        index, stage = config.stage_at(step)
        if index != stage_index:
            method.apply_stage(stage.overrides)
            if stage_index != -1 or index:
                log.info("stage %d from step %d: training %s", index, step, ", ".join(stage.train))
            stage_index = index

    def save(step: int) -> None:
        meta = {"step": step, "data_position": stream.position, "prompt_counters": dataclasses.asdict(counters),
                "stage": config.stage_at(max(step, 1))[0]}
        ckpt.save(step, state_tree(agents), meta, config.raw)

    stopped_early = False
    step = start_step
    pool = RewardPool(config.rewards.num_workers, config.rewards.timeout_s)
    progress = metrics_lib.Progress(config.train.steps, start_step, config.logging.progress and is_main)
    try:
        with pool, StopSignal() as stop:
            enter_stage(start_step + 1)
            if restored is None and not config.train.eval_at_start:
                eval_before = {}
            elif restored is None:
                eval_before, eval_record = _timed_eval(config, method, agents, pool, eval_examples, counters,
                                                       "before training (the first one compiles)")
                writer.write(0, eval_record, kind="eval")
            else:
                eval_before = {k: v for k, v in (previous_evals[0] if previous_evals else {}).items()
                               if k.startswith("eval/")}
            if start_step < config.train.steps:
                log.info("training steps %d-%d; the first step compiles its programs first", start_step + 1,
                         config.train.steps)
            for step in range(start_step + 1, config.train.steps + 1):
                enter_stage(step)
                stage = config.stages[stage_index]
                ctx = EpisodeContext(agents=agents, pool=pool, key=jax.random.fold_in(base_key, step), step=step,
                                     counters=counters, stream=stream, train_examples=train_examples)
                samples = method.episode(ctx)
                step_seconds = sum(ctx.timer.seconds.values())
                record: dict[str, float] = {k: v for k, v in ctx.timer.metrics().items() if k != "time/step_s"}
                agent_records, batches = {}, {}
                for name, agent_samples in samples.items():
                    agent = agents[name]
                    if name not in stage.train or not method.trains(name, step):
                        agent_records[name] = {**agent_samples.stats,
                                               "reward/mean": float(agent_samples.rewards_n.mean())}
                        continue
                    timer = metrics_lib.PhaseTimer()
                    batches[name] = learner.prepare(agent, agent_samples, mesh, timer)
                    with timer("update"):
                        updates = learner.update(agent, batches[name], step, config.seed, mesh)
                    with timer("weight_sync"):
                        agent.sampler.update_params(agent.policy_params)
                    agent_records[name] = _agent_record(agent, agent_samples, timer, updates)
                    step_seconds += sum(timer.seconds.values())
                for name, batch in batches.items():
                    agent_records[name].update(_throughput(agents[name], batch, step_seconds))
                for name, agent_record in agent_records.items():
                    record.update(agent_record if not multi else {f"{name}/{k}": v for k, v in agent_record.items()})
                record["time/step_s"] = step_seconds
                if multi:
                    record["stage"] = float(stage_index)
                record.update({"data/epoch": float(stream.epoch), "data/prompts_truncated": float(counters.truncated),
                               "data/prompts_dropped": float(counters.dropped)})
                if step % max(config.logging.samples_every, 1) == 0:
                    writer.write_samples(step, _sample_records(samples, config.logging.samples_per_log, multi))
                writer.write(step, record)
                history.append(record)
                progress.update(record)
                last = step == config.train.steps
                if config.train.eval_every and step % config.train.eval_every == 0 and not last:
                    writer.write(step, _timed_eval(config, method, agents, pool, eval_examples, counters,
                                                   f"at step {step}")[1], kind="eval")
                if (config.checkpoint.every and step % config.checkpoint.every == 0) or last:
                    save(step)
                if stop.should_stop() and not last:
                    save(step)
                    stopped_early = True
                    log.warning("stopping at step %d on a signal; checkpoint saved", step)
                    break
            eval_after = {}
            if not stopped_early:
                eval_after, eval_record = _timed_eval(config, method, agents, pool, eval_examples, counters,
                                                      "after training")
                writer.write(config.train.steps, eval_record, kind="eval")
    finally:
        progress.close()
        ckpt.close()
        writer.close()
    if is_main and not stopped_early:
        if eval_before and eval_after:
            print(metrics_lib.eval_table(eval_before, eval_after))
        if config.logging.report:
            models = sorted({a.model.spec for a in config.agents.values()})
            metrics_lib.write_report(workdir, title=f"{config.method} · {', '.join(models)}")
    return RunResult(workdir, step, history, eval_before, eval_after, stopped_early)


def _sample_records(samples: Mapping[str, Samples], count: int, multi: bool) -> list[dict]:
    out = []
    for name, s in samples.items():
        for i in range(min(count, s.num_samples)):
            record = {"prompt": s.examples[i].get("prompt", "") if s.examples else "",
                      "response": s.texts[i] if s.texts else "", "reward": float(s.rewards_n[i])}
            out.append({"agent": name, **record} if multi else record)
    return out
