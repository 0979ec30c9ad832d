"""Supervised fine-tuning (`jaxalign sft`): next-token loss on the assistant turns of chat conversations,
and starting a policy from a run's weights (`model.init_from`).

The SFT run reuses the RL machinery: its one agent (`config.sft_agent_spec`) is built by
`train.agents.build_agents`, so it has the same train state, shardings and compiled `train_step`, with the
loss "sft" of `algorithms.losses.POLICY_LOSSES` (-log p of each token) and "token_mean" aggregation over
the assistant mask: the step's loss is the mean cross-entropy of every assistant token of the batch.
Checkpoints (`state_tree`), `metrics.jsonl`, TensorBoard, the progress bar and `report.png` are those of
the RL loop, so `jaxalign export` and `jaxalign eval --workdir` work on an SFT run.

Batches (no cross-example attention): one conversation per row, right-padded; attention is causal over
each row's valid tokens only, so a conversation never sees another one. The padded width is the batch's
longest conversation rounded up to a bucket width (32, 48, 64, 96, 128, ... : powers of two and their
1.5 multiples, capped at `sft.max_len`), which bounds both the padding (at most a third) and the number
of compiled shapes. Each epoch shuffles the conversations with `(seed, epoch)`, sorts every pool of
`sft.bucket_batches` batches by length, cuts it into batches and shuffles the batches; a last partial
batch is filled with copies of one of its conversations that carry no loss. The data position is one
integer (batches consumed), saved in the checkpoint, so a resume continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config import ConfigError, ExperimentConfig

log = logging.getLogger(__name__)

MIN_BUCKET = 32
SFT_BATCH_KEYS = ("tokens", "valid", "positions", "loss_mask", "loss_weights", "advantages", "old_logp")


# ---------------------------------------------------------------------------------------------------------
# Data: encoded conversations, the held-out split, length buckets and the batch plan.


@dataclasses.dataclass
class EncodedSet:
    """Tokenised conversations: `ids[i]` int32 and `mask[i]` float32 (1 on trained assistant tokens)."""

    ids: list[np.ndarray]
    mask: list[np.ndarray]
    truncated: int = 0  # cut to max_len (kept)
    dropped: int = 0  # too long ("drop"), or no assistant token left after the cut

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], np.int64)

    def __len__(self) -> int:
        return len(self.ids)


def encode_set(tokenizer, conversations: Sequence[Sequence[dict]], names: Sequence[str], *, max_len: int,
               overlong: str) -> EncodedSet:
    """Encodes conversations (`jaxalign.data.chat.encode_conversation`) with the overlong policy:
    "truncate" keeps the first `max_len` tokens, "drop" leaves the conversation out; a cut that keeps no
    assistant token drops it too. Every cut and drop is counted."""
    from jaxalign.data.chat import encode_conversation

    out = EncodedSet([], [])
    for messages, name in zip(conversations, names):
        ids, mask = encode_conversation(tokenizer, messages, name)
        if len(ids) > max_len:
            if overlong == "drop":
                out.dropped += 1
                continue
            ids, mask = ids[:max_len], mask[:max_len]
            if not any(mask):
                out.dropped += 1
                continue
            out.truncated += 1
        out.ids.append(np.asarray(ids, np.int32))
        out.mask.append(np.asarray(mask, np.float32))
    return out


def split_indices(num: int, *, eval_fraction: float, eval_examples: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) indices of `num` conversations: `eval_examples` (or round(eval_fraction * num)) drawn
    at random with `seed`, each part in source order."""
    count = eval_examples if eval_examples > 0 else int(round(eval_fraction * num))
    if count >= num:
        raise ConfigError(f"the held-out split takes {count} of the {num} conversations, leaving none to train "
                          "on; lower sft.eval_examples or sft.eval_fraction")
    order = np.random.default_rng([seed, 0x5F7]).permutation(num)
    return np.sort(order[count:]), np.sort(order[:count])


def bucket_width(length: int, cap: int) -> int:
    """The padded width of a batch whose longest row has `length` tokens: the first of 32, 48, 64, 96,
    128, 192, ... (powers of two and their 1.5 multiples) that holds it, at most `cap`."""
    width, step = MIN_BUCKET, MIN_BUCKET // 2
    while width < length:
        width += step
        if width & (width - 1) == 0:  # a power of two: the next width is 1.5 times it
            step = width // 2
    return min(width, cap)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, pool_batches: int
                  ) -> list[np.ndarray]:
    """The batches of `epoch` as index arrays of `batch_size` (-1 fills a last partial batch): a pure
    function of (lengths, batch_size, seed, epoch, pool_batches); see the module docstring."""
    rng = np.random.default_rng([seed, epoch, 0xB0C7])
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return [np.concatenate([b, np.full(batch_size - len(b), -1, b.dtype)]) for b in batches]


