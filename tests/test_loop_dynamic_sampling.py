"""Dynamic sampling in the loop: groups whose rewards are all equal are dropped and more prompts are sampled
(bounded tries) until the step's batch holds only informative groups; without it, such groups stay in."""

import numpy as np

from jaxalign.config import apply_overrides, from_config_dict, load_config_file
from jaxalign import runs
from jaxalign.methods.toy.token import ToyTokenMethod
from jaxalign.train import episodes

PROMPTS, SAMPLES = 8, 4


def _config(**overrides):
    cd = load_config_file("configs/tiny_test.py")
    overrides = {"logging.progress": False, "train.eval_every": 0, "train.steps": 2,
                 "rollout.prompts_per_step": PROMPTS, "rollout.samples_per_prompt": SAMPLES, **overrides}
    return from_config_dict(apply_overrides(cd, {k: str(v) for k, v in overrides.items()}))


def _prompt_index(example):
    return int(example["prompt"].rsplit("-", 1)[1])


def _half_flat_rewards(self, features, examples):
    """Even-numbered prompts: every sample gets 0.5 (an uninformative group). Odd-numbered prompts: the
    samples of a group get 0, 1/4, 2/4, 3/4 (informative)."""
    rewards = np.array([0.5 if _prompt_index(e) % 2 == 0 else (j % SAMPLES) / SAMPLES
                        for j, e in enumerate(examples)], np.float32)
    return rewards, {"target_fraction": rewards}


def _run(tmp_path, monkeypatch, **overrides):
    monkeypatch.setattr(ToyTokenMethod, "rewards", _half_flat_rewards)
    kept = []
    original = episodes.single_turn_episode

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        kept.append([_prompt_index(e) for e in out["policy"].examples])
        return out

    monkeypatch.setattr(episodes, "single_turn_episode", recording)
    result = runs.train(_config(**overrides), tmp_path)
    return result.history, kept


def test_dynamic_sampling_refills_with_informative_groups(tmp_path, monkeypatch):
    history, kept = _run(tmp_path, monkeypatch, **{"rollout.dynamic_sampling": True,
                                                   "rollout.dynamic_sampling_max_tries": 4})
    assert len(history) == 2 and len(kept) == 2
    for record, indices in zip(history, kept):
        assert len(indices) == PROMPTS * SAMPLES  # the batch shape never changes
        assert all(i % 2 == 1 for i in indices), indices  # only informative (odd) groups were kept
        assert record["rollout/informative_groups"] == PROMPTS
        assert 2 <= record["rollout/tries"] <= 4  # one try of 8 prompts cannot hold 8 odd ones here
        # the step's reward is the mean over the kept informative groups: (0 + 1/4 + 2/4 + 3/4) / 4
        np.testing.assert_allclose(record["reward/mean"], 0.375, rtol=1e-6)


def test_without_dynamic_sampling_uninformative_groups_stay(tmp_path, monkeypatch):
    history, kept = _run(tmp_path, monkeypatch, **{"rollout.dynamic_sampling": False})
    for record, indices in zip(history, kept):
        groups = indices[::SAMPLES]
        assert record["rollout/tries"] == 1
        assert record["rollout/informative_groups"] == sum(i % 2 == 1 for i in groups) < PROMPTS
