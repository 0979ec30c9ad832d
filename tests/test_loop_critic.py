"""PPO with a learned critic in the host loop (configs/ppo_gae_tiny.py, 8 fake devices, toy task): reward
rises and the critic's value loss falls with a separate critic and with a shared head; GAE over full rows
(prompt columns masked) equals GAE over the response alone; resume with a critic is exact; critic warmup
updates only the critic."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxalign.algorithms.advantages import AdvantageConfig
from jaxalign.config import apply_overrides, from_config_dict, load_config_file
from jaxalign import runs
from jaxalign.train import batching, learner, loop
from jaxalign.train.checkpoint import Checkpointer
from jaxalign.train.metrics import read_metrics


def _config(mode="separate", **overrides):
    cd = load_config_file(f"configs/ppo_gae_tiny.py:{mode}")
    overrides = {"logging.progress": False, "train.eval_every": 0, **overrides}
    return from_config_dict(apply_overrides(cd, {k: str(v) for k, v in overrides.items()}))


def _train_records(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(loop.TIMING_PREFIXES)}
            for r in read_metrics(workdir) if r["kind"] == "train"]


def _saved(workdir, step):
    return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")["agents"]["policy"]


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_gae_run_reward_rises_and_value_loss_falls(tmp_path, mode):
    # A random value head (spread ~1) starts far from the returns (rewards in [0, 1], mostly near 0).
    config = _config(mode, **{"train.steps": 16, "critic.head_init_std": 1.0})
    assert config.rollout.samples_per_prompt == 1 and config.critic.mode == mode
    result = runs.train(config, tmp_path)
    history = result.history
    rewards = np.array([r["reward/mean"] for r in history])
    value_loss = np.array([r["critic/value_loss"] for r in history])
    assert all(np.isfinite(r["critic/explained_var"]) for r in history)
    assert rewards[-3:].mean() > rewards[:3].mean() + 0.2, rewards
    assert value_loss[-3:].mean() < 0.2 * value_loss[:3].mean(), value_loss
    # The critic tracks the returns it is trained on by the end.
    last = history[-1]
    assert abs(last["critic/value_mean"] - last["critic/return_mean"]) < 0.25, last
    assert result.eval_after["eval/target_fraction"] > result.eval_before["eval/target_fraction"] + 0.4
    if mode == "shared":  # one update: the policy metrics and the joint loss come from the same step
        assert "loss/total_loss" in last and "critic/grad_norm" not in last
    else:
        assert "critic/grad_norm" in last and "loss/total_loss" not in last


def _numpy_gae(rewards, values, gamma, lam):
    """GAE along one response (reward on the last token, V = 0 after it), returns = A + V."""
    adv, next_value, next_adv = np.zeros_like(values), 0.0, 0.0
    for t in reversed(range(len(values))):
        token_reward = rewards if t == len(values) - 1 else 0.0
        adv[t] = token_reward + gamma * next_value - values[t] + gamma * lam * next_adv
        next_value, next_adv = values[t], adv[t]
    return adv, adv + values


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.9, 0.8)])
def test_gae_over_rows_with_masked_prompt_columns_equals_gae_over_responses(gamma, lam):
    """The loop runs GAE over whole [n, P + R] rows with the loss mask; the values there are in the
    log-prob layout (value of response token j at column P + j). That must equal GAE over each
    response's own tokens: prompt columns, response padding and failed samples are skipped and get 0."""
    rng = np.random.default_rng(0)
    n, p, r = 8, 6, 5
    prompt_len = rng.integers(1, p + 1, size=n)
    prompt_mask = (np.arange(p)[None] >= (p - prompt_len)[:, None]).astype(np.int32)
    resp_len = rng.integers(1, r + 1, size=n)
    response_mask = (np.arange(r)[None] < resp_len[:, None]).astype(np.int32)
    ok = np.ones(n, bool)
    ok[3] = False  # a failed sample: no loss tokens
    seqs = batching.build_sequences(rng.integers(1, 50, (n, p)) * prompt_mask, prompt_mask,
                                    rng.integers(1, 50, (n, r)) * response_mask, response_mask,
                                    np.zeros((n, r), np.float32), prompt_width=p + 2, ok_n=ok)
    width = p + 2
    values = rng.normal(size=seqs.tokens_nt.shape).astype(np.float32)  # garbage off the response too
    rewards = rng.uniform(size=n).astype(np.float32)
    cfg = AdvantageConfig(estimator="gae", gamma=gamma, lam=lam, whiten=False)
    adv, returns = learner._advantages_jit("gae", cfg, rewards, np.arange(n, dtype=np.int32), seqs.loss_mask_nt,
                                        None, None, values)
    adv, returns = np.asarray(adv), np.asarray(returns)
    for i in range(n):
        cols = slice(width, width + resp_len[i])
        off = np.ones(seqs.tokens_nt.shape[1], bool)
        if ok[i]:
            off[cols] = False
            want_adv, want_ret = _numpy_gae(rewards[i], values[i, cols].astype(np.float64), gamma, lam)
            np.testing.assert_allclose(adv[i, cols], want_adv, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(returns[i, cols], want_ret, rtol=1e-5, atol=1e-5)
        assert not adv[i, off].any() and not returns[i, off].any(), i


def test_resume_with_a_critic_is_exact_and_warmup_trains_only_the_critic(tmp_path):
    overrides = {"checkpoint.every": 1, "checkpoint.keep": 4, "critic.critic_warmup_steps": 1,
                 "critic.head_init_std": 0.5}
    full = runs.train(_config(**{"train.steps": 4, **overrides}), tmp_path / "full")
    first = runs.train(_config(**{"train.steps": 2, **overrides}), tmp_path / "split")
    resumed = runs.train(_config(**{"train.steps": 4, **overrides}), tmp_path / "split")
    assert len(full.history) == 4 and len(first.history) == 2 and len(resumed.history) == 2
    records = _train_records(tmp_path / "full")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records == _train_records(tmp_path / "split")
    # Step 1 is critic warmup: a critic update, no policy update.
    assert "critic/value_loss" in records[0] and "loss/loss" not in records[0]
    assert all("loss/loss" in r and "critic/value_loss" in r for r in records[1:])
    step1 = _saved(tmp_path / "split", 1)
    assert int(step1["step"]) == 0 and int(step1["critic"]["step"]) == 1
    full4, split4 = _saved(tmp_path / "full", 4), _saved(tmp_path / "split", 4)
    assert set(split4) == {"params", "opt_state", "step", "critic"}
    jax.tree.map(np.testing.assert_array_equal, full4, split4)
    # The critic did move between step 2 and step 4, so the comparison above covers it.
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         _saved(tmp_path / "split", 2)["critic"]["params"], split4["critic"]["params"])
    assert max(jax.tree.leaves(moved)) > 0
    assert Checkpointer(tmp_path / "split").latest_step() == 4


def test_non_finite_critic_loss_stops_before_saving(tmp_path, monkeypatch):
    original, calls = learner.prepare, []

    def poisoned(*args, **kwargs):
        batch = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            batch.returns = batch.returns * np.nan
        return batch

    monkeypatch.setattr(learner, "prepare", poisoned)
    with pytest.raises(learner.TrainingDiverged, match="non-finite loss at step 2 in the critic update"):
        runs.train(_config(**{"train.steps": 4, "checkpoint.every": 1}), tmp_path)
    assert Checkpointer(tmp_path).all_steps() == [1]
