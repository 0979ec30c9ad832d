"""Config system: typed conversion, overrides, and a clear error for each kind of bad input."""

import pytest

from jaxalign.config import ConfigError, apply_overrides, from_config_dict, load_config_file

TINY = "configs/tiny_test.py"


def _load(**overrides):
    cd = load_config_file(TINY)
    return apply_overrides(cd, {k: str(v) for k, v in overrides.items()})


def test_typed_and_frozen():
    config = from_config_dict(_load(), num_devices=8)
    assert config.rollout.samples_per_step == 32 and config.method == "toy_token"
    assert config.algorithm.advantage_config().estimator == "grpo"
    assert config.algorithm.loss_config(0.7).temperature == 0.7
    with pytest.raises(Exception):
        config.rollout.prompts_per_step = 3  # frozen


def test_overrides_are_typed():
    cd = _load(**{"rollout.max_new_tokens": "12", "algorithm.loss.clip_high": "0.28", "logging.progress": "true"})
    assert cd.rollout.max_new_tokens == 12 and cd.algorithm.loss.clip_high == 0.28 and cd.logging.progress is True
    cd = _load(**{"algorithm.loss.dual_clip": "3.0"})  # a None default accepts a literal
    assert cd.algorithm.loss.dual_clip == 3.0


def test_config_arg_selects_variant():
    assert load_config_file(TINY + ":rloo").algorithm.estimator == "rloo"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"rollout.learning_rate": "1"}, "rollout has no field 'learning_rate'"),
        ({"algorithm.lossy.x": "1"}, "no field 'lossy'"),
        ({"rollout.max_new_tokens": "many"}, "expected an integer"),
    ],
)
def test_unknown_or_mistyped_override_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _load(**overrides)


@pytest.mark.parametrize(
    "overrides, num_devices, fragment",
    [
        ({"rollout.prompts_per_step": 3}, 8, "batch-parallel size data\\*fsdp = 8"),
        ({"algorithm.mini_batches": 5}, 8, "not divisible by algorithm.mini_batches=5"),
        ({"algorithm.micro_batches": 3}, 8, "not divisible by\nalgorithm.micro_batches|algorithm.micro_batches=3"),
        ({"algorithm.estimator": "ppo2"}, 8, "known estimators: .*grpo.*rloo"),
        ({"mesh.data": 16}, 8, "larger than the 8 available devices"),
        ({"mesh.data": 2, "mesh.fsdp": 2}, 8, "does not use all 8 devices"),
        ({"rollout.samples_per_prompt": 0}, 8, "rollout.samples_per_prompt must be positive"),
        ({"train.steps": -1}, 8, "train.steps must be positive"),
        ({"rollout.overlong_prompts": "cut"}, 8, "known modes: truncate, drop"),
        ({"algorithm.loss.aggregation": "mean"}, 8, "algorithm.loss: aggregation must be one of"),
        ({"algorithm.recompute_old_logprobs": "false", "algorithm.mini_batches": 2}, 8, "exact only with one"),
        ({"mesh.fsdp": 3}, 8, "does not divide the 8 devices"),
    ],
)
def test_validation_errors_name_the_problem(overrides, num_devices, fragment):
    cd = _load(**overrides)
    with pytest.raises(ConfigError, match=fragment):
        from_config_dict(cd, num_devices=num_devices)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file("configs/no_such_config.py")


def test_method_section_is_checked_when_the_method_is_built():
    from jaxalign.methods import build_method

    cd = apply_overrides(load_config_file("configs/rlev_smollm2_demo.py"), {"rlev.reward": "bogus"})
    with pytest.raises(ConfigError, match="config section 'rlev'.*unknown mode 'bogus'"):
        build_method(from_config_dict(cd, num_devices=8))
    cd = _load(method="nope")
    with pytest.raises(ConfigError, match="unknown method 'nope'; known methods: .*toy_token"):
        build_method(from_config_dict(cd, num_devices=8))


