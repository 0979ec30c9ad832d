"""Comparing finished runs (`jaxalign compare RUN [RUN ...]`): the final evals of several runs, the seeds
of one setting grouped (mean ± sample sd, n), one table of the method's metrics, the difference of each
group to a baseline group with Welch's t-test over the seeds, and for a method with two objectives
(GTAlign's user and LLM welfare) the Pareto view: dominance counts, 2-D hypervolume, ε-coverage and a
scatter plot.

A run directory holds `config.json` (the config in force), `metrics.jsonl` (its final eval is the `eval`
record at step `train.steps`) and, when a resume changed the config, `config_history.jsonl`. Which metrics a
method's table shows is the method's own declaration (`Method.compare_spec`, a `CompareSpec`), looked up by
the run's `config.method`; a method without one gets every `eval/*` metric by name.

Only NumPy is imported here (methods import `CompareMetric`/`CompareSpec`); SciPy (the t distribution) and
matplotlib load when used.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import logging
import math
import os
import pathlib
import textwrap
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CompareMetric:
    """One column of a method's compare table: the eval metric `key` (without `eval/`), its `label`,
    whether higher is better (None: neither, e.g. a length) and the decimals shown."""

    key: str
    label: str
    higher_is_better: bool | None = True
    digits: int = 3


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    """What `jaxalign compare` shows for a method: its table's metrics in order and, optionally, a pair of
    metric keys (x, y), both higher-is-better, whose trade-off gets the Pareto view."""

    metrics: tuple[CompareMetric, ...]
    pareto: tuple[str, str] | None = None


# Config fields that do not define a setting: the seed (what the seeds of one setting vary), when a run
# evaluated, checkpointed and logged, the device layout and the number of reward worker processes. A field
# ending in "." is a whole section. Every other field, `train.steps` included, must match within a group.
NOT_SETTING_FIELDS = ("seed", "train.eval_every", "train.eval_at_start", "train.skip_memory_check", "checkpoint.", "logging.", "mesh.", "rewards.num_workers")
DEFAULT_REF_POINT = (0.0, 0.0)  # below every welfare a reply can get (an unparsed reply scores 0)
DEFAULT_EPSILON = 0.01
DEFAULT_ALPHA = 0.05
OUT_FILES = ("compare.md", "compare.json", "pareto.png")


def _usage_error(message: str) -> Exception:
    from jaxalign.commands import UsageError

    return UsageError(message)


# -- reading runs --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run's final eval: `metrics` are the `eval/*` values without the prefix (non-finite ones
    left out); `config` is `config.json` as a plain dict; `changes` lists the setting fields a resume
    changed (`config_history.jsonl`), as "step N: field old → new"."""

    path: str
    config: Mapping[str, Any]
    metrics: Mapping[str, float]
    step: int
    changes: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return str(self.config.get("method", ""))

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


