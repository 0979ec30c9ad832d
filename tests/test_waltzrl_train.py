"""WaltzRL through the real loop on a tiny random model with SmolLM2's tokenizer (8 fake devices): two
agents, stage 1 trains only the feedback agent (lam 0.25), stage 2 both (lam 0); a run stopped inside stage
1 and resumed into stage 2 equals the uninterrupted run; eval reports the paper's metrics."""

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxalign import runs
from jaxalign.config import apply_overrides, from_config_dict, load_config_file
from jaxalign.train.checkpoint import StopSignal
from jaxalign.train.metrics import read_metrics

TIMING = ("time/", "perf/", "conversation/time/", "feedback/time/", "conversation/perf/", "feedback/perf/")


def _config(model_dir):
    cd = load_config_file("configs/waltzrl_smollm2_demo.py")
    overrides = {"model.spec": model_dir, "rollout.max_new_tokens": 6, "agents.feedback.rollout.max_new_tokens": 6,
                 "rollout.max_prompt_len": 512, "train.steps": 4, "train.eval_examples": 4, "checkpoint.every": 1,
                 "checkpoint.keep": 10, "checkpoint.async_save": False, "logging.progress": False,
                 "logging.tensorboard": False, "logging.report": False, "algorithm.micro_batches": 1}
    cd = apply_overrides(cd, {k: str(v) for k, v in overrides.items()})
    with cd.unlocked():
        cd.stages = [dict(steps=2, train=["feedback"], overrides={"lam": 0.25}),
                     dict(steps=-1, train=["conversation", "feedback"], overrides={"lam": 0.0})]
    return from_config_dict(cd)


def _records(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in read_metrics(workdir)
            if r["kind"] == "train"]


def _saved(workdir, step):
    return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")["agents"]


def test_two_stage_run_and_exact_resume_across_the_stage_boundary(tiny_chat_model_dir, tmp_path, monkeypatch):
    config = _config(tiny_chat_model_dir)
    full = runs.train(config, tmp_path / "full")
    records = _records(tmp_path / "full")
    assert [r["stage"] for r in records] == [0.0, 0.0, 1.0, 1.0]
    assert "conversation/loss/pg_loss" not in records[1] and "conversation/loss/pg_loss" in records[2]
    assert all("feedback/loss/pg_loss" in r for r in records)
    for r in records:
        assert 0.0 <= r["conversation/episode/parse_rate"] <= 1.0 and "feedback/reward/label" in r
    # The conversation agent is frozen through stage 1, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, _saved(tmp_path / "full", 1)["conversation"],
                 _saved(tmp_path / "full", 2)["conversation"])
    for key in ("eval/asr", "eval/orr", "eval/ftr", "eval/label_acc", "eval/f1", "eval/parse_rate",
                "eval/mean_revisions"):
        assert key in full.eval_after, key

    checks = []
    monkeypatch.setattr(StopSignal, "should_stop", lambda self: checks.append(1) or len(checks) == 1)
    stopped = runs.train(config, tmp_path / "split")
    assert stopped.stopped_early and stopped.final_step == 1
    monkeypatch.setattr(StopSignal, "should_stop", lambda self: False)
    runs.train(config, tmp_path / "split")
    assert _records(tmp_path / "split") == records
    jax.tree.map(np.testing.assert_array_equal, _saved(tmp_path / "full", 4), _saved(tmp_path / "split", 4))
