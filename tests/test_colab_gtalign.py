"""The GTAlign notebook's Python cells run as written (shell and install lines are skipped)."""

import json
import pathlib


def test_gtalign_notebook_python_cells_run(capsys):
    notebook = json.loads(pathlib.Path("colabs/gtalign_walkthrough.ipynb").read_text())
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
    assert ran == 4
    assert "Question: Ann has 7 apples" in out
    assert "parse_ok             1.000" in out and "answer_llm           1.000" in out
    assert "welfare choice: DQ_DA" in out
    assert "API pricing" in out and "choice DQ_DA -> DQ_AQ" in out  # the subscription flips the choice
    reward = float(out.split("reward W = sqrt(U L) = ")[1].split()[0])
    assert 0.3 < reward < 1.0