def config_fields(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every field of a plain config dict by dotted name (a list or an empty section is one field), as
    `jaxalign.runs.config_changes` names them."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(config_fields(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_setting_field(field: str) -> bool:
    return not any(field == f or (f.endswith(".") and field.startswith(f)) for f in NOT_SETTING_FIELDS)


def _number(value: Any) -> float | None:
    """A metric value as a finite float (metrics.jsonl writes NaN and inf as strings), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def load_run(path: str | os.PathLike) -> Run:
    """The final eval and config of the run in `path`; a `UsageError` that names the path and what is
    missing when it is not a finished run."""
    from jaxalign.runs import CONFIG_FILE, HISTORY_FILE
    from jaxalign.train.checkpoint import workdir_path
    from jaxalign.train.metrics import read_metrics

    text = os.fspath(path)
    directory = workdir_path(text)
    if not directory.exists():
        raise _usage_error(f"run {text} does not exist; pass run directories (each with config.json and "
                           "metrics.jsonl)")
    if not directory.is_dir():
        raise _usage_error(f"run {text} is a file, not a run directory")
    config_file = directory / CONFIG_FILE
    if not config_file.exists():
        raise _usage_error(f"{text} is not a jaxalign run directory: it has no {CONFIG_FILE}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise _usage_error(f"{text}/{CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or not config.get("method"):
        raise _usage_error(f"{text}/{CONFIG_FILE} names no method (a run's config has a 'method' field)")
    steps = config.get("train", {}).get("steps") if isinstance(config.get("train"), dict) else None
    if not isinstance(steps, int):
        raise _usage_error(f"{text}/{CONFIG_FILE} has no train.steps, so its final eval cannot be told")
    try:
        evals = [r for r in read_metrics(directory) if r.get("kind") == "eval"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise _usage_error(f"{text}/metrics.jsonl is not a jaxalign metrics file ({e!r})") from None
    final = [r for r in evals if r["step"] == steps]
    if not final:
        seen = (f"its last eval is at step {evals[-1]['step']}" if evals else "metrics.jsonl has no eval record")
        raise _usage_error(f"run {text} has no final eval (at train.steps={steps}; {seen}): it stopped early, is "
                           "still running or failed; rerun `jaxalign train` on it to finish it")
    metrics = {key[len("eval/"):]: value for key, raw in final[0].items()
               if key.startswith("eval/") and (value := _number(raw)) is not None}
    changes = []
    history = directory / HISTORY_FILE
    if history.exists():
        for number, line in enumerate(history.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                changes += [f"step {entry['step']}: {c['field']} {json.dumps(c['old'])} \u2192 {json.dumps(c['new'])}"
                            for c in entry["changes"] if c["field"] != "train.steps" and _is_setting_field(c["field"])]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise _usage_error(f"{text}/{HISTORY_FILE} line {number} is not a config-history entry "
                                   f"({e!r})") from None
    return Run(text, config, metrics, steps, tuple(changes))


# -- grouping ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Group:
    label: str
    runs: tuple[Run, ...]


def _show_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _setting(run: Run) -> dict[str, Any]:
    return {f: v for f, v in config_fields(run.config).items() if _is_setting_field(f)}


def _differing(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The fields whose values are not the same in all of `settings` (absent counts as a value)."""
    fields = sorted(set().union(*settings)) if settings else []
    return [f for f in fields
            if len({json.dumps(s[f], sort_keys=True) if f in s else "(absent)" for s in settings}) > 1]


def group_runs(runs: Sequence[Run], *, group_by: Sequence[str] = (), labels: Sequence[str | None] = ()
               ) -> list[Group]:
    """Groups runs in order of first appearance.

    With `labels` (one per run), runs of the same label form a group. With `group_by` (dotted config
    fields), runs with the same values of those fields do. Otherwise runs whose configs are equal but for
    `NOT_SETTING_FIELDS` (and whose resumes changed the same setting fields) do, labelled by the fields in
    which the groups differ. A group whose runs differ in more than the seed is logged as a warning."""
    if labels and any(label is not None for label in labels):
        keys: list[Any] = list(labels)
        names = {label: label for label in labels}
    elif group_by:
        keys = []
        for run in runs:
            fields = config_fields(run.config)
            missing = [f for f in group_by if f not in fields]
            if missing:
                section = missing[0].rsplit(".", 1)[0] + "." if "." in missing[0] else ""
                near = sorted(f for f in fields if f.startswith(section)) if section else sorted(
                    {f.split(".")[0] for f in fields})
                raise _usage_error(f"--group-by {missing[0]}: run {run.path} has no such config field; "
                                   f"fields there: {', '.join(near[:40])}")
            keys.append(tuple(_show_value(fields[f]) for f in group_by))
        names = {key: ", ".join(f"{f}={v}" for f, v in zip(group_by, key)) for key in keys}
    else:
        settings = [_setting(run) for run in runs]
        keys = [(json.dumps(s, sort_keys=True), run.changes) for s, run in zip(settings, runs)]
        firsts = {}
        for key, setting in zip(keys, settings):
            firsts.setdefault(key, setting)
        differing = _differing(list(firsts.values()))
        names = {}
        for key, setting in firsts.items():
            parts = [f"{f}={_show_value(setting[f]) if f in setting else '(absent)'}" for f in differing[:3]]
            if len(differing) > 3:
                parts.append(f"+{len(differing) - 3} more fields")
            if key[1] and len({k[1] for k in firsts}) > 1:
                parts.append("config changed on resume")
            names[key] = ", ".join(parts)
        if len(firsts) == 1:
            names = {key: "all runs" if len(runs) > 1 else pathlib.PurePath(runs[0].path).name for key in firsts}
    order: dict[Any, list[Run]] = {}
    for key, run in zip(keys, runs):
        order.setdefault(key, []).append(run)
    counts = collections.Counter(names[key] for key in order)
    for key, members in order.items():  # an empty or shared label gets its first run's directory name
        if not names[key] or counts[names[key]] > 1:
            first = pathlib.PurePath(members[0].path).name
            names[key] = f"{names[key]} ({first})" if names[key] else first
    groups = [Group(names[key], tuple(members)) for key, members in order.items()]
    for group in groups:
        inside = _differing([_setting(run) for run in group.runs])
        if group_by:
            inside = [f for f in inside if f not in group_by]
        if inside:
            log.warning("group %r: its runs differ in more than the seed: %s", group.label, ", ".join(inside[:10]))
    return groups


# -- statistics ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n − 1; NaN for n < 2) of one metric over a group's runs."""

    mean: float
    sd: float
    n: int
    values: tuple[float, ...]


def summarize(values: Iterable[float]) -> Summary:
    values = tuple(float(v) for v in values)
    if not values:
        return Summary(float("nan"), float("nan"), 0, ())
    array = np.asarray(values, np.float64)
    sd = float(array.std(ddof=1)) if len(array) > 1 else float("nan")
    return Summary(float(array.mean()), sd, len(values), values)


@dataclasses.dataclass(frozen=True)
class Difference:
    """`group − baseline` of one metric with Welch's t-test: standard error `se` = √(s_a²/n_a + s_b²/n_b),
    t = diff / se, Welch–Satterthwaite degrees of freedom and the two-sided p-value. t, df and p are NaN
    when a group has fewer than two runs."""

    diff: float
    se: float
    t: float
    df: float
    p: float

    def exceeds_spread(self, alpha: float) -> bool:
        return bool(self.p < alpha)  # False for NaN


def welch(group: Summary, baseline: Summary) -> Difference:
    nan = float("nan")
    diff = group.mean - baseline.mean
    if group.n < 2 or baseline.n < 2:
        return Difference(diff, nan, nan, nan, nan)
    va, vb = group.sd ** 2 / group.n, baseline.sd ** 2 / baseline.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # no spread in either group: any difference exceeds it
        df = float(group.n + baseline.n - 2)
        return Difference(diff, 0.0, 0.0 if diff == 0 else math.copysign(math.inf, diff), df,
                          1.0 if diff == 0 else 0.0)
    from scipy import stats

    df = (va + vb) ** 2 / (va ** 2 / (group.n - 1) + vb ** 2 / (baseline.n - 1))
    t = diff / se
    return Difference(diff, se, t, df, float(2.0 * stats.t.sf(abs(t), df)))


# -- the Pareto view -----------------------------------------------------------------------------------------


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """p Pareto-dominates q (both objectives maximised): no worse in both and better in one."""
    return p[0] >= q[0] and p[1] >= q[1] and (p[0] > q[0] or p[1] > q[1])


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def hypervolume_2d(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """The area dominated by `points` and bounded below by `ref` (points not above `ref` in both add
    nothing): a sweep over the points by decreasing x, adding each new height's strip."""
    inside = sorted(((x, y) for x, y in points if x > ref[0] and y > ref[1]), reverse=True)
    area, height = 0.0, ref[1]
    for x, y in inside:
        if y > height:
            area += (x - ref[0]) * (y - height)
            height = y
    return area


def epsilon_coverage(points: Sequence[Sequence[float]], front: Sequence[Sequence[float]], epsilon: float) -> float:
    """The share of `front`'s points that some point of `points` reaches within `epsilon` in both objectives
    (q ≥ p − ε)."""
    if not len(front):
        return float("nan")
    covered = [any(q[0] >= p[0] - epsilon and q[1] >= p[1] - epsilon for q in points) for p in front]
    return float(np.mean(covered))


def epsilon_indicator(points: Sequence[Sequence[float]], front: Sequence[Sequence[float]]) -> float:
    """The smallest ε for which `points` ε-cover all of `front` (the additive ε-indicator)."""
    if not len(points) or not len(front):
        return float("nan")
    return float(max(min(max(p[0] - q[0], p[1] - q[1]) for q in points) for p in front))


# -- the comparison ------------------------------------------------------------------------------------------


def spec_of(method: str) -> CompareSpec | None:
    """The method's `compare_spec` (None for a method without one); an unknown method is a usage error."""
    from jaxalign.methods import METHODS

    if method not in METHODS:
        raise _usage_error(f"the runs' method {method!r} is not a known method ({', '.join(sorted(METHODS))})")
    return METHODS[method].compare_spec


def table_metrics(spec: CompareSpec | None, runs: Sequence[Run], *, show_all: bool = False) -> list[CompareMetric]:
    """The declared metrics present in at least one run (a metric a version of the method did not log is
    left out), then, without a declaration or with `show_all`, every other eval metric by name."""
    present = set().union(*(run.metrics for run in runs))
    declared = [m for m in (spec.metrics if spec else ()) if m.key in present]
    if spec is None or show_all:
        known = {m.key for m in declared}
        declared += [CompareMetric(key, key, None) for key in sorted(present - known)]
    return declared


def compare(runs: Sequence[Run], *, group_by: Sequence[str] = (), labels: Sequence[str | None] = (),
            baseline: str | None = None, ref_point: Sequence[float] = DEFAULT_REF_POINT,
            epsilon: float = DEFAULT_EPSILON, alpha: float = DEFAULT_ALPHA, show_all: bool = False) -> dict:
    """The comparison of `runs` as a JSON-able dict: `method`, `metrics` (the columns), `groups` (label,
    runs, per metric mean/sd/n/values), `baseline` and `differences` (each other group − the baseline, per
    metric diff/se/t/df/p/exceeds_spread) and, when the method declares a Pareto pair, `pareto`."""
    if not runs:
        raise _usage_error("name at least one run directory")
    methods = {run.method for run in runs}
    if len(methods) > 1:
        by_method = {m: [run.path for run in runs if run.method == m] for m in sorted(methods)}
        raise _usage_error("the runs are of different methods (" + "; ".join(
            f"{m}: {', '.join(paths)}" for m, paths in by_method.items()) + "); compare runs of one method")
    method = runs[0].method
    spec = spec_of(method)
    metrics = table_metrics(spec, runs, show_all=show_all)
    if not metrics:
        raise _usage_error(f"the final evals of {', '.join(r.path for r in runs)} hold no finite eval metric")
    groups = group_runs(runs, group_by=group_by, labels=labels)
    summaries = [{m.key: summarize(r.metrics[m.key] for r in g.runs if m.key in r.metrics) for m in metrics}
                 for g in groups]
    out: dict[str, Any] = {
        "method": method,
        "metrics": [dataclasses.asdict(m) for m in metrics],
        "groups": [{"label": g.label,
                    "runs": [{"path": r.path, "seed": r.seed, "step": r.step, "config_changes": list(r.changes)}
                             for r in g.runs],
                    "metrics": {k: dataclasses.asdict(s) for k, s in summary.items()}}
                   for g, summary in zip(groups, summaries)],
        "alpha": alpha,
    }
    labels_seen = [g.label for g in groups]
    if baseline is not None and baseline not in labels_seen:
        raise _usage_error(f"--baseline {baseline!r} is not a group; the groups: {', '.join(labels_seen)}")
    if len(groups) > 1:
        base = labels_seen.index(baseline) if baseline is not None else 0
        out["baseline"] = labels_seen[base]
        out["differences"] = [
            {"group": g.label, "metrics": {m.key: _difference(summary[m.key], summaries[base][m.key], alpha)
                                           for m in metrics}}
            for i, (g, summary) in enumerate(zip(groups, summaries)) if i != base]
    if spec is not None and spec.pareto is not None:
        out["pareto"] = pareto_view(groups, spec, ref_point=ref_point, epsilon=epsilon)
    return out


def _difference(group: Summary, baseline: Summary, alpha: float) -> dict:
    difference = welch(group, baseline)
    return {**dataclasses.asdict(difference), "exceeds_spread": difference.exceeds_spread(alpha)}


def pareto_view(groups: Sequence[Group], spec: CompareSpec, *, ref_point: Sequence[float], epsilon: float) -> dict:
    """Each run is a point (x, y) of the spec's Pareto pair; the reference front is the runs no run
    dominates. Per group: its runs on the front, the runs of other groups one of its runs dominates, its
    runs a run of another group dominates, the hypervolume of each run (mean ± sd) and of its runs
    together, the ε-coverage of the front and the ε-indicator."""
    x_key, y_key = spec.pareto
    points, owner = [], []
    for index, group in enumerate(groups):
        for run in group.runs:
            if x_key in run.metrics and y_key in run.metrics:
                points.append((run.metrics[x_key], run.metrics[y_key]))
                owner.append(index)
            else:
                log.warning("run %s has no final %s and %s; it is left out of the Pareto view", run.path, x_key, y_key)
    front_index = pareto_front(points)
    front = [points[i] for i in front_index]
    rows = []
    for index, group in enumerate(groups):
        mine = [p for p, o in zip(points, owner) if o == index]
        others = [p for p, o in zip(points, owner) if o != index]
        rows.append({
            "label": group.label,
            "n": len(mine),
            "points": [list(p) for p in mine],
            "on_front": sum(owner[i] == index for i in front_index),
            "dominates": sum(any(dominates(p, q) for p in mine) for q in others),
            "dominated": sum(any(dominates(q, p) for q in others) for p in mine),
            "hypervolume_per_run": dataclasses.asdict(summarize(hypervolume_2d([p], ref_point) for p in mine)),
            "hypervolume": hypervolume_2d(mine, ref_point),
            "epsilon_coverage": epsilon_coverage(mine, front, epsilon),
            "epsilon_indicator": epsilon_indicator(mine, front),
        })
    return {"x": x_key, "y": y_key, "reference_point": list(ref_point), "epsilon": epsilon,
            "front": [list(p) for p in front], "hypervolume_all": hypervolume_2d(points, ref_point), "groups": rows}


# -- output --------------------------------------------------------------------------------------------------


def _cell(summary: Mapping[str, Any], digits: int, runs: int) -> str:
    if summary["n"] == 0:
        return "–"
    text = f"{summary['mean']:.{digits}f}"
    if summary["n"] > 1:
        text += f" ± {summary['sd']:.{digits}f}"
    return text + (f" [{summary['n']}/{runs}]" if summary["n"] < runs else "")


def _fixed(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(f"{str(c):<{w}}" for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def format_comparison(result: Mapping[str, Any]) -> str:
    """The comparison as Markdown text: the table, the differences, the Pareto view and the runs."""
    metrics = result["metrics"]
    groups = result["groups"]
    by_key = {m["key"]: m for m in metrics}
    count = sum(len(g["runs"]) for g in groups)
    parts = [f"{result['method']}: {count} run{'s' * (count != 1)} in {len(groups)} "
             f"group{'s' * (len(groups) != 1)}; final evals, mean ± sample sd over a group's runs (n − 1), "
             "[k/n] where only k runs have the metric", ""]
    parts.append(_markdown(["group", "n", *[m["label"] for m in metrics]],
                           [[g["label"], str(len(g["runs"])),
                             *[_cell(g["metrics"][m["key"]], m["digits"], len(g["runs"])) for m in metrics]]
                            for g in groups]))
    if "differences" in result:
        parts += ["", f"difference to {result['baseline']!r} (group − baseline) and the two-sided p of Welch's "
                  f"t-test over the runs; a difference marked * exceeds the seed spread (p < {result['alpha']:g}), "
                  "better or worse by the metric's direction; n/a: fewer than 2 runs in a group", ""]
        rows = []
        for entry in result["differences"]:
            cells = []
            for m in metrics:
                d = entry["metrics"][m["key"]]
                if d["diff"] is None or not math.isfinite(d["diff"]):
                    cells.append("–")
                    continue
                text = f"{d['diff']:+.{m['digits']}f}"
                if d["p"] is None or not math.isfinite(d["p"]):
                    cells.append(text + " (n/a)")
                    continue
                text += f" (p={d['p']:.2g})"
                if d["exceeds_spread"]:
                    better = m["higher_is_better"]
                    text += " *" + ("" if better is None else " better" if (d["diff"] > 0) == better else " worse")
                cells.append(text)
            rows.append([entry["group"], *cells])
        parts.append(_markdown(["group", *[m["label"] for m in metrics]], rows))
    if "pareto" in result:
        view = result["pareto"]
        x_label = by_key[view["x"]]["label"] if view["x"] in by_key else view["x"]
        y_label = by_key[view["y"]]["label"] if view["y"] in by_key else view["y"]
        ref, eps = view["reference_point"], view["epsilon"]
        parts += ["", f"Pareto view of ({x_label}, {y_label}), each run a point, both higher-is-better; front: the "
                  f"{len(view['front'])} run(s) no run dominates. dominates: runs of other groups one of its runs "
                  f"dominates; dominated: its runs a run of another group dominates; HV: area dominated above the "
                  f"reference point ({ref[0]:g}, {ref[1]:g}), per run (mean ± sd) and of its runs together (all "
                  f"runs: {view['hypervolume_all']:.4f}); ε-cover: share of the front within ε = {eps:g} of one of "
                  "its runs; ε needed: the smallest ε that covers the whole front", ""]
        rows = []
        for row in view["groups"]:
            per_run = row["hypervolume_per_run"]
            rows.append([row["label"], str(row["n"]), f"{row['on_front']}/{row['n']}", str(row["dominates"]),
                         str(row["dominated"]), _cell(per_run, 4, row["n"]) if per_run["n"] else "–",
                         f"{row['hypervolume']:.4f}",
                         _fixed(row["epsilon_coverage"], 2), _fixed(row["epsilon_indicator"], 4)])
        parts.append(_markdown(["group", "n", "on front", "dominates", "dominated", "HV per run", "HV together",
                                "ε-cover", "ε needed"], rows))
    parts = [textwrap.fill(part, 110) if not part.startswith("|") else part for part in parts]
    parts += ["", "runs:"]
    for g in groups:
        runs = ", ".join(f"{r['path']} (seed {r['seed']})" for r in g["runs"])
        parts.append(f"  {g['label']}: {runs}")
        for r in g["runs"]:
            for change in r["config_changes"]:
                parts.append(f"    {r['path']} changed its config on a resume: {change}")
    return "\n".join(parts)


def _jsonable(value: Any) -> Any:
    """NaN and inf become null (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def plot_pareto(result: Mapping[str, Any], path: str | os.PathLike) -> None:
    """The Pareto view as a PNG scatter: each run a small point, each group's mean a large one with its
    sample sd as error bars, the reference front as a step line and the reference point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    view = result["pareto"]
    by_key = {m["key"]: m["label"] for m in result["metrics"]}
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    for index, row in enumerate(view["groups"]):
        if not row["points"]:
            continue
        color = f"C{index % 10}"
        xs, ys = np.asarray(row["points"]).T
        ax.scatter(xs, ys, color=color, s=22, alpha=0.6)
        sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
        ax.errorbar([xs.mean()], [ys.mean()], xerr=[sd(xs)], yerr=[sd(ys)], color=color, marker="D", markersize=8,
                    capsize=3, label=f"{row['label']} (n={row['n']})")
    front = sorted(view["front"])
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="pre", color="0.4", linestyle="--", linewidth=1, label="front (all runs)")
    ref = view["reference_point"]
    ax.scatter([ref[0]], [ref[1]], color="black", marker="x", label=f"reference point ({ref[0]:g}, {ref[1]:g})")
    ax.set_xlabel(by_key.get(view["x"], view["x"]))
    ax.set_ylabel(by_key.get(view["y"], view["y"]))
    ax.set_title(f"{result['method']}: final evals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    pathlib.Path(path).write_bytes(buffer.getvalue())


# -- the `jaxalign compare` command --------------------------------------------------------------------------


def _parse_run_args(items: Sequence[str]) -> tuple[list[str], list[str | None]]:
    """`DIR` or `LABEL=DIR` (an existing directory named with '=' is a path); labels for all runs or none."""
    paths, labels = [], []
    for item in items:
        label, eq, path = item.partition("=")
        if eq and not os.path.exists(item):
            if not label or not path:
                raise _usage_error(f"run {item!r}: write LABEL=DIR with a label and a directory")
            paths.append(path)
            labels.append(label)
        else:
            paths.append(item)
            labels.append(None)
    if any(labels) and not all(labels):
        unlabelled = [p for p, label in zip(paths, labels) if label is None]
        raise _usage_error(f"label every run (LABEL=DIR) or none; unlabelled: {', '.join(unlabelled)}")
    return paths, labels


def _parse_ref_point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise _usage_error(f"--ref-point {text!r}: write two numbers X,Y, e.g. --ref-point 0,0") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise _usage_error(f"--ref-point {text!r}: both numbers must be finite")
    return x, y


def cmd_compare(args: argparse.Namespace, config_spec: Any = None, overrides: Any = None) -> int:
    """Prints the comparison (Markdown, or JSON with --json); with --out also writes compare.md,
    compare.json and, for a method with a Pareto view, pareto.png there."""
    paths, labels = _parse_run_args(args.runs)
    if args.group_by and any(labels):
        raise _usage_error("use either LABEL=DIR runs or --group-by, not both")
    if not args.epsilon >= 0:
        raise _usage_error(f"--epsilon {args.epsilon}: must be >= 0")
    if not 0 < args.alpha < 1:
        raise _usage_error(f"--alpha {args.alpha}: must be between 0 and 1")
    out_dir = pathlib.Path(args.out) if args.out else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise _usage_error(f"--out {args.out} is a file; pass a directory (created if missing)")
    group_by = [f.strip() for spec in args.group_by for f in spec.split(",") if f.strip()]
    seen: dict[str, str] = {}
    for path in paths:
        resolved = os.path.realpath(path) if "://" not in path else path
        if resolved in seen:
            raise _usage_error(f"run {path} is named twice (also as {seen[resolved]}); name each run once")
        seen[resolved] = path
    runs = [load_run(path) for path in paths]
    result = compare(runs, group_by=group_by, labels=labels, baseline=args.baseline,
                     ref_point=_parse_ref_point(args.ref_point), epsilon=args.epsilon, alpha=args.alpha,
                     show_all=args.all)
    text = format_comparison(result)
    data = json.dumps(_jsonable(result), indent=2)
    print(data if args.json else text)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare.md").write_text(text + "\n")
        (out_dir / "compare.json").write_text(data + "\n")
        written = ["compare.md", "compare.json"]
        if "pareto" in result:
            plot_pareto(result, out_dir / "pareto.png")
            written.append("pareto.png")
        log.info("wrote %s to %s", ", ".join(written), out_dir)
    return 0


def add_compare_command(subparsers: "argparse._SubParsersAction", parents: Sequence[argparse.ArgumentParser]
                        ) -> None:
    """Adds `compare` to the `jaxalign` subcommands."""
    p = subparsers.add_parser(
        "compare", parents=list(parents), help="compare the final evals of runs (seeds grouped, mean ± sd)",
        description="Reads each run's final eval (the eval at train.steps in metrics.jsonl) and prints one "
                    "table of the method's metrics, mean ± sample sd over the runs of each group. Runs whose "
                    "configs are equal but for the seed (and " + ", ".join(
                        f + "*" if f.endswith(".") else f for f in NOT_SETTING_FIELDS[1:]) + ") form a "
                    "group, unless --group-by or LABEL=DIR runs say otherwise. With several groups, each one's "
                    "difference to the baseline group with the p-value of Welch's t-test over the runs. GTAlign "
                    "runs also get the Pareto view of user and LLM welfare: dominance counts, hypervolume against "
                    "--ref-point, ε-coverage of the front and, with --out, pareto.png.",
        epilog="examples:\n  jaxalign compare runs/rlev_s0 runs/rlev_s1 runs/base_s0 runs/base_s1\n"
               "  jaxalign compare rlev=runs/a rlev=runs/b baseline=runs/c --baseline baseline --out cmp/\n"
               "  jaxalign compare runs/gtalign_* --group-by gtalign.reward --json")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="a run directory, or LABEL=DIR to name its group (runs with one label form a group; "
                        "label all runs or none)")
    p.add_argument("--group-by", action="append", default=[], metavar="FIELD[,FIELD]",
                   help="group by these config fields (dotted, e.g. rlev.reward) instead of the whole config")
    p.add_argument("--baseline", metavar="LABEL", help="the group the others are compared with (default: the first)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help="a difference exceeds the seed spread when Welch's two-sided p is below this")
    p.add_argument("--ref-point", default=",".join(f"{v:g}" for v in DEFAULT_REF_POINT), metavar="X,Y",
                   help="hypervolume reference point of the Pareto view (default: 0,0, below every welfare)")
    p.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON,
                   help="the ε of the Pareto view's ε-coverage, in the metrics' units")
    p.add_argument("--all", action="store_true", help="also show every other eval metric of the runs")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of the table")
    p.add_argument("--out", metavar="DIR",
                   help="also write compare.md, compare.json and (Pareto view) pareto.png into DIR")
    p.set_defaults(fn=cmd_compare)
