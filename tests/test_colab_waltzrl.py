"""The WaltzRL notebook's Python cells run as written (shell and install lines are skipped): its tiny setup
trains both agents through the two stages and prints the curves' values and the before/after eval table."""

import math
import pathlib
import shutil

from notebooks import run_python_cells


def _table_rows(out: str, header_start: str) -> list[list[str]]:
    """The whitespace-split rows printed under the line that starts with `header_start`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(header_start))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip() or not line.split()[0][0].isdigit():
            break
        rows.append(line.split())
    return rows


def test_waltzrl_notebook_python_cells_run(capsys):
    namespace: dict = {}
    try:
        ran = run_python_cells("colabs/waltzrl_demo.ipynb", namespace)
        _check_output(capsys.readouterr().out, pathlib.Path(namespace["WORKDIR"]))
    finally:  # the notebook's temporary run and model directories
        if "WORKDIR" in namespace:
            shutil.rmtree(namespace["WORKDIR"], ignore_errors=True)
        if "TINY_MODEL_DIR" in namespace:
            shutil.rmtree(pathlib.Path(namespace["TINY_MODEL_DIR"]).parent, ignore_errors=True)
    assert ran == 6


def _check_output(out: str, workdir: pathlib.Path) -> None:
    # The configuration: two agents, two stages, the demo's method section.
    assert "agent conversation" in out and "agent feedback" in out
    assert "stage 0: 2 steps, trains feedback, overrides {'lam': 0.25}" in out
    assert "stage 1: the remaining steps, trains conversation, feedback, overrides {'lam': 0.0}" in out
    assert "judge=rule  dataset=embedded  alpha=0.65 lam=0.25 gamma=0.1" in out

    # Training ran 4 steps, 2 per stage, and recorded both agents' rewards and the episode metrics.
    assert "trained 4 steps in" in out
    rows = _table_rows(out, "step  stage")
    assert [row[:2] for row in rows] == [["1", "0"], ["2", "0"], ["3", "1"], ["4", "1"]]
    for row in rows:
        r_c, r_f, ftr, parse_rate = map(float, row[2:])
        assert 0.0 <= r_c <= 1.0 and -0.55 <= r_f <= 1.0 and 0.0 <= ftr <= 1.0 and 0.0 <= parse_rate <= 1.0
    assert (workdir / "waltzrl_curves.png").stat().st_size > 0

    # The before/after table has the paper's metrics; the 4 eval requests are 2 harmful and 2 benign.
    rows = [line.split() for line in out.splitlines()]
    table = {row[0]: row[1:] for row in rows if row and row[0].startswith("eval/")}
    for key in ("eval/asr", "eval/orr", "eval/ftr", "eval/f1", "eval/label_acc", "eval/parse_rate"):
        assert key in table, key
        before, after, _ = map(float, table[key])
        assert not math.isnan(before) and not math.isnan(after), key
    for key in ("eval/num_harmful", "eval/num_benign"):
        assert table[key][:2] == ["2.0000", "2.0000"], key
