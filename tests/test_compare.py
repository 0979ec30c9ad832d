"""`jaxalign compare`: fake finished runs in the real layout (config.json from the real config files,
metrics.jsonl written by the run's own writer), checked against values computed by hand in the comments:
mean ± sample sd, grouping (config, --group-by, labels, resumes), Welch's t-test, the Pareto view's
dominance counts, hypervolume and ε-coverage, the PNG, and the exit codes of bad input."""

import json
import math
import pathlib

import pytest

from jaxalign import cli, compare
from jaxalign.commands import EXIT_USAGE
from jaxalign.config import apply_overrides, from_config_dict, load_config_file
from jaxalign.train.metrics import MetricsWriter

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config_json(config_file: str, overrides: dict) -> str:
    cd = apply_overrides(load_config_file(str(ROOT / "configs" / config_file)), overrides)
    return from_config_dict(cd, num_devices=8).to_json()


def _make_run(path, config_file, overrides, final_eval, *, steps=4, history=None, final=True):
    """A run directory as `jaxalign train` leaves it: config.json, and metrics.jsonl with the eval before
    training, train records and (when `final`) the eval at train.steps."""
    path = pathlib.Path(path)
    path.mkdir(parents=True)
    (path / "config.json").write_text(_config_json(config_file, {"train.steps": str(steps), **overrides}))
    writer = MetricsWriter(path, tensorboard=False)
    writer.write(0, {f"eval/{k}": 0.0 for k in final_eval} | {"time/eval_s": 1.0}, kind="eval")
    for step in range(1, steps + 1):
        writer.write(step, {"reward/mean": 0.1 * step})
    if final:
        writer.write(steps, {f"eval/{k}": v for k, v in final_eval.items()} | {"time/eval_s": 1.0}, kind="eval")
    if history:
        (path / "config_history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return str(path)


def _rlev(tmp_path, name, seed, acc, h_acc, **overrides):
    final = {"acc": acc, "h_acc": h_acc, "resp_length": 20.0, "value_density": h_acc / 20.0,
             "acc_top20_value": acc, "acc_bottom20_value": acc, "verifier_failed": 0.0}
    return _make_run(tmp_path / name, "rlev_smollm2_demo.py", {"seed": str(seed), **overrides}, final)


def _main(capsys, *args):
    code = cli.main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_mean_and_sample_sd_per_group_and_the_grouping_by_config(tmp_path, capsys):
    # Three seeds of the RLEV reward (which also differ in checkpoint cadence: not a setting field), two
    # of the correctness reward. acc 30, 34, 38: mean 34, sd sqrt((16 + 0 + 16) / 2) = 4. h_acc 20, 21, 25:
    # mean 22, sd sqrt((4 + 1 + 9) / 2) = sqrt(7) = 2.6458. Correctness: acc 30, 32 -> 31 ± sqrt(2) = 1.4142.
    runs = [_rlev(tmp_path, "h0", 0, 30.0, 20.0),
            _rlev(tmp_path, "c0", 0, 30.0, 18.0, **{"rlev.reward": "correctness"}),
            _rlev(tmp_path, "h1", 1, 34.0, 21.0, **{"checkpoint.every": "1"}),
            _rlev(tmp_path, "c1", 1, 32.0, 18.0, **{"rlev.reward": "correctness"}),
            _rlev(tmp_path, "h2", 2, 38.0, 25.0, **{"logging.progress": "true"})]
    code, out, err = _main(capsys, *runs, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == "rlev"
    labels = [g["label"] for g in result["groups"]]
    assert labels == ["rlev.reward=human", "rlev.reward=correctness"]
    human, correct = result["groups"]
    assert [pathlib.Path(r["path"]).name for r in human["runs"]] == ["h0", "h1", "h2"]
    assert [r["seed"] for r in human["runs"]] == [0, 1, 2]
    assert [pathlib.Path(r["path"]).name for r in correct["runs"]] == ["c0", "c1"]
    assert human["metrics"]["acc"]["mean"] == pytest.approx(34.0)
    assert human["metrics"]["acc"]["sd"] == pytest.approx(4.0)
    assert human["metrics"]["acc"]["n"] == 3
    assert human["metrics"]["h_acc"]["mean"] == pytest.approx(22.0)
    assert human["metrics"]["h_acc"]["sd"] == pytest.approx(2.6457513)
    assert correct["metrics"]["acc"]["mean"] == pytest.approx(31.0)
    assert correct["metrics"]["acc"]["sd"] == pytest.approx(1.4142136)
    assert correct["metrics"]["h_acc"]["sd"] == 0.0
    # The declared columns in the declared order; metrics the runs did not log (the slope) are left out.
    assert [m["key"] for m in result["metrics"]] == ["acc", "h_acc", "resp_length", "value_density",
                                                     "acc_top20_value", "acc_bottom20_value"]
    assert "pareto" not in result

    code, out, err = _main(capsys, *runs)  # the table: Acc 34.0 ± 4.0 (one decimal, as declared)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| rlev.reward=human "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["rlev.reward=human", "3", "34.0 ± 4.0", "22.0 ± 2.6"]
    assert "--all" not in out and "verifier_failed" not in out
    code, out, _ = _main(capsys, *runs, "--all")
    assert "verifier_failed" in out


def test_group_by_and_labels_and_a_resume_that_changed_the_setting(tmp_path, capsys):
    a = _rlev(tmp_path, "a", 0, 30.0, 20.0)
    b = _rlev(tmp_path, "b", 1, 32.0, 22.0, **{"optim.learning_rate": "2e-5"})
    c = _rlev(tmp_path, "c", 0, 20.0, 10.0, **{"rlev.reward": "correctness"})
    # The whole config: three settings, labelled by the two fields in which they differ.
    result = compare.compare([compare.load_run(p) for p in (a, b, c)])
    assert [len(g["runs"]) for g in result["groups"]] == [1, 1, 1]
    assert result["groups"][0]["label"] == "optim.learning_rate=1e-05, rlev.reward=human"
    # --group-by rlev.reward puts a and b together: acc (30 + 32) / 2 = 31 ± sqrt(2).
    code, out, err = _main(capsys, a, b, c, "--group-by", "rlev.reward", "--json")
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert [g["label"] for g in groups] == ["rlev.reward=human", "rlev.reward=correctness"]
    assert groups[0]["metrics"]["acc"]["mean"] == pytest.approx(31.0)
    assert groups[0]["metrics"]["acc"]["sd"] == pytest.approx(math.sqrt(2.0))
    # Labels: c and a in one group named "x", b alone.
    code, out, err = _main(capsys, f"x={c}", f"y={b}", f"x={a}", "--json")
    assert code == 0, err
    groups = json.loads(out)["groups"]
    assert [(g["label"], len(g["runs"])) for g in groups] == [("x", 2), ("y", 1)]
    assert groups[0]["metrics"]["acc"]["mean"] == pytest.approx(25.0)  # (20 + 30) / 2
    # A resume that accepted a learning-rate change makes another setting; one that only ran longer does not.
    changed = {"step": 2, "time": "t", "changes": [{"field": "optim.learning_rate", "old": 2e-5, "new": 1e-5}]}
    longer = {"step": 2, "time": "t", "changes": [{"field": "train.steps", "old": 2, "new": 4}]}
    d = _make_run(tmp_path / "d", "rlev_smollm2_demo.py", {"seed": "1"}, {"acc": 40.0}, history=[changed])
    e = _make_run(tmp_path / "e", "rlev_smollm2_demo.py", {"seed": "2"}, {"acc": 50.0}, history=[longer])
    result = compare.compare([compare.load_run(p) for p in (a, d, e)])
    assert [[pathlib.Path(r["path"]).name for r in g["runs"]] for g in result["groups"]] == [["a", "e"], ["d"]]
    assert [g["label"] for g in result["groups"]] == ["a", "config changed on resume"]
    assert "optim.learning_rate" in compare.format_comparison(result)


def test_welch_difference_against_hand_values():
    # Two runs each with equal spread: Welch's df is exactly 2, where the t distribution has the closed form
    # P(|T| > t) = 1 - t / sqrt(2 + t^2).
    # acc: 31, 33 vs 28, 30: diff 3, se sqrt(2/2 + 2/2) = sqrt(2), t = 2.12132, p = 1 - 2.12132/sqrt(6.5) = 0.16795.
    d = compare.welch(compare.summarize([31.0, 33.0]), compare.summarize([28.0, 30.0]))
    assert (d.diff, d.se, d.t, d.df) == pytest.approx((3.0, math.sqrt(2.0), 2.1213203, 2.0))
    assert d.p == pytest.approx(0.16795, abs=1e-5)
    assert not d.exceeds_spread(0.05)
    # 20, 21 vs 10, 11: diff 10, se sqrt(0.25 + 0.25), t = 14.142, p = 1 - 14.142/sqrt(202) = 0.0049630.
    d = compare.welch(compare.summarize([20.0, 21.0]), compare.summarize([10.0, 11.0]))
    assert d.t == pytest.approx(14.142136)
    assert d.p == pytest.approx(0.0049630, abs=1e-6)
    assert d.exceeds_spread(0.05)
    # Unequal sizes: 30, 34, 38 (var 16) vs 30, 32 (var 2): se = sqrt(16/3 + 2/2) = 2.5166, t = 1.19208,
    # df = (16/3 + 1)^2 / ((16/3)^2 / 2 + 1^2 / 1) = 40.111 / 15.222 = 2.6350.
    d = compare.welch(compare.summarize([30.0, 34.0, 38.0]), compare.summarize([30.0, 32.0]))
    assert (d.diff, d.se, d.t, d.df) == pytest.approx((3.0, 2.5166115, 1.1920791, 2.6350365))
    # One run in a group: no spread to test against.
    d = compare.welch(compare.summarize([30.0]), compare.summarize([28.0, 30.0]))
    assert d.diff == 1.0 and math.isnan(d.p) and not d.exceeds_spread(0.05)
    # No spread at all: any difference exceeds it.
    d = compare.welch(compare.summarize([2.0, 2.0]), compare.summarize([1.0, 1.0]))
    assert d.p == 0.0 and d.exceeds_spread(0.05)


def test_differences_in_the_cli(tmp_path, capsys):
    a0, a1 = _rlev(tmp_path, "a0", 0, 31.0, 20.0), _rlev(tmp_path, "a1", 1, 33.0, 21.0)
    b0 = _rlev(tmp_path, "b0", 0, 28.0, 10.0, **{"rlev.reward": "correctness"})
    b1 = _rlev(tmp_path, "b1", 1, 30.0, 11.0, **{"rlev.reward": "correctness"})
    code, out, err = _main(capsys, a0, a1, b0, b1, "--baseline", "rlev.reward=correctness", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["baseline"] == "rlev.reward=correctness"
    (diff,) = result["differences"]
    assert diff["group"] == "rlev.reward=human"
    assert diff["metrics"]["acc"]["p"] == pytest.approx(0.16795, abs=1e-5)
    assert diff["metrics"]["acc"]["exceeds_spread"] is False
    assert diff["metrics"]["h_acc"]["diff"] == pytest.approx(10.0)
    assert diff["metrics"]["h_acc"]["exceeds_spread"] is True
    assert diff["metrics"]["resp_length"]["p"] == 1.0  # the same length everywhere: no spread, no difference
    code, out, err = _main(capsys, a0, a1, b0, b1, "--baseline", "rlev.reward=correctness")
    row = [line for line in out.splitlines() if line.startswith("| rlev.reward=human")][1]  # the differences
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "+3.0 (p=0.17)"
    assert cells[2] == "+10.0 (p=0.005) * better"
    code, _, err = _main(capsys, a0, b0, "--baseline", "nope")
    assert code == EXIT_USAGE and "--baseline 'nope' is not a group" in err


# The Pareto view (GTAlign): points (U, L) per run, computed by hand.
#   group welfare: a = (0.6, 0.5), b = (0.5, 0.6); group user: c = (0.7, 0.2), d = (0.4, 0.4); group llm: e = (0.2, 0.7)
#   front (no run dominates them): a, b, c, e; d is dominated by a and b.
#   dominates: welfare 1 (d), user 0, llm 0.   dominated: welfare 0, user 1 (d), llm 0.
#   hypervolume against (0, 0): per run a, b 0.30 (mean 0.30 ± 0); c 0.14, d 0.16 (0.15 ± 0.0141); e 0.14.
#     together: welfare 0.30 + 0.30 - 0.5 * 0.5 = 0.35; user 0.14 + 0.16 - 0.4 * 0.2 = 0.22; llm 0.14;
#     all runs: 0.7*0.2 + 0.6*(0.5-0.2) + 0.5*(0.6-0.5) + 0.2*(0.7-0.6) = 0.14 + 0.18 + 0.05 + 0.02 = 0.39.
#   against (0.3, 0.3): a, b 0.06 each, together 0.06 + 0.06 - 0.2 * 0.2 = 0.08; c, e 0; d 0.01; all 0.08.
#   ε-coverage of the 4 front points with ε = 0.05: welfare covers a, b (c needs U >= 0.65, e needs L >= 0.65):
#     0.5; user covers c: 0.25; llm covers e: 0.25. With ε = 0.1 welfare covers all four (a ~ c, b ~ e): 1.0.
#   ε needed: welfare max(0, 0, min(0.1, 0.2), min(0.2, 0.1)) = 0.1; user max(0.2, 0.2, 0, 0.3) = 0.3;
#     llm max(0.4, 0.3, 0.5, 0) = 0.5.
PARETO_RUNS = {"a": ("welfare", 0.6, 0.5), "b": ("welfare", 0.5, 0.6), "c": ("user", 0.7, 0.2),
               "d": ("user", 0.4, 0.4), "e": ("llm", 0.2, 0.7)}


def _gtalign_runs(tmp_path):
    paths = []
    for seed, (name, (reward, u, l)) in enumerate(PARETO_RUNS.items()):
        final = {"user_welfare": u, "llm_welfare": l, "welfare": math.sqrt(u * l), "format": 100.0, "parsed": 100.0,
                 "answer": 50.0, "length": 64.0, "answer_math": 50.0}
        paths.append(_make_run(tmp_path / name, "gtalign_smollm2_demo.py",
                               {"seed": str(seed), "gtalign.reward": reward}, final))
    return paths


def test_pareto_view_against_hand_values(tmp_path, capsys):
    runs = _gtalign_runs(tmp_path)
    code, out, err = _main(capsys, *runs, "--epsilon", "0.05", "--json")
    assert code == 0, err
    result = json.loads(out)
    view = result["pareto"]
    assert (view["x"], view["y"], view["reference_point"]) == ("user_welfare", "llm_welfare", [0.0, 0.0])
    assert sorted(map(tuple, view["front"])) == [(0.2, 0.7), (0.5, 0.6), (0.6, 0.5), (0.7, 0.2)]
    rows = {row["label"]: row for row in view["groups"]}
    assert list(rows) == ["gtalign.reward=welfare", "gtalign.reward=user", "gtalign.reward=llm"]
    welfare, user, llm = rows.values()
    assert [(r["n"], r["on_front"], r["dominates"], r["dominated"]) for r in (welfare, user, llm)] == [
        (2, 2, 1, 0), (2, 1, 0, 1), (1, 1, 0, 0)]
    assert welfare["hypervolume_per_run"]["mean"] == pytest.approx(0.30)
    assert welfare["hypervolume_per_run"]["sd"] == pytest.approx(0.0, abs=1e-12)
    assert user["hypervolume_per_run"]["mean"] == pytest.approx(0.15)
    assert user["hypervolume_per_run"]["sd"] == pytest.approx(math.sqrt(2.0) / 100)  # |0.14 - 0.16| / sqrt(2)
    assert [r["hypervolume"] for r in (welfare, user, llm)] == pytest.approx([0.35, 0.22, 0.14])
    assert view["hypervolume_all"] == pytest.approx(0.39)
    assert [r["epsilon_coverage"] for r in (welfare, user, llm)] == pytest.approx([0.5, 0.25, 0.25])
    assert [r["epsilon_indicator"] for r in (welfare, user, llm)] == pytest.approx([0.1, 0.3, 0.5])
    # The GTAlign table: U and L means, e.g. welfare U (0.6 + 0.5) / 2 = 0.55 ± 0.0707.
    assert result["groups"][0]["metrics"]["user_welfare"]["mean"] == pytest.approx(0.55)
    assert result["groups"][0]["metrics"]["user_welfare"]["sd"] == pytest.approx(0.0707107)
    assert result["differences"][0]["group"] == "gtalign.reward=user"

    code, out, err = _main(capsys, *runs, "--ref-point", "0.3,0.3", "--epsilon", "0.1", "--json")
    assert code == 0, err
    view = json.loads(out)["pareto"]
    rows = {row["label"]: row for row in view["groups"]}
    assert [r["hypervolume"] for r in rows.values()] == pytest.approx([0.08, 0.01, 0.0])
    assert view["hypervolume_all"] == pytest.approx(0.08)
    assert rows["gtalign.reward=welfare"]["epsilon_coverage"] == pytest.approx(1.0)


def test_pareto_helpers_on_small_hand_cases():
    assert compare.dominates((1, 1), (1, 0)) and not compare.dominates((1, 1), (1, 1))
    assert not compare.dominates((2, 0), (1, 1))
    assert compare.pareto_front([(1, 1), (2, 0), (0.5, 0.5), (1, 1)]) == [0, 1, 3]
    # Two rectangles [0, 2] x [0, 1] and [0, 1] x [0, 3] overlap in [0, 1] x [0, 1]: 2 + 3 - 1 = 4.
    assert compare.hypervolume_2d([(2, 1), (1, 3)], (0, 0)) == pytest.approx(4.0)
    assert compare.hypervolume_2d([(2, 1), (-1, 3)], (0, 0)) == pytest.approx(2.0)  # below the reference: nothing
    assert compare.hypervolume_2d([], (0, 0)) == 0.0


def test_out_writes_the_table_the_json_and_the_png(tmp_path, capsys):
    runs = _gtalign_runs(tmp_path)
    out_dir = tmp_path / "cmp"
    code, out, err = _main(capsys, *runs, "--out", out_dir)
    assert code == 0, err
    assert (out_dir / "compare.md").read_text().strip() == out.strip()
    assert json.loads((out_dir / "compare.json").read_text())["method"] == "gtalign"
    png = (out_dir / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    import matplotlib.image

    image = matplotlib.image.imread(str(out_dir / "pareto.png"))
    assert image.shape[0] > 300 and image.shape[1] > 400
    assert "Pareto view of (U, L)" in out
    # A method without a Pareto pair writes no PNG.
    rlev_out = tmp_path / "cmp_rlev"
    code, _, err = _main(capsys, _rlev(tmp_path, "r0", 0, 30.0, 20.0), "--out", rlev_out)
    assert code == 0, err
    assert sorted(p.name for p in rlev_out.iterdir()) == ["compare.json", "compare.md"]


def test_a_method_without_a_declaration_gets_every_eval_metric(tmp_path, capsys):
    run = _make_run(tmp_path / "toy", "tiny_test.py", {}, {"zeta": 2.0, "alpha": 1.0})
    code, out, err = _main(capsys, run, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [m["key"] for m in result["metrics"]] == ["alpha", "zeta"]
    assert result["groups"][0]["metrics"]["zeta"]["mean"] == 2.0


def _one_line_usage_error(code, err, *fragments):
    assert code == EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxalign compare: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    good = _rlev(tmp_path, "good", 0, 30.0, 20.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_usage_error(*_main(capsys, good, empty)[::2], str(empty), "not a jaxalign run directory",
                          "config.json")
    _one_line_usage_error(*_main(capsys, tmp_path / "missing")[::2], "missing does not exist")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _one_line_usage_error(*_main(capsys, a_file)[::2], "is a file, not a run directory")
    stopped = _make_run(tmp_path / "stopped", "rlev_smollm2_demo.py", {}, {"acc": 1.0}, steps=6, final=False)
    _one_line_usage_error(*_main(capsys, good, stopped)[::2], "stopped", "no final eval", "train.steps=6",
                          "last eval is at step 0")
    gt = _gtalign_runs(tmp_path)[0]
    _one_line_usage_error(*_main(capsys, good, gt)[::2], "different methods", "rlev: ", "gtalign: ",
                          str(gt))
    _one_line_usage_error(*_main(capsys, good, "--group-by", "rlev.rewrd")[::2], "--group-by rlev.rewrd",
                          "rlev.reward")
    _one_line_usage_error(*_main(capsys, f"x={good}", gt)[::2], "label every run")
    _one_line_usage_error(*_main(capsys, good, good)[::2], "named twice")
    _one_line_usage_error(*_main(capsys, gt, "--ref-point", "0")[::2], "--ref-point", "X,Y")


def test_the_declared_columns_are_metrics_the_methods_log():
    """Every column a method declares is a metric its eval produces (a renamed metric must not vanish from
    `jaxalign compare` silently)."""
    import numpy as np

    from jaxalign.methods import METHODS
    from jaxalign.methods.gtalign.config import FEATURES
    from jaxalign.methods.rlev.rewards import eos_value_metrics, rlev_metrics
    from jaxalign.methods.waltzrl.rewards import waltz_metrics

    n = 4
    gtalign = METHODS["gtalign"]({}).eval_metrics({k: np.ones(n) for k in FEATURES},
                                                  [{"data_source": "math"}] * n, np.full(n, 10.0))
    eos = np.full((n, 3), 0.1)
    values = np.array([0.1, 0.2, 0.3, 0.4])
    rlev = {**rlev_metrics(np.ones(n), values, np.full(n, 3.0)),
            **eos_value_metrics(eos, np.ones((n, 3), bool), values)}
    flags = np.array([True, False, True, False])
    waltz = waltz_metrics(harmful_prompt=flags, c0_unsafe=flags, c0_overrefuse=~flags, final_unsafe=flags,
                          final_overrefuse=~flags, feedback_valid=flags, feedback_unsafe=flags,
                          feedback_overrefuse=~flags)
    for name, logged in (("gtalign", gtalign), ("rlev", rlev), ("waltzrl", waltz)):
        declared = [m.key for m in METHODS[name].compare_spec.metrics]
        assert set(declared) <= set(logged), (name, sorted(set(declared) - set(logged)))
    assert set(METHODS["gtalign"].compare_spec.pareto) <= set(gtalign)
