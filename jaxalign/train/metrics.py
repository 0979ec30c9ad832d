"""Run observability: per-phase timers, throughput/MFU, metrics.jsonl + TensorBoard, samples.jsonl, a tqdm
progress bar with live reward/KL/throughput, and the end-of-run PNG report with a before/after eval table.

Only process 0 writes files; every process may time phases.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import time
from typing import Any, Iterable, Mapping

from jaxalign.train.checkpoint import is_local, workdir_path

# bf16 dense peak FLOP/s per device (vendor figures), for MFU in the loop and the benchmarks; matched in
# order against the device kind. Unknown devices (e.g. CPU) report no MFU.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops_per_device(device_kind: str) -> float | None:
    """Peak bf16 FLOP/s of a device kind string such as 'NVIDIA H100 80GB HBM3' or 'TPU v5p'."""
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


class PhaseTimer:
    """Wall-clock seconds per named phase within one step: `with timer("generate"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}_s": v for k, v in self.seconds.items()}
        out["time/step_s"] = sum(self.seconds.values())
        return out


def throughput_metrics(
    *, tokens: int, step_seconds: float, num_devices: int, train_flops: float, device_kind: str
) -> dict[str, float]:
    """tokens/s, tokens/s/device (= tokens / (step time x devices)) and MFU of the whole step.

    `train_flops` counts the FLOPs the step spends in model passes (6N per trained token, 2N per token of
    each forward-only pass); MFU divides it by step time x devices x peak.
    """
    per_s = tokens / max(step_seconds, 1e-9)
    out = {"perf/tokens_per_s": per_s, "perf/tokens_per_s_per_device": per_s / num_devices}
    peak = peak_flops_per_device(device_kind)
    if peak is not None:
        out["perf/mfu"] = train_flops / (max(step_seconds, 1e-9) * num_devices * peak)
    return out


def model_flops(num_params: int, trained_tokens: int, forward_tokens: int) -> float:
    """FLOPs of the model passes of a step: 6N per trained token, 2N per token of a forward-only pass."""
    return 6.0 * num_params * trained_tokens + 2.0 * num_params * forward_tokens


def mean_update_metrics(records: list[Mapping[str, float]]) -> dict[str, float]:
    """The mean over a step's updates (epochs x mini-batches) of each train-step metric, as `loss/<name>`."""
    return {f"loss/{k}": float(sum(r[k] for r in records) / len(records)) for k in records[0]} if records else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MetricsWriter:
    """Appends per-step metrics to `metrics.jsonl` (+ TensorBoard) and samples to `samples.jsonl`."""

    def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True, enabled: bool = True):
        self.workdir = workdir_path(workdir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _jsonable(v) for k, v in metrics.items()}}
        _append(self.workdir / "metrics.jsonl", json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if _is_number(value) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}" if kind != "train" else key, value, step)
            self._tb.flush()

    def write_samples(self, step: int, samples: Iterable[Mapping[str, Any]]) -> None:
        if not self.enabled:
            return
        _append(self.workdir / "samples.jsonl", "".join(
            json.dumps({"step": step, **{k: _jsonable(v) for k, v in sample.items()}}) + "\n" for sample in samples))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _append(path, text: str) -> None:
    """Appends to a file; object stores cannot append, so there the file is rewritten whole."""
    if is_local(path):
        with open(os.fspath(path), "a") as f:
            f.write(text)
    else:
        path.write_text((path.read_text() if path.exists() else "") + text)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of `metrics.jsonl`; records of steps after a resume point replace earlier duplicates."""
    path = workdir_path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    latest: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[(record["kind"], record["step"])] = record
    return sorted(latest.values(), key=lambda r: (r["step"], r["kind"]))


def truncate_metrics(workdir: str | os.PathLike, after_step: int) -> None:
    """Drops the records of steps past `after_step`: written after the checkpoint a run resumes from
    (-1 for a run that starts over because no checkpoint was saved), they will be written again."""
    path = workdir_path(workdir) / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in kept))


class Progress:
    """tqdm bar over training steps showing reward, KL and tokens/s; silent when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, metrics: Mapping[str, Any]) -> None:
        if self._bar is None:
            return
        shown = {}
        for key, value in metrics.items():  # `<agent>/reward/mean` per agent when there are several
            for suffix, label in (("reward/mean", "reward"), ("loss/kl", "kl"), ("sft/loss", "loss"),
                                  ("perf/tokens_per_s", "tok/s")):
                if (key == suffix or key.endswith("/" + suffix)) and _is_number(value):
                    shown[key[: -len(suffix)] + label] = f"{value:.3g}"
        self._bar.set_postfix(shown)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def eval_table(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    """A plain-text before/after table of eval metrics."""
    keys = sorted(set(before) | set(after))
    width = max([len(k) for k in keys] + [6])
    lines = [f"{'metric':<{width}}  {'before':>10}  {'after':>10}  {'change':>10}"]
    for key in keys:
        b, a = before.get(key, float("nan")), after.get(key, float("nan"))
        lines.append(f"{key:<{width}}  {b:>10.4f}  {a:>10.4f}  {a - b:>+10.4f}")
    return "\n".join(lines)


REPORT_CURVES = ("reward/mean", "loss/kl", "loss/entropy", "response/length_mean", "perf/tokens_per_s",
                 "rollout/failed", "episode/parse_rate", "episode/label_acc", "episode/ftr",
                 "sft/loss", "sft/grad_norm", "sft/learning_rate")
HIDDEN_WHEN_ZERO = ("loss/kl",)  # a run without a KL term gets no flat-zero KL panel


def _bucketed_eval_keys(evals: list[Mapping[str, Any]]) -> dict[str, list[str]]:
    """`eval/<name>_q<i>` keys grouped by name, i in order (a per-quintile eval quantity, one panel each)."""
    found: dict[str, dict[int, str]] = {}
    for key in sorted({k for r in evals for k in r if _is_number(r.get(k))}):
        match = re.fullmatch(r"eval/(.+)_q(\d+)", key)
        if match:
            found.setdefault(match.group(1), {})[int(match.group(2))] = key
    return {name: [by_q[q] for q in sorted(by_q)] for name, by_q in found.items() if len(by_q) >= 2}


def write_report(workdir: str | os.PathLike, title: str = ""):
    """Draws reward and key metric curves plus the eval table into `<workdir>/report.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not train:
        return None
    keys = sorted({k for r in train for k in r})
    curves = [k for base in REPORT_CURVES for k in keys  # `<agent>/<metric>` per agent when there are several
              if (k == base or k.endswith("/" + base)) and any(_is_number(r.get(k)) for r in train)
              and not (base in HIDDEN_WHEN_ZERO and all(not r.get(k) for r in train))]
    bucketed = _bucketed_eval_keys(evals)
    panels = len(curves) + len(bucketed) + (1 if len(evals) >= 2 else 0)
    cols = min(3, max(panels, 1))
    rows = math.ceil(max(panels, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, key in zip(flat, curves):
        points = [(r["step"], r[key]) for r in train if _is_number(r.get(key))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax, (name, keys_q) in zip(flat[len(curves):], bucketed.items()):
        shown = [evals[0], evals[-1]] if len(evals) >= 2 else evals
        for record in shown:
            ax.plot(range(1, len(keys_q) + 1), [record.get(k, float("nan")) for k in keys_q], marker="o",
                    label=f"step {record['step']}")
        ax.set_title(f"eval/{name} by value quintile")
        ax.set_xlabel("value quintile (1 = lowest)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if len(evals) >= 2:
        ax = flat[len(curves) + len(bucketed)]
        ax.axis("off")
        before = {k: v for k, v in evals[0].items() if _is_number(v) and k != "step"}
        after = {k: v for k, v in evals[-1].items() if _is_number(v) and k != "step"}
        ax.set_title(f"eval: step {evals[0]['step']} -> {evals[-1]['step']}")
        ax.text(0, 1, eval_table(before, after), family="monospace", fontsize=8, va="top")
    for ax in flat[panels:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = workdir_path(workdir) / "report.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    out.write_bytes(buffer.getvalue())
    return out
