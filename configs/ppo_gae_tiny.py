"""PPO with a learned critic on the token-level toy task: a random tiny model, GAE(gamma = lambda = 1),
a separate value model with its own optimizer, value clip 0.5, one sample per prompt (seconds on a CPU).

    jaxalign train --config=configs/ppo_gae_tiny.py --workdir=/tmp/jaxalign_ppo_gae

Argument `:shared` puts the value head on the policy's trunk instead (one update of policy loss +
value_coef * value loss). The reward is the fraction of response tokens with an id below
`toy_token.target_below`; the critic's `critic/value_loss` falls as its values track the returns.
"""

import common
import tiny_test


VARIANTS = ("separate", "shared")  # `--config=configs/ppo_gae_tiny.py:<variant>`


def get_config(arg=None):
    c = tiny_test.get_config("gae")  # the same toy task, model and schedule as the tiny smoke test
    c.algorithm.advantage.gamma = 1.0
    c.algorithm.advantage.lam = 1.0
    c.algorithm.loss.value_clip = 0.5
    c.algorithm.loss.value_coef = 0.5
    mode = arg or "separate"
    if mode == "shared":  # the policy's optimizer trains the head too
        c.critic = common.critic_section("shared", head_init_std=0.0)
    else:
        c.critic = common.critic_section(mode, head_init_std=0.0, learning_rate=1e-3)
    c.rollout.prompts_per_step = 32
    c.rollout.samples_per_prompt = 1
    return c
