"""Every runnable config in configs/ loads, validates on 8 devices and documents its command."""

import pathlib

import pytest

from jaxalign.config import from_config_dict, load_config_file

CONFIGS = sorted(p for p in pathlib.Path("configs").glob("*.py") if p.name != "common.py")


def test_there_are_configs():
    names = {p.stem for p in CONFIGS}
    assert {"rlev_smollm2_demo", "rlev_qwen25_7b_tpu", "rlev_qwen25_7b_rloo", "rlev_qwen25_7b_grpo",
            "tiny_test", "ppo_gae_tiny", "gtalign_smollm2_demo", "gtalign_qwen25_3b"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    text = path.read_text()
    assert f"--config=configs/{path.name}" in text, "the docstring must show the command that runs it"
    config = from_config_dict(load_config_file(str(path)), num_devices=8)
    assert config.train.steps > 0
    del spec


@pytest.mark.parametrize("arg", ["rloo", "grpo", "reinforce_pp"])
def test_demo_variants(arg):
    config = from_config_dict(load_config_file(f"configs/rlev_smollm2_demo.py:{arg}"), num_devices=8)
    assert config.algorithm.estimator == arg and not config.algorithm.needs_reference


@pytest.mark.parametrize("arg", ["separate", "shared"])
def test_ppo_gae_tiny_variants(arg):
    config = from_config_dict(load_config_file(f"configs/ppo_gae_tiny.py:{arg}"), num_devices=8)
    advantage = config.algorithm.advantage_config()
    assert config.algorithm.estimator == "gae" and config.uses_critic and config.critic.mode == arg
    assert (advantage.gamma, advantage.lam) == (1.0, 1.0)
    assert config.algorithm.loss_config(1.0).value_clip == 0.5 and config.rollout.samples_per_prompt == 1


def test_gtalign_paper_config_follows_the_reference_recipe():
    config = from_config_dict(load_config_file("configs/gtalign_qwen25_3b.py"), num_devices=8)
    loss, advantage = config.algorithm.loss_config(1.0), config.algorithm.advantage_config()
    assert config.method == "gtalign" and config.algorithm.estimator == "gae" and config.critic.mode == "separate"
    assert (advantage.gamma, advantage.lam, advantage.whiten, advantage.kl_coef) == (1.0, 1.0, True, 0.0)
    assert (loss.clip_low, loss.clip_high, loss.dual_clip, loss.value_clip, loss.kl_in) == (0.2, 0.2, 3.0, 0.5, "none")
    assert config.rollout.samples_per_prompt == 1 and config.rollout.prompts_per_step == 512
    assert config.rollout.prompts_per_step // config.algorithm.mini_batches == 32
