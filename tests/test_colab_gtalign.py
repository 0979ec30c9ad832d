"""The GTAlign notebook runs top to bottom in a Jupyter kernel with its tiny setup: the walk-through of the
format, the scores and pricing steering, then the cold start and RL, the report and the before/after
table."""

import pytest

from notebooks import committed_without_outputs, execute_notebook, images, text_output

NOTEBOOK = "gtalign_walkthrough.ipynb"
# Run after the notebook in its kernel: the GPU and TPU setups (not run here) are valid configs, for the
# cold start and for the RL run from it.
CHECK_SETUPS = """
for name, setup in SETUPS.items():
    sft_agent = load(CONFIG, setup, kind="sft").agent
    rl_agent = load(CONFIG, {**setup, **RL_SETUPS.get(name, {}), "model.init_from": SFT_WORKDIR}).agent
    print(f"valid setup {name}: dtype {rl_agent.model.dtype}, cold start lora rank "
          f"{sft_agent.lora.rank if sft_agent.uses_lora else 0}, RL lora rank "
          f"{rl_agent.lora.rank if rl_agent.uses_lora else 0}, critic {rl_agent.critic.mode}")
"""


def test_committed_without_outputs():
    assert committed_without_outputs(NOTEBOOK)


@pytest.fixture(scope="module")
def executed(tiny_chat_model_dir, tmp_path_factory):
    notebook = execute_notebook(NOTEBOOK, model_dir=tiny_chat_model_dir,
                                tmp_path=tmp_path_factory.mktemp("gtalign_nb"), then=CHECK_SETUPS)
    return notebook, text_output(notebook)


def test_walkthrough_scores_and_steers(executed):
    _, out = executed
    assert "Question: Ann has 7 apples" in out
    assert "parse_ok             1.000" in out and "answer_llm           1.000" in out
    assert "welfare choice: DQ_DA" in out
    assert "API pricing" in out and "choice DQ_DA -> DQ_AQ" in out  # the subscription flips the choice
    reward = float(out.split("reward W = sqrt(U L) = ")[1].split()[0])
    assert 0.3 < reward < 1.0


def test_cold_start_then_rl_with_report_and_table(executed):
    notebook, out = executed
    assert "install skipped" in out
    assert out.count("memory per device (estimate)") == 2  # the SFT run and the RL run
    assert "cold start: 2 steps; RL: 2 steps" in out
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()
             if line.startswith("eval/") and len(line.split()) == 4}
    for key in ("eval/format", "eval/parsed", "eval/answer"):  # percentages
        before, after, _ = map(float, table[key])
        assert 0.0 <= before <= 100.0 and 0.0 <= after <= 100.0, key
    for key in ("eval/user_welfare", "eval/llm_welfare", "eval/welfare"):
        before, after, _ = map(float, table[key])
        assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0, key
    shown = images(notebook)
    assert len(shown) == 1 and shown[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert "valid setup cpu: dtype float32, cold start lora rank 0, RL lora rank 0, critic shared" in out
    assert "valid setup gpu: dtype bfloat16, cold start lora rank 0, RL lora rank 0, critic shared" in out
    assert "valid setup tpu: dtype bfloat16, cold start lora rank 0, RL lora rank 16, critic separate" in out