class BatchPlan:
    """Batches addressed by a global position (batches consumed so far) that survives restarts."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, pool_batches: int):
        if len(lengths) == 0:
            raise ConfigError("no training conversation is left (all were held out or dropped as too long); "
                              "check sft.data, sft.max_len and sft.overlong")
        self.lengths, self.batch_size, self.seed, self.pool_batches = lengths, batch_size, seed, pool_batches
        self.batches_per_epoch = math.ceil(len(lengths) / batch_size)
        self._epoch, self._batches = -1, []

    def batch(self, position: int) -> np.ndarray:
        epoch, index = divmod(position, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._batches = epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.pool_batches)
        return self._batches[index]


def batch_arrays(data: EncodedSet, indices: np.ndarray, *, max_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """[rows, width] `tokens`, `valid`, `positions`, `loss_mask` of the conversations `indices` (one per
    row, right-padded to the bucket width); a row of index -1 repeats the first conversation without
    loss."""
    from jaxalign.train.batching import positions_np

    real = [int(i) for i in indices if i >= 0]
    width = bucket_width(max(len(data.ids[i]) for i in real), max_len)
    rows = len(indices)
    tokens = np.full((rows, width), pad_id, np.int32)
    valid = np.zeros((rows, width), bool)
    loss_mask = np.zeros((rows, width), np.float32)
    for row, index in enumerate(indices):
        source = int(index) if index >= 0 else real[0]
        ids = data.ids[source]
        tokens[row, :len(ids)], valid[row, :len(ids)] = ids, True
        if index >= 0:
            loss_mask[row, :len(ids)] = data.mask[source]
    return {"tokens": tokens, "valid": valid, "positions": positions_np(valid), "loss_mask": loss_mask}


# ---------------------------------------------------------------------------------------------------------
# Steps and the eval loss.


def _put_rows(arrays: dict[str, np.ndarray], mesh) -> dict[str, Any]:
    from jaxalign.sharding import put_batch

    return {k: put_batch(v, mesh) for k, v in arrays.items()}


def sft_update(agent, arrays: dict[str, np.ndarray], *, micro_batches: int, mesh) -> dict[str, float]:
    """One optimizer step of `agent` (its `train_step` with the "sft" loss) on a host batch; returns the
    step's metrics. The loss weights are the token mean over the whole batch, so micro-batches and data
    shards add up to the full-batch gradient."""
    from jaxalign.sharding import to_host
    from jaxalign.train.learner import _minibatch, check_finite

    rows = arrays["tokens"].shape[0]
    host = dict(arrays, advantages=np.zeros(arrays["loss_mask"].shape, np.float32),
                old_logp=np.zeros(arrays["loss_mask"].shape, np.float32))
    device = _minibatch(_put_rows(host, mesh), jnp.arange(rows, dtype=jnp.int32), micro_batches=micro_batches,
                        aggregation="token_mean", constant=None, mesh=mesh)
    agent.state, metrics = agent.train_step(agent.state, {k: device[k] for k in SFT_BATCH_KEYS})
    metrics = {k: float(v) for k, v in to_host(metrics).items()}
    check_finite(metrics, int(agent.state.step), "SFT", agent.name)
    return metrics


def eval_loss(agent, data: EncodedSet, *, batch_size: int, max_len: int, pad_id: int, mesh) -> dict[str, float]:
    """Mean cross-entropy of every assistant token of `data` under the agent's policy (token mean over the
    whole set, as the training loss), batched by length."""
    from jaxalign.sharding import to_host

    if not len(data):
        return {"eval/conversations": 0.0}
    order = np.argsort(data.lengths, kind="stable")
    nll, tokens = 0.0, 0.0
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), -1, chunk.dtype)])
        arrays = batch_arrays(data, chunk, max_len=max_len, pad_id=pad_id)
        put = _put_rows({k: arrays[k] for k in ("tokens", "valid", "positions")}, mesh)
        logp, _ = agent.logprob_fn(agent.policy_params, put["tokens"], put["valid"], put["positions"])
        logp = np.asarray(to_host(logp), np.float64)
        nll -= float((logp * arrays["loss_mask"]).sum())
        tokens += float(arrays["loss_mask"].sum())
    return {"eval/loss": nll / max(tokens, 1.0), "eval/tokens": tokens, "eval/conversations": float(len(data))}


# ---------------------------------------------------------------------------------------------------------
# The run.


def load_sft_data(config: ExperimentConfig, tokenizer) -> tuple[EncodedSet, EncodedSet, dict[str, float]]:
    """(train, eval, report) of the `sft` section: loaded, checked, split, encoded with the overlong policy."""
    from jaxalign.data.chat import load_conversations

    sft = config.sft
    if tokenizer is None:
        raise ConfigError(f"model {config.model.spec!r} has no tokenizer; SFT needs its chat template")
    conversations = load_conversations(sft.data, messages_field=sft.messages_field, split=sft.split,
                                       seed=config.seed)
    train_idx, eval_idx = split_indices(len(conversations), eval_fraction=sft.eval_fraction,
                                        eval_examples=sft.eval_examples, seed=config.seed)

    def encode(indices):
        return encode_set(tokenizer, [conversations[i] for i in indices],
                          [f"sft.data conversation {i}" for i in indices], max_len=sft.max_len,
                          overlong=sft.overlong)

    train, held_out = encode(train_idx), encode(eval_idx)
    report = {"conversations": float(len(conversations)), "train": float(len(train)), "eval": float(len(held_out)),
              "truncated": float(train.truncated + held_out.truncated),
              "dropped": float(train.dropped + held_out.dropped),
              "train_tokens": float(train.lengths.sum()) if len(train) else 0.0,
              "train_assistant_tokens": float(sum(m.sum() for m in train.mask))}
    return train, held_out, report


def total_steps(config: ExperimentConfig, batches_per_epoch: int) -> int:
    """`sft.steps`, or `sft.epochs` passes over the training batches."""
    return config.sft.steps or config.sft.epochs * batches_per_epoch


def train_sft(config: ExperimentConfig, workdir: str | os.PathLike):
    """Runs (or resumes) the SFT run of `config` (kind "sft") in `workdir`; returns the loop's `RunResult`.

    Cadence as the RL loop: eval loss before training (a fresh run), every `sft.eval_every` steps and after
    the last step; checkpoints every `checkpoint.every` steps, at the end and on SIGTERM (then
    `stopped_early`); a rerun of a finished run trains and writes nothing (`already_finished`).
    """
    from jaxalign.algorithms.optim import make_schedule
    from jaxalign.sharding import make_mesh
    from jaxalign.train import metrics as metrics_lib
    from jaxalign.train.agents import build_agents, load_state_tree, state_tree
    from jaxalign.train.checkpoint import Checkpointer, StopSignal, abstract_like, workdir_path
    from jaxalign.train.loop import RunResult

    if config.kind != "sft" or config.sft is None:
        raise ConfigError("train_sft needs the config of an SFT run: from_config_dict(cd, kind='sft')")
    sft = config.sft
    workdir = workdir_path(workdir)
    is_main = jax.process_index() == 0
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    start = time.perf_counter()
    log.info("loading %s", config.model.spec)
    agents = build_agents(config, mesh, samplers=False)  # SFT generates nothing
    agent = agents[next(iter(agents))]
    log.info("model loaded in %.1f s", time.perf_counter() - start)
    train_set, eval_set, report = load_sft_data(config, agent.tokenizer)
    if is_main:
        log.info("SFT data: %s", {k: int(v) for k, v in report.items()})
    plan = BatchPlan(train_set.lengths, sft.batch_size, config.seed, sft.bucket_batches)
    steps = total_steps(config, plan.batches_per_epoch)
    pad_id = agent.tokenizer.pad_id
    eval_batch = sft.eval_batch_size or sft.batch_size
    schedule = make_schedule(agent.spec.optim.optim_config())

    ckpt = Checkpointer(workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    start_step, position = 0, 0
    restored = ckpt.restore_latest(abstract_like(state_tree(agents)))
    previous = metrics_lib.read_metrics(workdir)
    if restored is not None:
        start_step, tree, meta = restored
        evals = [r for r in previous if r["kind"] == "eval"]
        if start_step >= steps and any(r["step"] == start_step for r in evals):
            ckpt.close()
            log.info("already finished at step %d (%d steps); nothing to do. Raise --config.sft.steps or "
                     "--config.sft.epochs to continue it", start_step, steps)
            pick = lambda r: {k: v for k, v in r.items() if k.startswith("eval/")}  # noqa: E731
            return RunResult(workdir, start_step, [], pick(evals[0]) if evals else {},
                             pick(evals[-1]) if evals else {}, False, already_finished=True)
        load_state_tree(agents, tree)
        position = int(meta["data_position"])
        log.info("resumed from step %d (data position %d)", start_step, position)
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=config.logging.tensorboard, enabled=is_main)
    if restored is not None:
        if is_main:
            metrics_lib.truncate_metrics(workdir, start_step)
    elif is_main:
        metrics_lib.truncate_metrics(workdir, -1)
        (workdir / "config.json").write_text(config.to_json())

    def evaluate(when: str) -> dict[str, float]:
        log.info("eval %s: %d held-out conversations", when, len(eval_set))
        begin = time.perf_counter()
        out = eval_loss(agent, eval_set, batch_size=eval_batch, max_len=sft.max_len, pad_id=pad_id, mesh=mesh)
        seconds = time.perf_counter() - begin
        log.info("eval %s done in %.1f s%s", when, seconds,
                 f": loss {out['eval/loss']:.4f}" if "eval/loss" in out else "")
        return {**out, "time/eval_s": seconds}

    def save(step: int) -> None:
        ckpt.save(step, state_tree(agents), {"step": step, "data_position": position, "kind": "sft"}, config.raw)

    history: list[dict] = []
    stopped_early = False
    step = start_step
    progress = metrics_lib.Progress(steps, start_step, config.logging.progress and is_main)
    data_counts = {"data/truncated": float(train_set.truncated), "data/dropped": float(train_set.dropped)}
    try:
        with StopSignal() as stop:
            if restored is None:
                eval_before = evaluate("before training (the first one compiles)")
                writer.write(0, eval_before, kind="eval")
            else:
                first = next((r for r in previous if r["kind"] == "eval"), {})
                eval_before = {k: v for k, v in first.items() if k.startswith("eval/")}
            if start_step < steps:
                log.info("SFT steps %d-%d (%d batches of %d per epoch); the first step of each padded width "
                         "compiles", start_step + 1, steps, plan.batches_per_epoch, sft.batch_size)
            for step in range(start_step + 1, steps + 1):
                timer = metrics_lib.PhaseTimer()
                with timer("data"):
                    indices = plan.batch(position)
                    arrays = batch_arrays(train_set, indices, max_len=sft.max_len, pad_id=pad_id)
                with timer("update"):
                    metrics = sft_update(agent, arrays, micro_batches=sft.micro_batches, mesh=mesh)
                position += 1
                seconds = sum(timer.seconds.values())
                valid_tokens = int(arrays["valid"][indices >= 0].sum())
                record = {"sft/loss": metrics["loss"], "sft/entropy": metrics["entropy"],
                          "sft/tokens": metrics["tokens"], "sft/grad_norm": metrics["grad_norm"],
                          "sft/learning_rate": float(schedule(step - 1)),
                          "sft/width": float(arrays["tokens"].shape[1]),
                          "sft/padding_frac": 1.0 - valid_tokens / arrays["valid"].size,
                          "data/epoch": float((position - 1) // plan.batches_per_epoch), **data_counts,
                          **timer.metrics(),
                          **metrics_lib.throughput_metrics(
                              tokens=valid_tokens, step_seconds=seconds, num_devices=jax.device_count(),
                              train_flops=metrics_lib.model_flops(agent.num_params, valid_tokens, 0),
                              device_kind=jax.devices()[0].device_kind)}
                writer.write(step, record)
                history.append(record)
                progress.update(record)
                last = step == steps
                if sft.eval_every and step % sft.eval_every == 0 and not last:
                    writer.write(step, evaluate(f"at step {step}"), kind="eval")
                if (config.checkpoint.every and step % config.checkpoint.every == 0) or last:
                    save(step)
                if stop.should_stop() and not last:
                    save(step)
                    stopped_early = True
                    log.warning("stopping at step %d on a signal; checkpoint saved", step)
                    break
            eval_after = {}
            if not stopped_early:
                eval_after = evaluate("after training")
                writer.write(steps, eval_after, kind="eval")
    finally:
        progress.close()
        ckpt.close()
        writer.close()
    pick = lambda r: {k: v for k, v in r.items() if k.startswith("eval/")}  # noqa: E731
    eval_before, eval_after = pick(eval_before), pick(eval_after)
    if is_main and not stopped_early:
        if eval_before and eval_after:
            print(metrics_lib.eval_table(eval_before, eval_after))
        if config.logging.report:
            metrics_lib.write_report(workdir, title=f"sft · {config.model.spec}")
    return RunResult(workdir, step, history, eval_before, eval_after, stopped_early)


# ---------------------------------------------------------------------------------------------------------
# Starting a policy from a run (`model.init_from`).


def _run_agents(saved: dict) -> list[str]:
    """The agent names of a run from its saved config."""
    if saved.get("run_kind") != "sft" and isinstance(saved.get("agents"), dict) and saved["agents"]:
        return list(saved["agents"])
    return ["policy"]


def check_init_from(workdir: str, what: str = "model.init_from") -> None:
    """A `ConfigError` unless `workdir` is a run directory with a checkpoint (reads small files only)."""
    from jaxalign.train.checkpoint import saved_steps, workdir_path

    path = workdir_path(workdir)
    if not path.is_dir():
        raise ConfigError(f"{what}={workdir!r} is not a directory; give the --workdir of a jaxalign sft (or train) "
                          "run")
    if not (path / "config.json").exists():
        raise ConfigError(f"{what}={workdir!r} is not a jaxalign run directory (no config.json)")
    if not saved_steps(path):
        raise ConfigError(f"{what}={workdir!r} has no checkpoint; run `jaxalign sft --workdir={workdir}` "
                          "(or train) to the end first")


def _flat(tree) -> dict[str, tuple[int, ...]]:
    """'a/b/c' path -> shape of every array leaf (nnx.State and orbax metadata alike; '/value' dropped)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if names and names[-1] == "value":
            names = names[:-1]
        out["/".join(names)] = tuple(leaf.shape)
    return out


