"""Every runnable config in configs/ loads, validates on 8 devices and documents its command."""

import math
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


@pytest.mark.parametrize("spec,num_devices", [("configs/waltzrl_llama31_8b.py", 8),
                                              ("configs/waltzrl_llama31_8b.py", 16),
                                              ("configs/waltzrl_llama31_8b.py:gpu8", 8)])
def test_waltzrl_paper_config_follows_the_paper(spec, num_devices):
    from jaxalign.config import apply_overrides
    from jaxalign.methods import build_method
    from jaxalign.methods.waltzrl.data import source_spec

    overrides = {"model.spec": "/ckpt/llama", "waltzrl.orbench.eval_source": "/d/ob.csv"}
    cd = apply_overrides(load_config_file(spec), overrides)
    config = from_config_dict(cd, num_devices=num_devices)
    assert config.method == "waltzrl" and list(config.agents) == ["conversation", "feedback"]
    for agent in config.agents.values():
        r, advantage, loss = agent.rollout, agent.algorithm.advantage_config(), agent.algorithm.loss_config(1.0)
        assert agent.model.spec == "/ckpt/llama" and agent.model.dtype == "bfloat16"
        assert agent.model.param_dtype == "float32"  # master weights: a 5e-7 step is lost in bfloat16
        assert agent.algorithm.estimator == "reinforce_pp" and loss.aggregation == "seq_mean_token_mean"
        assert (advantage.kl_coef, advantage.kl_estimator, advantage.whiten) == (0.01, "k1", True)
        assert (loss.policy_loss, loss.clip_low, loss.clip_high, loss.kl_in) == ("ppo_clip", 0.2, 0.2, "reward")
        assert (r.prompts_per_step, r.samples_per_prompt, r.max_new_tokens, r.max_prompt_len) == (32, 1, 512, 4096)
        assert agent.optim.optim_config().learning_rate == 5e-7 and agent.algorithm.mini_batches == 1
    assert config.mesh.resolved(num_devices) == (1, num_devices, 1)
    stage1, stage2 = config.stages
    assert (stage1.train, stage2.train) == (("feedback",), ("conversation", "feedback"))
    assert stage1.steps * 2 == config.train.steps and stage2.steps == -1
    assert (stage1.overrides["lam"], stage2.overrides["lam"]) == (0.25, 0.0)

    method = build_method(config)  # the judge model is loaded by `setup`, not here
    c = method.config
    assert (c.t_max, c.alpha, c.lam, c.gamma, c.judge, c.dataset) == (1, 0.65, 0.25, 0.1, "wildguard",
                                                                      "wildjailbreak+orbench")
    wj, ob = source_spec("wildjailbreak", c.wildjailbreak), source_spec("orbench", c.orbench)
    assert (wj.source, wj.name, wj.eval_name, wj.data_types) == ("allenai/wildjailbreak", "train", "eval",
                                                                 ("adversarial_harmful",))
    assert (ob.name, ob.eval_name, ob.eval_source, ob.harmful) == ("or-bench-80k", "or-bench-hard-1k", "/d/ob.csv",
                                                                   False)
    per_source_train = c.max_examples - math.ceil(c.eval_fraction * c.max_examples)
    assert 2 * per_source_train == config.train.steps * 32  # one epoch over both sources


RLEV_PAPER = [("rlev_qwen25_7b_tpu", "reinforce_pp"), ("rlev_qwen25_7b_rloo", "rloo"), ("rlev_qwen25_7b_grpo", "grpo")]


@pytest.mark.parametrize("name,estimator", RLEV_PAPER)
def test_rlev_paper_configs_follow_one_recipe(name, estimator):
    """The paper keeps the RL setup identical across REINFORCE++, RLOO and GRPO: the three configs differ
    only in the estimator (and GRPO's missing std division, which would cancel s(x))."""
    from jaxalign.methods import build_method
    from jaxalign.methods.rlev.prompts import POLICY_SYSTEM_PROMPT

    config = from_config_dict(load_config_file(f"configs/{name}.py"), num_devices=8)
    loss, advantage = config.algorithm.loss_config(1.0), config.algorithm.advantage_config()
    assert config.method == "rlev" and config.algorithm.estimator == estimator
    assert (loss.policy_loss, loss.clip_low, loss.clip_high, loss.dual_clip) == ("ppo_clip", 0.2, 0.2, None)
    assert (loss.kl_in, loss.kl_estimator, loss.kl_coef, advantage.kl_coef) == ("loss", "k3", 0.01, 0.0)
    assert loss.aggregation == "token_mean" and config.algorithm.needs_reference
    assert advantage.std_normalization == ("none" if estimator == "grpo" else "group")
    assert advantage.whiten and (advantage.gamma, advantage.eps) == (1.0, 1e-6)
    # The paper's sizes: lr 5e-7, 128 prompts per step, 1024 prompt / 1024 response tokens.
    r = config.rollout
    assert (r.prompts_per_step, r.samples_per_prompt, r.max_prompt_len, r.max_new_tokens) == (128, 4, 1024, 1024)
    assert config.optim.optim_config().learning_rate == 5e-7 and config.model.param_dtype == "float32"
    # A model verifier with a named judge; the policy prompt has no length instruction.
    method = build_method(config)
    assert (method.config.verifier, method.config.judge_model) == ("model", "checkpoints/judge")
    assert method.config.dataset == "rlev" and method.config.reward == "human"
    system = method.messages({"prompt": "What is 2 + 3?"})[0]["content"]
    assert system == POLICY_SYSTEM_PROMPT and "sentence" not in system and "brief" not in system
    assert '"Answer: X"' in system


def test_rlev_paper_configs_differ_only_in_the_estimator():
    import json

    def resolved(name):
        d = json.loads(from_config_dict(load_config_file(f"configs/{name}.py"), num_devices=8).to_json())
        for section in [d, *d.get("agents", {}).values()]:  # the estimator and what defines it
            if "algorithm" in section:
                section["algorithm"].pop("estimator")
                section["algorithm"]["advantage"].pop("std_normalization", None)
        return d

    first, *others = [resolved(name) for name, _ in RLEV_PAPER]
    assert all(other == first for other in others)


def test_rlev_paper_config_without_its_judge_stops_before_loading():
    """The placeholder judge path is checked before any model loads; the rule verifier is an explicit choice."""
    from jaxalign import cli
    from jaxalign.config import apply_overrides
    from jaxalign.models.registry import ModelSpecError

    cd = apply_overrides(load_config_file("configs/rlev_qwen25_7b_tpu.py"), {"model.spec": "random:tiny"})
    with pytest.raises(ModelSpecError, match="rlev.judge_model.*checkpoints/judge"):
        cli._validated(cd)
    rule = apply_overrides(load_config_file("configs/rlev_qwen25_7b_tpu.py"),
                           {"model.spec": "random:tiny", "rlev.verifier": "rule", "rlev.judge_model": ""})
    assert cli._validated(rule).method_config["verifier"] == "rule"


def test_rlev_demo_keeps_a_brevity_hint():
    from jaxalign.methods import build_method
    from jaxalign.methods.rlev.prompts import BRIEF_POLICY_SYSTEM_PROMPT

    config = from_config_dict(load_config_file("configs/rlev_smollm2_demo.py"), num_devices=8)
    assert build_method(config).messages({"prompt": "q"})[0]["content"] == BRIEF_POLICY_SYSTEM_PROMPT
    assert "brief" in BRIEF_POLICY_SYSTEM_PROMPT
