"""PPO with a learned critic on the token-level toy task: a random tiny model, GAE(gamma = lambda = 1),
a separate value model with its own optimizer, value clip 0.5, one sample per prompt (seconds on a CPU).

    jaxalign train --config=configs/ppo_gae_tiny.py --workdir=/tmp/jaxalign_ppo_gae

Argument `:shared` puts the value head on the policy's trunk instead (one update of policy loss +
value_coef * value loss). The reward is the fraction of response tokens with an id below
`toy_token.target_below`; the critic's `critic/value_loss` falls as its values track the returns.
"""

import common
import ml_collections


def get_config(arg=None):
    c = common.base_config()
    c.method = "toy_token"
    c.model.spec = "random:tiny"
    common.set_estimator(c, "gae")
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
    c.rollout.max_prompt_len = 8
    c.rollout.max_new_tokens = 8
    c.optim.learning_rate = 1e-2
    c.train.steps = 16
    c.train.eval_every = 8
    c.train.eval_examples = 8
    c.checkpoint.every = 4
    c.checkpoint.async_save = False
    c.logging.progress = True
    c.logging.tensorboard = False
    c.logging.report = False
    c.rewards.num_workers = 1
    c.rewards.timeout_s = 30.0
    c.toy_token = ml_collections.ConfigDict(dict(target_below=16, num_train=64, num_eval=8, prompt_len=6))
    return c
