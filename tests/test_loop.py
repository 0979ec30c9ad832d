"""End to end on 8 fake devices with the random tiny model and the token-level `toy_token` method:
reward rises; a run of 4 steps equals 2 steps + resume + 2 steps exactly; a NaN stops cleanly."""

import json

import jax
import numpy as np
import pytest

import jaxalign.models as models
from jaxalign.config import apply_overrides, from_config_dict, load_config_file
from jaxalign.train import loop
from jaxalign.train.metrics import read_metrics


def _random_tiny(spec, *, mesh=None, role="train", param_dtype=None, dtype=None):
    """load_model("random:tiny") stand-in while the model registry is not available."""
    from jaxalign.models.config import get_preset
    from jaxalign.sharding import create_sharded

    assert spec == "random:tiny"
    return create_sharded(get_preset("tiny"), mesh, role), None


@pytest.fixture(autouse=True)
def _loader(monkeypatch):
    if not hasattr(models, "load_model"):
        monkeypatch.setattr(models, "load_model", _random_tiny, raising=False)


def _config(**overrides):
    cd = load_config_file("configs/tiny_test.py")
    return from_config_dict(apply_overrides(cd, {k: str(v) for k, v in overrides.items()}))


def _train_records(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(loop.TIMING_PREFIXES)}
            for r in read_metrics(workdir) if r["kind"] == "train"]


def test_reward_rises(tmp_path):
    result = loop.train(_config(**{"train.steps": 12, "train.eval_every": 0}), tmp_path)
    rewards = [r["reward/mean"] for r in result.history]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.15, rewards
    assert result.eval_after["eval/target_fraction"] >= result.eval_before["eval/target_fraction"]
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "samples.jsonl").exists()


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    overrides = {"train.eval_every": 0, "checkpoint.every": 1}
    full = loop.train(_config(**{"train.steps": 4, **overrides}), tmp_path / "full")
    loop.train(_config(**{"train.steps": 2, **overrides}), tmp_path / "split")
    resumed = loop.train(_config(**{"train.steps": 4, **overrides}), tmp_path / "split")
    assert resumed.history and len(resumed.history) == 2
    assert _train_records(tmp_path / "full") == _train_records(tmp_path / "split")
    from jaxalign.train.checkpoint import Checkpointer
    a = json.loads((tmp_path / "full" / "config.json").read_text())
    assert a["train"]["steps"] == 4
    assert Checkpointer(tmp_path / "split").latest_step() == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(loop.TrainingDiverged, match="non-finite loss"):
        loop.train(_config(**{"train.steps": 6, "checkpoint.every": 1, "optim.learning_rate": 1e30,
                              "train.eval_every": 0}), tmp_path)
