"""Several agents in one run (`configs/two_agent_toy.py`, 8 fake devices, random tiny models): both agents'
rewards rise; a stage that freezes an agent leaves its parameters and optimizer state bit-identical; a run
stopped inside stage 1 and resumed in stage 2 equals the uninterrupted run; metrics, checkpoints, eval and
export name the agents; per-agent config errors name the agent."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxalign import runs
from jaxalign.config import ConfigError, apply_overrides, from_config_dict, load_config_file
from jaxalign.methods.base import build_method
from jaxalign.train.checkpoint import StopSignal
from jaxalign.train.metrics import read_metrics

TIMING = ("time/", "perf/", "a/time/", "b/time/", "a/perf/", "b/perf/")


def _config(arg=None, **overrides):
    cd = load_config_file("configs/two_agent_toy.py" + (f":{arg}" if arg else ""))
    overrides = {"logging.progress": False, **overrides}
    return from_config_dict(apply_overrides(cd, {k: str(v) for k, v in overrides.items()}))


def _train_records(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)}
            for r in read_metrics(workdir) if r["kind"] == "train"]


def _saved(workdir, step):
    return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")["agents"]


def test_both_agents_rewards_rise_with_prefixed_metrics(tmp_path):
    result = runs.train(_config(), tmp_path)
    records = _train_records(tmp_path)
    assert len(records) == 12
    for name in ("a", "b"):
        rewards = np.array([r[f"{name}/reward/mean"] for r in records])
        # Random ids hit the 16 lowest of 256 about 6% of the time; both agents must learn well beyond it.
        assert rewards[:3].mean() < 0.15, rewards
        assert rewards[-3:].mean() > rewards[:3].mean() + 0.15, (name, rewards)
        assert f"{name}/loss/pg_loss" in records[0] and f"{name}/time/update_s" in read_metrics(tmp_path)[1]
    # The agents' rewards differ (each weights its own tokens more), so the prefixes are not a copy.
    assert any(r["a/reward/mean"] != r["b/reward/mean"] for r in records)
    assert "reward/mean" not in records[0]
    assert result.eval_after["eval/a_target_fraction"] > result.eval_before["eval/a_target_fraction"]
    saved = _saved(tmp_path, 12)
    assert set(saved) == {"a", "b"}
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {s["agent"] for s in samples} == {"a", "b"}


def test_frozen_stage_is_bit_identical_and_resume_across_stages_is_exact(tmp_path, monkeypatch):
    overrides = {"train.steps": 8, "checkpoint.every": 1, "checkpoint.keep": 10, "train.eval_examples": 4}
    full = tmp_path / "full"
    runs.train(_config("staged", **overrides), full)  # stage 0: steps 1-6 train a; stage 1: 7-8 train both
    a0, a6, b0, b6, b8 = (_saved(full, s)[n] for s, n in ((1, "a"), (6, "a"), (1, "b"), (6, "b"), (8, "b")))
    # b does not train in stage 0: parameters, optimizer state and step counter unchanged bit for bit.
    jax.tree.map(np.testing.assert_array_equal, b0, b6)
    assert int(np.asarray(b6["step"])) == 0
    moved = lambda x, y: max(jax.tree.leaves(jax.tree.map(lambda p, q: float(np.abs(p - q).max()), x, y)))
    assert moved(a0["params"], a6["params"]) > 0 and moved(b6["params"], b8["params"]) > 0
    records = _train_records(full)
    assert [r["stage"] for r in records] == [0.0] * 6 + [1.0] * 2
    assert "b/loss/pg_loss" not in records[5] and "b/loss/pg_loss" in records[6]

    # The same run stopped (as by SIGTERM) after step 5, inside stage 0, then resumed into stage 1.
    split, checks = tmp_path / "split", []
    monkeypatch.setattr(StopSignal, "should_stop", lambda self: checks.append(1) or len(checks) == 5)
    stopped = runs.train(_config("staged", **overrides), split)
    assert stopped.stopped_early and stopped.final_step == 5
    monkeypatch.setattr(StopSignal, "should_stop", lambda self: False)
    runs.train(_config("staged", **overrides), split)
    assert _train_records(split) == records
    jax.tree.map(np.testing.assert_array_equal, _saved(full, 8), _saved(split, 8))


def test_eval_and_export_name_the_agent(tmp_path):
    runs.train(_config(**{"train.steps": 2, "checkpoint.every": 2}), tmp_path)
    config = runs.run_config(tmp_path)
    metrics = runs.evaluate_checkpoint(config, tmp_path)
    assert set(metrics) >= {"eval/a_target_fraction", "eval/b_target_fraction"}
    with pytest.raises(ConfigError, match="2 agents .*--agent"):
        runs.export_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="'c' is not an agent"):
        runs.export_checkpoint(tmp_path, tmp_path / "out", agent="c")
    assert runs.export_checkpoint(tmp_path, tmp_path / "out_b", agent="b") == "b"
    assert (tmp_path / "out_b" / "config.json").is_file()


@pytest.mark.parametrize("overrides, message", [
    ({"agents.b.rollout.prompts_per_step": "3"}, r"agent 'b': micro-batch size 12 .* not divisible by the mesh"),
    ({"agents.a.optim.learning_rate": "-1"}, r"agent 'a': optim: learning_rate must be > 0"),
])
def test_per_agent_config_errors_name_the_agent(overrides, message):
    cd = load_config_file("configs/two_agent_toy.py")
    with cd.unlocked():
        cd.agents.b.rollout = {"prompts_per_step": 8}
    with pytest.raises(ConfigError, match=message):
        from_config_dict(apply_overrides(cd, overrides))


def test_stage_errors_list_the_agents_and_fields():
    cd = load_config_file("configs/two_agent_toy.py")
    with cd.unlocked():
        cd.stages = [dict(steps=4, train=["a", "c"]), dict(steps=-1)]
    with pytest.raises(ConfigError, match=r"stages\[0\]\.train names unknown agent\(s\) \['c'\]; the agents are: a, b"):
        from_config_dict(cd)
    with cd.unlocked():
        cd.stages = [dict(steps=4, train=["a"]), dict(steps=4)]
    with pytest.raises(ConfigError, match="add up to 8 but train.steps is 12"):
        from_config_dict(cd)
    with cd.unlocked():
        cd.stages = [dict(steps=4, train=["a"], overrides={"nope": 1}), dict(steps=-1)]
    with pytest.raises(ConfigError, match=r"stages\[0\]\.overrides: .*unknown two_agent_toy field\(s\) \['nope'\]"):
        build_method(from_config_dict(cd))


def test_method_agents_must_match_the_config():
    cd = load_config_file("configs/two_agent_toy.py")
    with cd.unlocked():
        del cd["agents"]
    with pytest.raises(ConfigError, match="needs the agents a, b, but the config defines policy"):
        build_method(from_config_dict(cd))