def init_from_run(model, workdir: str, *, agent: str = "policy", spec: str = "", what: str = "model.init_from"
                  ) -> int:
    """Replaces the weights of `model` (in place, keeping its dtypes and shardings) with the policy weights
    of the latest checkpoint of the run in `workdir`; returns that checkpoint's step.

    The run's agent of the same name is used, or its only agent. A run whose policy has other tensors or
    shapes than `model` (another architecture or size) is a `ConfigError` naming the first differences; a
    run trained from another model `spec` of the same shapes is loaded with a warning (tokenizers may differ).
    """
    import orbax.checkpoint as ocp
    from flax import nnx

    from jaxalign.train.checkpoint import saved_steps, workdir_path

    check_init_from(workdir, what)
    path = workdir_path(workdir)
    saved = json.loads((path / "config.json").read_text())
    names = _run_agents(saved)
    source = agent if agent in names else names[0] if len(names) == 1 else None
    if source is None:
        raise ConfigError(f"{what}={workdir!r} has agents {', '.join(names)} and none is named {agent!r}")
    step = saved_steps(path)[-1]
    state_dir = path / "checkpoints" / str(step) / "state"
    try:
        tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
        saved_params = tree["agents"][source]["params"]
    except Exception as e:  # an unreadable or foreign checkpoint
        raise ConfigError(f"{what}={workdir!r}: its checkpoint at step {step} is unreadable ({type(e).__name__}: "
                          f"{e})") from None
    keys = ("agents", source, "params")
    if isinstance(saved_params, dict) and "policy" in saved_params and "value_head" in saved_params:
        saved_params, keys = saved_params["policy"], keys + ("policy",)  # a policy with a shared value head
    params = nnx.state(model)
    theirs, ours = _flat(saved_params), _flat(params)
    if theirs and all("lora" in k.split("/") for k in theirs):
        raise ConfigError(f"{what}={workdir!r} trained LoRA adapters only (its checkpoints hold no base weights); "
                          "start from a run with full fine-tuning (lora.rank=0)")
    if theirs != ours:
        spec = saved.get("model", {}).get("spec", "?")
        diffs = [f"{k}: {list(theirs[k]) if k in theirs else 'absent'} there, "
                 f"{list(ours[k]) if k in ours else 'absent'} here"
                 for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        raise ConfigError(f"{what}={workdir!r} holds a policy of another architecture (its model.spec {spec!r}): "
                          + "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
                          + ". Start from a run of the same model")
    from jaxalign.train.checkpoint import abstract_like

    item: Any = abstract_like(params)
    for key in reversed(keys):
        item = {key: item}
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                               partial_restore=True))
    for key in keys:
        restored = restored[key]
    nnx.update(model, restored)
    their_spec = saved.get("model", {}).get("spec", "")
    log.info("%s: the policy weights of %s (step %d; trained from %s)", what, workdir, step, their_spec)
    if spec and their_spec and their_spec != spec:
        log.warning("%s: %s was trained from model %r, this run loads %r: same shapes, but make sure the two share "
                    "a tokenizer", what, workdir, their_spec, spec)
    return step
