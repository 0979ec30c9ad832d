"""The GTAlign notebook's Python cells run as written (shell and install lines are skipped)."""

from notebooks import run_python_cells


def test_gtalign_notebook_python_cells_run(capsys):
    ran = run_python_cells("colabs/gtalign_walkthrough.ipynb", {})
    out = capsys.readouterr().out
    assert ran == 4
    assert "Question: Ann has 7 apples" in out
    assert "parse_ok             1.000" in out and "answer_llm           1.000" in out
    assert "welfare choice: DQ_DA" in out
    assert "API pricing" in out and "choice DQ_DA -> DQ_AQ" in out  # the subscription flips the choice
    reward = float(out.split("reward W = sqrt(U L) = ")[1].split()[0])
    assert 0.3 < reward < 1.0
