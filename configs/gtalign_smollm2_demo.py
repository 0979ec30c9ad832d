"""GTAlign's whole pipeline on a CPU: SmolLM2-135M-Instruct, the embedded game set, PPO with a value head.

    jaxalign train --config=configs/gtalign_smollm2_demo.py --workdir=runs/gtalign_demo

A smoke run of the method, not a result: a 135M model without the paper's SFT cold start does not write a
parsable payoff block, so its rewards are 0 and it learns nothing (measured: format 0% before and after).
It exercises the prompts, the four-block parser, the welfare reward, GAE with a value head on the policy's
trunk and the method's eval metrics: 5 min 42 s on a 2-core CPU, 88 s per step. For the paper's setting see
`configs/gtalign_qwen25_3b.py`.
"""

import common


def get_config(arg=None):
    del arg
    c = common.base_config()
    c.method = "gtalign"
    c.model.spec = "smollm2-135m-instruct"
    # The game prompt is ~450 tokens: per-layer remat takes the run's peak memory from 18.6 GB to 5.1 GB
    # (and the update from ~75 s to ~52 s per step on 2 CPU cores; measured 2026-12-02).
    c.model.remat = True
    common.set_estimator(c, "gae")
    c.algorithm.loss.dual_clip = 3.0
    c.algorithm.loss.aggregation = "token_mean"
    c.critic = common.critic_section("shared", head_init_std=0.0)

    c.rollout.prompts_per_step = 8  # one sample each (PPO)
    c.rollout.samples_per_prompt = 1
    c.rollout.max_prompt_len = 512
    c.rollout.max_new_tokens = 64
    c.algorithm.micro_batches = 1
    c.algorithm.recompute_old_logprobs = False
    c.algorithm.loss.logprob_chunk_size = 64
    c.optim.learning_rate = 1e-5

    c.train.steps = 3
    c.train.eval_every = 0
    c.train.eval_examples = 8
    c.checkpoint.every = 2
    c.logging.samples_every = 1

    c.gtalign = common.gtalign_section(num_train=64, num_eval=8)
    return c
