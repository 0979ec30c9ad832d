"""The WaltzRL notebook's Python cells run as written (shell and install lines are skipped): its tiny setup
trains both agents through the two stages and prints the curves' values and the before/after eval table."""

import json
import math
import pathlib


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
    notebook = json.loads(pathlib.Path("colabs/waltzrl_demo.ipynb").read_text())
    namespace: dict = {}
    ran = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if source.lstrip().startswith(("%", "!")):
            continue
        exec(compile(source, "<notebook cell>", "exec"), namespace)  # noqa: S102
        ran += 1
    out = capsys.readouterr().out
    assert ran == 7

    # The configuration: two agents, two stages, the demo's method section.
    assert "agent conversation" in out and "agent feedback" in out
    assert "stage 0: 2 steps, trains feedback, overrides {'lam': 0.25}" in out
    assert "stage 1: rest of steps, trains conversation, feedback, overrides {'lam': 0.0}" in out
    assert "judge=rule  dataset=embedded  alpha=0.65 lam=0.25 gamma=0.1" in out

    # Training ran 4 steps, 2 per stage, and recorded both agents' rewards and the episode metrics.
    assert "trained 4 steps in" in out
    rows = _table_rows(out, "step  stage")
    assert [row[:2] for row in rows] == [["1", "0"], ["2", "0"], ["3", "1"], ["4", "1"]]
    for row in rows:
        r_c, r_f, ftr, parse_rate = map(float, row[2:])
        assert 0.0 <= r_c <= 1.0 and -0.55 <= r_f <= 1.0 and 0.0 <= ftr <= 1.0 and 0.0 <= parse_rate <= 1.0
    workdir = pathlib.Path(namespace["WORKDIR"])
    assert (workdir / "waltzrl_curves.png").stat().st_size > 0

    # The before/after table has the paper's metrics; the 4 eval requests are 2 harmful and 2 benign.
    table = {row[0]: row[1:] for row in (line.split() for line in out.splitlines()) if row and "/" in row[0]
             and row[0].startswith("eval/")}
    for key in ("eval/asr", "eval/orr", "eval/ftr", "eval/f1", "eval/label_acc", "eval/parse_rate"):
        assert key in table, key
        before, after, _ = map(float, table[key])
        assert not math.isnan(before) and not math.isnan(after), key
    assert table["eval/num_harmful"][:2] == ["2.0000", "2.0000"] and table["eval/num_benign"][:2] == ["2.0000",
                                                                                                     "2.0000"]