def test_rlev_section_lists_every_rlev_field_so_each_can_be_overridden():
    import dataclasses

    from jaxalign.methods.rlev import RLEVConfig

    cd = load_config_file("configs/rlev_smollm2_demo.py")
    assert set(cd.rlev.keys()) == {f.name for f in dataclasses.fields(RLEVConfig)}
    cd = apply_overrides(cd, {"rlev.value_source": "weak", "rlev.eval_dataset": "exams/eval.jsonl"})
    config = from_config_dict(cd, num_devices=8)
    assert RLEVConfig.from_dict(config.method_config).value_source == "weak"
    assert config.method_config.eval_dataset == "exams/eval.jsonl"


GAE = "configs/ppo_gae_tiny.py"


def _gae(**overrides):
    return apply_overrides(load_config_file(GAE), {k: str(v) for k, v in overrides.items()})


def test_critic_section_is_typed_and_its_optim_overrides_the_policy_optim():
    config = from_config_dict(_gae(**{"critic.optim.learning_rate": "3e-4"}), num_devices=8)
    assert config.critic.mode == "separate" and config.critic.head_init_std == 0.0
    critic_optim, policy_optim = config.critic.optim_config(config.optim), config.optim.optim_config()
    assert critic_optim.learning_rate == 3e-4 and policy_optim.learning_rate == 1e-2
    assert critic_optim.grad_clip_norm == policy_optim.grad_clip_norm  # not given: the policy's value


def test_gae_without_a_critic_section_names_the_fix():
    cd = load_config_file(TINY)  # grpo, no critic section
    cd = apply_overrides(cd, {"algorithm.estimator": "gae"})
    with pytest.raises(ConfigError, match="needs a 'critic' section.*critic_section"):
        from_config_dict(cd, num_devices=8)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"critic.mode": "tied"}, "critic.mode='tied' is unknown; use 'separate'"),
        ({"critic.head_init_std": -1.0}, "critic.head_init_std must be >= 0"),
        ({"critic.critic_warmup_steps": -1}, "critic.critic_warmup_steps must be >= 0"),
        ({"critic.critic_warmup_steps": 16}, "leaves no policy update in train.steps=16"),
        ({"critic.mode": "shared", "critic.critic_warmup_steps": 2}, "critic_warmup_steps needs critic.mode='separate'"),
        ({"critic.mode": "shared", "algorithm.loss.value_coef": 0.0}, "value_coef must be > 0"),
        ({"critic.optim.learning_rate": -1.0}, "critic.optim: learning_rate must be > 0"),
        ({"algorithm.estimator": "grpo"}, "samples_per_prompt=1 every advantage is 0"),
        ({"rollout.dynamic_sampling": True}, "dynamic_sampling .*samples_per_prompt >= 2"),
    ],
)
def test_critic_config_errors_name_the_problem(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_config_dict(_gae(**overrides), num_devices=8)


def test_unknown_critic_field_is_an_error():
    import ml_collections

    cd = load_config_file(GAE)
    cd.unlock()
    cd.critic.lr = 1e-3
    with pytest.raises(ConfigError, match=r"critic: unknown field\(s\) \['lr'\]"):
        from_config_dict(cd, num_devices=8)
    cd = load_config_file(GAE)
    cd.unlock()
    cd.critic.optim = ml_collections.ConfigDict({"lr": 1e-3})
    with pytest.raises(ConfigError, match=r"critic.optim: unknown field\(s\) \['lr'\]"):
        from_config_dict(cd, num_devices=8)


def test_gae_accepts_one_sample_per_prompt_and_a_larger_group():
    assert from_config_dict(_gae(), num_devices=8).rollout.samples_per_prompt == 1
    config = from_config_dict(_gae(**{"rollout.samples_per_prompt": 4, "rollout.prompts_per_step": 8}), num_devices=8)
    assert config.rollout.samples_per_step == 32
