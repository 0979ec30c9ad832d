"""End to end on 8 fake devices with the random tiny model and the token-level `toy_token` method: reward
rises from well below its ceiling; a run of 4 steps equals 2 steps + resume + 2 steps exactly; a NaN stops
before anything is saved; the `setup` hook gets the agents before `load_data`."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxalign.config import apply_overrides, from_config_dict, load_config_file
from jaxalign.methods.base import METHODS, register
from jaxalign import distributed, runs
from jaxalign.train import learner, loop
from jaxalign.train.checkpoint import Checkpointer
from jaxalign.train.metrics import read_metrics
from jaxalign.methods.toy.token import ToyTokenMethod, token_features


def _config(**overrides):
    cd = load_config_file("configs/tiny_test.py")
    overrides = {"logging.progress": False, **overrides}
    return from_config_dict(apply_overrides(cd, {k: str(v) for k, v in overrides.items()}))


def _train_records(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(loop.TIMING_PREFIXES)}
            for r in read_metrics(workdir) if r["kind"] == "train"]


def _saved_params(workdir, step):
    tree = ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return tree["agents"]


def test_reward_rises_from_well_below_the_ceiling(tmp_path):
    config = _config(**{"train.steps": 16, "train.eval_every": 0})
    target, vocab = config.method_config.target_below, 256  # the tiny preset's vocabulary
    result = runs.train(config, tmp_path)
    rewards = np.array([r["reward/mean"] for r in result.history])
    assert len(rewards) == 16
    # An untrained policy samples a target id about target/vocab of the time: far from the ceiling of 1.
    assert rewards[:3].mean() < 3 * target / vocab, rewards
    assert rewards[-3:].mean() > rewards[:3].mean() + 0.4, rewards
    before, after = result.eval_before["eval/target_fraction"], result.eval_after["eval/target_fraction"]
    assert after > before + 0.4, (before, after)


def test_resume_is_exact(tmp_path):
    overrides = {"train.eval_every": 0, "checkpoint.every": 1}
    full = runs.train(_config(**{"train.steps": 4, **overrides}), tmp_path / "full")
    first = runs.train(_config(**{"train.steps": 2, **overrides}), tmp_path / "split")
    resumed = runs.train(_config(**{"train.steps": 4, **overrides}), tmp_path / "split")
    assert len(full.history) == 4 and len(first.history) == 2 and len(resumed.history) == 2
    records = _train_records(tmp_path / "full")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records == _train_records(tmp_path / "split")
    assert Checkpointer(tmp_path / "split").latest_step() == 4
    full_params, split_params = _saved_params(tmp_path / "full", 4), _saved_params(tmp_path / "split", 4)
    jax.tree.map(np.testing.assert_array_equal, full_params, split_params)
    # The parameters did move between step 2 and step 4, so the comparison above is not vacuous.
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         _saved_params(tmp_path / "split", 2)["policy"]["params"], split_params["policy"]["params"])
    assert max(jax.tree.leaves(moved)) > 0


def test_nan_loss_stops_before_saving_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original, calls = learner.prepare, []

    def poisoned(*args, **kwargs):
        batch = original(*args, **kwargs)
        calls.append(1)
        batch.advantages = batch.advantages * (np.nan if len(calls) == 3 else 1.0)
        return batch

    monkeypatch.setattr(learner, "prepare", poisoned)
    with pytest.raises(learner.TrainingDiverged, match="non-finite loss at step 3"):
        runs.train(_config(**{"train.steps": 6, "checkpoint.every": 1, "train.eval_every": 0}), tmp_path)
    assert Checkpointer(tmp_path).all_steps() == [1, 2]
    assert [r["step"] for r in _train_records(tmp_path)] == [1, 2]


def test_nan_rewards_count_as_failed_samples(tmp_path, monkeypatch):
    original = ToyTokenMethod.rewards

    def some_nan(self, features, examples):
        rewards, components = original(self, features, examples)
        if len(examples) == 32:  # training batches only (eval batches have 8 samples)
            rewards = rewards.copy()
            rewards[[0, 5, 6]] = np.nan
        return rewards, components

    monkeypatch.setattr(ToyTokenMethod, "rewards", some_nan)
    result = runs.train(_config(**{"train.steps": 2, "train.eval_every": 0}), tmp_path)
    for record in result.history:
        assert record["rollout/failed"] == 3
        assert np.isfinite(record["reward/mean"]) and np.isfinite(record["loss/loss"])


class _RecordingToy(ToyTokenMethod):
    calls: list = []

    def setup(self, agents):
        self.calls.append(("setup", {name: type(a.sampler).__name__ for name, a in agents.items()}))

    def load_data(self):
        self.calls.append(("load_data", None))
        return super().load_data()


if "toy_token_recording" not in METHODS:
    register("toy_token_recording")(_RecordingToy)


def test_setup_gets_the_agents_before_load_data(tmp_path):
    _RecordingToy.calls.clear()
    runs.train(_config(**{"method": "toy_token_recording", "train.steps": 1, "train.eval_every": 0}), tmp_path)
    assert _RecordingToy.calls == [("setup", {"policy": "Sampler"}), ("load_data", None)]


def test_token_features_reference():
    assert token_features("3 200 15 16", {"target_below": 16}) == {"target_fraction": 0.5, "num_tokens": 4.0}
    assert token_features("", {"target_below": 16})["target_fraction"] == 0.0


def test_toy_prompts_never_contain_targets_and_bad_ranges_fail():
    train, _ = ToyTokenMethod({"target_below": 16}).load_data()
    assert min(min(e["prompt_ids"]) for e in train) >= 16
    with pytest.raises(ValueError, match="prompt_id_range"):
        ToyTokenMethod({"target_below": 16, "prompt_id_range": (8, 64)}).load_data()


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"}, {}),
    ({"SLURM_NTASKS": "1"}, None),
    ({"SLURM_NTASKS": "4"}, {}),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"JAXALIGN_DISTRIBUTED": "1"}, {}),
    ({"JAXALIGN_DISTRIBUTED": "0", "SLURM_NTASKS": "4"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}),
])
def test_distributed_detection(environ, expected):
    assert distributed.distributed_init_kwargs(environ) == expected


def test_remat_setting_reaches_the_model_and_leaves_training_unchanged(tmp_path):
    from jaxalign.sharding import make_mesh
    from jaxalign.train.agents import build_agent

    histories = {}
    for remat in (False, True):
        config = _config(**{"model.remat": remat, "train.steps": 2, "train.eval_every": 0, "checkpoint.every": 0})
        assert build_agent(config.agent, make_mesh()).model_cfg.remat is remat
        runs.train(config, tmp_path / str(remat))
        histories[remat] = _train_records(tmp_path / str(remat))
    for plain, rematted in zip(histories[False], histories[True]):
        assert plain.keys() == rematted.keys()
        for key, value in plain.items():
            if isinstance(value, (int, float)) and not key.startswith("perf/"):
                assert rematted[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_a_restart_without_checkpoint_replaces_the_crashed_attempts_records(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 0, "kind": "eval", "eval/target_fraction": 9.0}\n{"step": 1, "kind": "train", "reward/mean": 9.0}\n')
    runs.train(_config(**{"train.steps": 1, "train.eval_every": 0, "checkpoint.every": 0}), tmp_path)
    raw = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in raw] == [(0, "eval"), (1, "train"), (1, "eval")]
    assert all(r.get("eval/target_fraction", 0.0) != 9.0 and r.get("reward/mean", 0.0) != 9.0 for r in raw)
