"""A random tiny model learning a token-level toy task: the fast smoke test of the whole loop (seconds).

    jaxalign train --config=configs/tiny_test.py --workdir=/tmp/jaxalign_tiny

The `toy_token` method rewards the fraction of response tokens with an id below `toy_token.target_below`;
it needs no tokenizer or dataset, so it also smoke-tests a fresh TPU/GPU install. Argument `:rloo` or
`:reinforce_pp` switches the estimator (default grpo).
"""

import common
import ml_collections


VARIANTS = ("grpo", "rloo", "reinforce_pp")  # `--config=configs/tiny_test.py:<variant>`


def get_config(arg=None):
    c = common.base_config()
    c.method = "toy_token"
    c.model.spec = "random:tiny"
    common.set_estimator(c, arg or "grpo")
    c.rollout.prompts_per_step = 8
    c.rollout.samples_per_prompt = 4
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
