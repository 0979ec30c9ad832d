"""Estimator settings that would be silently ignored or misused are config errors that name the fix."""

import pytest

from jaxalign.config import ConfigError, apply_overrides, from_config_dict, load_config_file


def _config(spec, **overrides):
    cd = apply_overrides(load_config_file(spec), {k: str(v) for k, v in overrides.items()})
    return from_config_dict(cd, num_devices=8)


@pytest.mark.parametrize("variant", ["grpo", "rloo"])
def test_kl_in_the_reward_with_a_group_estimator_names_the_kl_in_loss_setting(variant):
    with pytest.raises(ConfigError) as err:
        _config(f"configs/tiny_test.py:{variant}", **{"algorithm.advantage.kl_coef": 0.05})
    message = str(err.value)
    assert f"algorithm.estimator='{variant}'" in message and "algorithm.advantage.kl_coef=0.05" in message
    assert "algorithm.loss.kl_in='loss'" in message and "algorithm.loss.kl_coef=0.05" in message
    # What the message asks for is accepted, and it is what runs the reference pass.
    config = _config(f"configs/tiny_test.py:{variant}", **{"algorithm.loss.kl_in": "loss",
                                                             "algorithm.loss.kl_coef": 0.05})
    assert config.algorithm.needs_reference and config.algorithm.loss_config(1.0).kl_in_loss


def test_kl_in_the_reward_with_dr_grpo_is_rejected_too():
    with pytest.raises(ConfigError, match="algorithm.estimator='dr_grpo'.*kl_in='loss'"):
        _config("configs/tiny_test.py", **{"algorithm.estimator": "dr_grpo", "algorithm.advantage.kl_coef": 0.1})


def test_kl_in_the_reward_is_kept_where_there_is_a_per_token_reward():
    config = _config("configs/tiny_test.py:reinforce_pp")
    assert config.algorithm.advantage_config().kl_coef == 0.01 and config.algorithm.needs_reference
    _config("configs/tiny_test.py:reinforce_pp", **{"algorithm.estimator": "reinforce_pp_baseline"})


def test_reinforce_pp_baseline_rejects_a_discount():
    with pytest.raises(ConfigError, match="reinforce_pp_baseline.*algorithm.advantage.gamma=1 .got 0.9"):
        _config("configs/tiny_test.py:reinforce_pp", **{"algorithm.estimator": "reinforce_pp_baseline",
                                                        "algorithm.advantage.gamma": 0.9})
    assert _config("configs/tiny_test.py:reinforce_pp", **{"algorithm.advantage.gamma": 0.9}).train.steps > 0
