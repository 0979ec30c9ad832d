"""The WaltzRL notebook runs top to bottom in a Jupyter kernel with its tiny setup: both agents train through
the two stages; it prints the per-step table, shows the report and prints the before/after eval table."""

import math

from notebooks import committed_without_outputs, execute_notebook, images, text_output

NOTEBOOK = "waltzrl_demo.ipynb"
# Run after the notebook in its kernel: the GPU and TPU setups (not run here) are valid configs for both agents.
CHECK_SETUPS = """
for name, setup in SETUPS.items():
    agents = load(CONFIG, setup).agents.values()
    print(f"valid setup {name}: " + ", ".join(
        f"{a.name} dtype {a.model.dtype} lora rank {a.lora.rank if a.uses_lora else 0}" for a in agents))
"""


def test_committed_without_outputs():
    assert committed_without_outputs(NOTEBOOK)


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


def test_notebook_trains_both_agents_through_two_stages(tiny_chat_model_dir, tmp_path):
    notebook = execute_notebook(NOTEBOOK, model_dir=tiny_chat_model_dir, tmp_path=tmp_path, then=CHECK_SETUPS)
    out = text_output(notebook)
    # The configuration: two agents, two stages, the demo's method section.
    assert "agent conversation" in out and "agent feedback" in out
    assert "stage 0: 2 steps, trains feedback, overrides {'lam': 0.25}" in out
    assert "stage 1: the remaining steps, trains conversation, feedback, overrides {'lam': 0.0}" in out
    assert "judge=rule  dataset=embedded  alpha=0.65 lam=0.25 gamma=0.1" in out
    # The memory estimate has a column per agent.
    header = out.splitlines()[out.splitlines().index(
        next(line for line in out.splitlines() if line.startswith("memory per device"))) + 1]
    assert header.split() == ["conversation", "feedback"]

    # Training ran 4 steps, 2 per stage, and recorded both agents' rewards and the episode metrics.
    assert "trained 4 steps" in out
    rows = _table_rows(out, "step  stage")
    assert [row[:2] for row in rows] == [["1", "0"], ["2", "0"], ["3", "1"], ["4", "1"]]
    for row in rows:
        r_c, r_f, ftr, parse_rate = map(float, row[2:])
        assert 0.0 <= r_c <= 1.0 and -0.55 <= r_f <= 1.0 and 0.0 <= ftr <= 1.0 and 0.0 <= parse_rate <= 1.0
    shown = images(notebook)
    assert len(shown) == 1 and shown[0][:8] == b"\x89PNG\r\n\x1a\n"

    assert ("valid setup tpu: conversation dtype bfloat16 lora rank 16, feedback dtype bfloat16 lora rank 16"
            in out)
    assert "valid setup gpu: conversation dtype bfloat16 lora rank 0, feedback dtype bfloat16 lora rank 0" in out

    # The before/after table has the paper's metrics; the 4 eval requests are 2 harmful and 2 benign.
    table = {row[0]: row[1:] for row in (line.split() for line in out.splitlines()) if row and row[0].startswith("eval/")}
    for key in ("eval/asr", "eval/orr", "eval/ftr", "eval/f1", "eval/label_acc", "eval/parse_rate"):
        assert key in table, key
        before, after, _ = map(float, table[key])
        assert not math.isnan(before) and not math.isnan(after), key
    for key in ("eval/num_harmful", "eval/num_benign"):
        assert table[key][:2] == ["2.0000", "2.0000"], key
