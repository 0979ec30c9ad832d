"""The host loop: prompts -> samples -> rewards -> advantages -> sharded updates -> weights back to the
sampler, with eval, checkpoints, metrics and clean stops.

One step, for each agent (single-policy methods have one; nothing here assumes one policy):
  1. the next prompts of the (seed, epoch)-ordered stream, encoded with the method's chat messages (or the
     example's own `prompt_ids` for token-level methods), overlong ones truncated or dropped;
  2. `Sampler.generate` with n samples per prompt and the key fold_in(seed key, step);
  3. the method's feature function in the `RewardPool` (failed samples: zero loss weight, counted), the
     method's `judge_features` hook (model-based verification; a NaN verdict fails the sample and is
     counted), the method's rewards; with dynamic sampling, groups whose rewards are all equal are dropped
     and more prompts are sampled (bounded tries), keeping the batch shape fixed;
  4. old (optional) and reference (when a KL term needs it) log-probs, with a learned critic (estimator
     "gae") its values, then advantages (and the critic's returns) over the whole batch;
  5. per epoch and mini-batch: loss weights over the mini-batch, micro-batches stacked on a leading axis,
     one jitted `train_step` (and a separate critic's step on the same micro-batches; see
     `jaxalign.train.agents`); a non-finite loss stops the run before anything is saved;
  6. `sampler.update_params` (timed), metrics, samples, checkpoint, SIGTERM check.

Per-phase timings (`time/<phase>_s`, summed over dynamic-sampling tries; `time/step_s` is their sum):
generate, reward (pool + rewards), judge (methods with `uses_judge`), logprobs (old and reference),
values (critic), advantages, update, weight_sync.

Multi-host: when `JAX_COORDINATOR_ADDRESS` or a TPU/SLURM multi-process environment is detected,
`jax.distributed.initialize()` runs first; every host walks the same prompt order and samples its own
contiguous share of each step's prompts; training arrays are global arrays built from process-local rows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import weakref
from typing import Any, Callable

import jax
import numpy as np

from jaxalign.config import ExperimentConfig
from jaxalign.train import batching, metrics as metrics_lib
from jaxalign.train.agents import (  # noqa: F401  (Agent, build_agent, check_vocab: re-exported)
    Agent,
    StepBatch,
    TrainingDiverged,
    build_agent,
    check_vocab,
    load_state_tree,
    state_tree as _state_tree,
    update_agent,
)
from jaxalign.train.checkpoint import Checkpointer, StopSignal, abstract_like, workdir_path

log = logging.getLogger(__name__)

TIMING_PREFIXES = ("time/", "perf/")  # metrics that legitimately differ between identical runs
PROMPT_BUCKET = 32


@dataclasses.dataclass
class RunResult:
    workdir: Any  # etils.epath.Path
    final_step: int
    history: list[dict]
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    stopped_early: bool


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


def _encoder(method, tokenizer) -> Callable[[dict], list[int]]:
    def encode(example: dict) -> list[int]:
        if "prompt_ids" in example:
            return list(example["prompt_ids"])
        if tokenizer is None:
            raise ValueError(
                "this model has no tokenizer, so examples need token-level 'prompt_ids'; load a model with a "
                "tokenizer (HF directory, .gguf or a named alias) for text prompts"
            )
        return tokenizer.apply_chat_template(method.messages(example), add_generation_prompt=True)

    return encode


def _texts(rollout, tokenizer) -> list[str]:
    """Response texts as the reward sees them: decoded text, or space-separated token ids without a
    tokenizer. `rollout` is a `Rollout` or the loop's merged dict of its fields."""
    get = rollout.__getitem__ if isinstance(rollout, dict) else functools.partial(getattr, rollout)
    if tokenizer is not None:
        return list(get("texts"))
    return [
        " ".join(str(int(t)) for t in ids[mask.astype(bool)])
        for ids, mask in zip(get("response_ids_np"), get("response_mask_np"))
    ]


