"""The RLEV notebook runs top to bottom in a Jupyter kernel with its tiny setup: it samples, shows the exam
set, trains RLEV and the correctness baseline, shows the report and prints the before/after table."""

import pytest

from notebooks import committed_without_outputs, execute_notebook, images, text_output

NOTEBOOK = "rlev_demo.ipynb"
# Run after the notebook in its kernel: the GPU and TPU setups (not run here) are valid configs.
CHECK_SETUPS = """
for name, setup in SETUPS.items():
    agent = next(iter(load(CONFIG, setup).agents.values()))
    print(f"valid setup {name}: dtype {agent.model.dtype}, lora rank {agent.lora.rank if agent.uses_lora else 0}")
"""


def test_committed_without_outputs():
    assert committed_without_outputs(NOTEBOOK)


@pytest.fixture(scope="module")
def executed(tiny_chat_model_dir, tmp_path_factory):
    notebook = execute_notebook(NOTEBOOK, model_dir=tiny_chat_model_dir, tmp_path=tmp_path_factory.mktemp("rlev_nb"),
                                then=CHECK_SETUPS)
    return notebook, text_output(notebook)


def test_notebook_runs_and_prints_the_comparison(executed):
    notebook, out = executed
    assert "install skipped" in out
    assert "setup cpu; devices: 1 x cpu" in out
    assert "memory per device (estimate)" in out and "total per device:" in out  # printed by runs.train
    # The exam set: five questions, each with its value and RLEV's scale s = 1 + min(10 * value, 1).
    exam = [line for line in out.splitlines() if " answer=" in line and " s=" in line]
    assert len(exam) == 5
    for line in exam:
        value = float(line.split("value=")[1].split()[0])
        assert float(line.split("s=")[1]) == pytest.approx(1 + min(10 * value, 1), abs=0.006)
    assert out.count("trained 2 steps") == 1
    # The table: before, after RLEV and after the baseline for each metric; the tiny setup makes at most 8
    # tokens per response and the accuracies are percentages.
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.split() == ["metric", "before", "RLEV", "correctness"]))
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[start + 1:start + 7]}
    assert set(rows) == {"eval/acc", "eval/h_acc", "eval/resp_length", "eval/value_density",
                         "eval/acc_top20_value", "eval/acc_bottom20_value"}
    assert all(0.0 <= x <= 100.0 for x in rows["eval/acc"] + rows["eval/h_acc"])
    assert all(1.0 <= x <= 8.0 for x in rows["eval/resp_length"])
    assert "valid setup cpu: dtype float32, lora rank 0" in out
    assert "valid setup gpu: dtype bfloat16, lora rank 0" in out
    assert "valid setup tpu: dtype bfloat16, lora rank 16" in out
    # The report (curves) is displayed as a PNG image.
    shown = images(notebook)
    assert len(shown) == 1 and shown[0][:8] == b"\x89PNG\r\n\x1a\n"