_ATTACHED: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def attach_models(method, sampler) -> None:
    """Calls the method's optional `attach_sampler(sampler)` hook once per (method, sampler): methods that
    need a model at data or scoring time (predicted values, a judge model) get the policy's sampler."""
    hook = getattr(method, "attach_sampler", None)
    if callable(hook) and _ATTACHED.get(method) is not sampler:
        hook(sampler)
        _ATTACHED[method] = sampler


def score(method, pool, texts: list[str], examples: list[dict], timer=None):
    """Scores responses: the pool's feature function, the method's `judge_features` hook, its rewards.

    Returns features, rewards (failed samples filled per group later), components, the ok mask and the
    judge-failure mask (pool ok, but a feature is NaN after the hook). Timed into `timer`'s "reward" and,
    for methods with `uses_judge`, "judge" phases.
    """
    from jaxalign.rewards.pool import collect_features

    timer = timer if timer is not None else metrics_lib.PhaseTimer()
    with timer("reward"):
        results = pool.map(method.feature_fn, list(zip(texts, examples)))
        features = collect_features(results)
    ok_n = np.array([r.ok for r in results], bool)
    judge = getattr(method, "judge_features", None)
    if callable(judge):
        with timer("judge" if getattr(method, "uses_judge", False) else "reward"):
            features = judge(texts, examples, features)
    not_nan_n = np.ones(len(texts), bool)
    for values in features.values():
        not_nan_n &= ~np.isnan(np.asarray(values, np.float64))
    judge_failed_n = ok_n & ~not_nan_n
    ok_n = ok_n & not_nan_n
    with timer("reward"):
        rewards_n, components = method.rewards(features, examples)
    return features, np.asarray(rewards_n, np.float32), components, ok_n, judge_failed_n


def _sampling_params(config: ExperimentConfig, *, greedy: bool, n: int):
    from jaxalign.rollout import SamplingParams

    r = config.rollout
    return SamplingParams(
        max_new_tokens=(r.eval_max_new_tokens or r.max_new_tokens) if greedy else r.max_new_tokens,
        temperature=1.0 if greedy else r.temperature, top_k=0 if greedy else r.top_k,
        top_p=1.0 if greedy else r.top_p, greedy=greedy, n=n,
    )


def evaluate(config, method, agent, tokenizer, pool, eval_examples, encode, counters) -> dict[str, float]:
    """Greedy responses to the eval split, scored with the method's `eval_metrics` (judge included)."""
    attach_models(method, agent.sampler)
    examples = eval_examples[: config.train.eval_examples or len(eval_examples)]
    kept, prompts = [], []
    for example in examples:
        ids = batching.fit_prompt(encode(example), config.rollout.max_prompt_len, config.rollout.overlong_prompts,
                                  counters)
        if ids is not None:
            kept.append(example)
            prompts.append(ids)
    if not kept:
        return {}
    batch = config.rollout.samples_per_step
    texts, lengths = [], []
    sp = _sampling_params(config, greedy=True, n=1)
    for start in range(0, len(prompts), batch):
        rollout = agent.sampler.generate(prompts[start:start + batch], sp, jax.random.key(0))
        texts += _texts(rollout, tokenizer)
        lengths.append(rollout.lengths_n)
    features, _, _, ok_n, judge_failed_n = score(method, pool, texts, kept)
    out = dict(method.eval_metrics(features, kept, np.concatenate(lengths)))
    out["eval/failed"] = float((~ok_n).sum())
    if getattr(method, "uses_judge", False):
        out["eval/judge_failed"] = float(judge_failed_n.sum())
    return {k if k.startswith("eval/") else f"eval/{k}": float(v) for k, v in out.items()}


def _global(array_np: np.ndarray, mesh, batch_axis: int):
    """A global array sharded over (data, fsdp) on `batch_axis`, from the whole batch on the host.

    Every process holds the same whole step batch (rollouts are gathered to all hosts, rewards computed
    on each), so each process just puts the rows of its own devices.
    """
    from jax.sharding import NamedSharding, PartitionSpec as P

    spec = [None] * array_np.ndim
    spec[batch_axis] = ("data", "fsdp")
    array_np = np.asarray(array_np)
    return jax.make_array_from_callback(array_np.shape, NamedSharding(mesh, P(*spec)),
                                        lambda index: array_np[index])


def collect_rollouts(config, method, agent, tokenizer, pool, stream, train_examples, encode, counters, key,
                     timer=None):
    """Samples one step's groups (with dynamic-sampling refills); returns the rollout dict, examples per
    sample, rewards, ok mask, components and rollout stats. Generation, reward and judge time go to
    `timer`'s phases, summed over tries."""
    timer = timer if timer is not None else metrics_lib.PhaseTimer()
    r = config.rollout
    n = r.samples_per_prompt
    sp = _sampling_params(config, greedy=False, n=n)
    parts, examples_n, rewards, oks, comps, informative = [], [], [], [], [], []
    judge_failed = 0
    tries = r.dynamic_sampling_max_tries if r.dynamic_sampling else 1
    for attempt in range(tries):
        examples, prompt_ids = batching.next_prompts(
            stream, train_examples, encode, r.prompts_per_step, max_len=r.max_prompt_len,
            mode=r.overlong_prompts, counters=counters,
        )
        with timer("generate"):
            rollout = agent.sampler.generate(prompt_ids, sp, jax.random.fold_in(key, attempt))
        ex_n = [examples[i // n] for i in range(len(examples) * n)]
        _, rewards_n, components, ok_n, judge_failed_n = score(method, pool, _texts(rollout, tokenizer), ex_n,
                                                               timer)
        judge_failed += int(judge_failed_n.sum())
        # A non-finite reward is a failed sample like a failed feature: no loss, no effect on its baseline.
        ok_n = ok_n & np.isfinite(rewards_n)
        rewards_n = batching.fill_failed_rewards(rewards_n, ok_n, n)
        parts.append(rollout)
        examples_n += ex_n
        rewards.append(rewards_n)
        oks.append(ok_n)
        comps.append(components)
        informative.append(batching.informative_groups(rewards_n, n, r.dynamic_sampling_tol))
        if not r.dynamic_sampling or np.concatenate(informative).sum() >= r.prompts_per_step:
            break
    informative_g = np.concatenate(informative)
    groups = np.flatnonzero(informative_g) if r.dynamic_sampling else np.arange(r.prompts_per_step)
    if len(groups) < r.prompts_per_step:  # refill with uninformative groups (zero advantage) to keep shapes
        groups = np.concatenate([groups, np.flatnonzero(~informative_g)])
    groups = np.sort(groups[: r.prompts_per_step])
    index_n = (groups[:, None] * n + np.arange(n)[None, :]).reshape(-1)
    merged = batching.take_samples(batching.concat_rollouts(parts), index_n)
    rewards_n = np.concatenate(rewards)[index_n]
    ok_n = np.concatenate(oks)[index_n]
    components = {k: np.concatenate([np.asarray(c[k], np.float32) for c in comps])[index_n] for k in comps[0]}
    stats = {
        "rollout/tries": float(attempt + 1),
        "rollout/informative_groups": float(informative_g[groups].sum()),
        "rollout/failed": float((~ok_n).sum()),
    }
    if getattr(method, "uses_judge", False):  # over every try: the judge's work, kept or not
        stats["rollout/judge_failed"] = float(judge_failed)
    return merged, [examples_n[i] for i in index_n], rewards_n, ok_n, components, stats


def _batch_for_estimator(config, agent, seqs, rewards_n, group_ids_n, mesh, timer) -> StepBatch:
    """Old and reference log-probs, the critic's values (gae) and per-token advantages (and returns) for
    the whole step batch (global arrays). Values are in the log-prob layout, so GAE runs over the full rows
    with the loss mask: prompt columns, padding and failed samples are skipped and get 0."""
    tokens = _global(seqs.tokens_nt, mesh, 0)
    valid = _global(seqs.valid_nt.astype(bool), mesh, 0)
    positions = _global(batching.positions_np(seqs.valid_nt), mesh, 0)
    if config.algorithm.recompute_old_logprobs:
        with timer("logprobs"):
            old_logp, _ = agent.logprob_fn(agent.policy_params, tokens, valid, positions)
            old_logp.block_until_ready()
    else:
        old_logp = _global(seqs.sampler_logp_nt, mesh, 0)
    ref_logp = None
    if agent.ref_params is not None:
        with timer("logprobs"):
            ref_logp, _ = agent.logprob_fn(agent.ref_params, tokens, valid, positions)
            ref_logp.block_until_ready()
    values = None
    if agent.has_critic:
        with timer("values"):
            values = agent.value_fn(agent.value_params, tokens, valid, positions)
            values.block_until_ready()
    with timer("advantages"):
        advantages, returns = _advantages_jit(
            config.algorithm.estimator, config.algorithm.advantage_config(), _global(rewards_n, mesh, 0),
            _global(group_ids_n, mesh, 0), _global(seqs.loss_mask_nt, mesh, 0), old_logp, ref_logp, values,
        )
    return StepBatch(old_logp, ref_logp, advantages, returns if agent.has_critic else None, values)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _advantages_jit(name, cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt, ref_logp_nt, values_nt=None):
    from jaxalign.algorithms.advantages import compute_advantages

    return compute_advantages(name, cfg, rewards_n, group_ids_n, mask_nt, old_logp_nt, ref_logp_nt, values_nt)


def train(config: ExperimentConfig, workdir: str | os.PathLike) -> RunResult:
    """Runs (or resumes) training in `workdir`; see the module docstring for the per-step flow."""
    from jaxalign import methods as _methods  # noqa: F401  (registers the methods)
    from jaxalign.methods.base import get_method
    from jaxalign.rewards.pool import RewardPool
    from jaxalign.sharding import make_mesh
    from jaxalign.train import toy_task as _toy  # noqa: F401

    maybe_initialize_distributed()
    workdir = workdir_path(workdir)  # a local directory or gs://bucket/dir
    is_main = jax.process_index() == 0
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    method = get_method(config.method)(config.method_config)
    agent, tokenizer, model_cfg = build_agent(config, mesh)
    agents = [agent]
    attach_models(method, agent.sampler)  # models at data or scoring time (predicted values, a judge)
    train_examples, eval_examples = method.load_data()
    data_report = getattr(method, "data_report", None)
    if data_report and is_main:
        log.info("dataset: %s", data_report)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(agent.policy_params))
    encode = _encoder(method, tokenizer)
    counters = batching.PromptCounters()

    ckpt = Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=config.logging.tensorboard, enabled=is_main)
    start_step, position = 0, 0
    restored = ckpt.restore_latest(abstract_like(_state_tree(agents)))
    if restored is not None:
        start_step, tree, meta = restored
        load_state_tree(agents, tree)
        position = int(meta["data_position"])
        counters = batching.PromptCounters(**meta.get("prompt_counters", {}))
        if is_main:
            metrics_lib.truncate_metrics(workdir, start_step)
        log.info("resumed from step %d (data position %d)", start_step, position)
    elif is_main:
        metrics_lib.truncate_metrics(workdir, -1)  # records of an attempt that crashed before its first save
        (workdir / "config.json").write_text(config.to_json())
    stream = batching.DataStream(len(train_examples), config.seed, position)
    base_key = jax.random.key(config.seed)
    history: list[dict] = []
    previous_evals = [r for r in metrics_lib.read_metrics(workdir) if r["kind"] == "eval"]

    def save(step: int) -> None:
        meta = {"step": step, "data_position": stream.position, "prompt_counters": dataclasses.asdict(counters)}
        ckpt.save(step, _state_tree(agents), meta, config.raw)

    stopped_early = False
    step = start_step
    pool = RewardPool(config.rewards.num_workers, config.rewards.timeout_s)
    progress = metrics_lib.Progress(config.train.steps, start_step, config.logging.progress and is_main)
    try:
        with pool, StopSignal() as stop:
            if restored is None:
                eval_before = evaluate(config, method, agent, tokenizer, pool, eval_examples, encode, counters)
                writer.write(0, eval_before, kind="eval")
            else:
                eval_before = {k: v for k, v in (previous_evals[0] if previous_evals else {}).items()
                               if k.startswith("eval/")}
            for step in range(start_step + 1, config.train.steps + 1):
                timer = metrics_lib.PhaseTimer()
                key = jax.random.fold_in(base_key, step)
                record: dict[str, float] = {}
                for a in agents:
                    rollout, examples_n, rewards_n, ok_n, components, stats = collect_rollouts(
                        config, method, a, tokenizer, pool, stream, train_examples, encode, counters, key, timer
                    )
                    n = config.rollout.samples_per_prompt
                    width = batching.bucket(rollout["prompt_ids_np"].shape[1], PROMPT_BUCKET,
                                            config.rollout.max_prompt_len)
                    seqs = batching.build_sequences(
                        rollout["prompt_ids_np"], rollout["prompt_mask_np"], rollout["response_ids_np"],
                        rollout["response_mask_np"], rollout["logprobs_np"], prompt_width=width, ok_n=ok_n,
                    )
                    group_ids_n = np.repeat(np.arange(len(rewards_n) // n), n).astype(np.int32)
                    step_batch = _batch_for_estimator(config, a, seqs, rewards_n, group_ids_n, mesh, timer)
                    with timer("update"):
                        updates, critic_updates = update_agent(config, a, seqs, step_batch, step,
                                                               lambda x: _global(x, mesh, 1))
                    with timer("weight_sync"):
                        a.sampler.update_params(a.policy_params)
                    lengths = rollout["lengths_n"]
                    record.update(stats)
                    record.update(metrics_lib.mean_update_metrics(updates))
                    record.update({k.replace("loss/", "critic/", 1): v
                                   for k, v in metrics_lib.mean_update_metrics(critic_updates).items()})
                    record.update({
                        "reward/mean": float(rewards_n.mean()), "reward/std": float(rewards_n.std()),
                        "response/length_mean": float(lengths.mean()),
                        "response/truncated_frac": float(np.mean([f == "length" for f in rollout["finish_reasons"]])),
                        **{f"reward/{k}": float(np.nanmean(v)) for k, v in components.items()},
                    })
                    trained = int(seqs.valid_nt.sum())
                    forward = trained * (int(config.algorithm.recompute_old_logprobs) + int(a.ref_params is not None)
                                         + int(a.has_critic))  # + the critic's value pass
                    trained_passes = config.algorithm.epochs * (1 + int(a.critic_step is not None))
                    if step % max(config.logging.samples_every, 1) == 0:
                        texts = _texts(rollout, tokenizer)
                        writer.write_samples(step, [
                            {"prompt": examples_n[i].get("prompt", ""), "response": texts[i],
                             "reward": float(rewards_n[i])}
                            for i in range(min(config.logging.samples_per_log, len(examples_n)))
                        ])
                record.update({"data/epoch": float(stream.epoch), "data/prompts_truncated": float(counters.truncated),
                               "data/prompts_dropped": float(counters.dropped)})
                record.update(timer.metrics())
                record.update(metrics_lib.throughput_metrics(
                    tokens=trained, step_seconds=record["time/step_s"], num_devices=jax.device_count(),
                    train_flops=metrics_lib.model_flops(num_params, trained * trained_passes, forward),
                    device_kind=jax.devices()[0].device_kind,
                ))
                writer.write(step, record)
                history.append(record)
                progress.update(record)
                last = step == config.train.steps
                if config.train.eval_every and step % config.train.eval_every == 0 and not last:
                    writer.write(step, evaluate(config, method, agent, tokenizer, pool, eval_examples, encode,
                                                counters), kind="eval")
                if (config.checkpoint.every and step % config.checkpoint.every == 0) or last:
                    save(step)
                if stop.should_stop() and not last:
                    save(step)
                    stopped_early = True
                    log.warning("stopping at step %d on a signal; checkpoint saved", step)
                    break
            eval_after = {}
            if not stopped_early:
                eval_after = evaluate(config, method, agent, tokenizer, pool, eval_examples, encode, counters)
                writer.write(config.train.steps, eval_after, kind="eval")
    finally:
        progress.close()
        ckpt.close()
        writer.close()
    if is_main and not stopped_early:
        if eval_before and eval_after:
            print(metrics_lib.eval_table(eval_before, eval_after))
        if config.logging.report:
            metrics_lib.write_report(workdir, title=f"{config.method} · {config.model.spec}")
    return RunResult(workdir, step, history, eval_before, eval_after, stopped_early)
