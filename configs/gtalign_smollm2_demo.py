"""GTAlign on a CPU in two runs: SFT cold start on the embedded cold-start set, then GTAlign RL from it.

    jaxalign sft   --config=configs/gtalign_smollm2_demo.py --workdir=runs/gtalign_sft
    jaxalign train --config=configs/gtalign_smollm2_demo.py --config.model.init_from=runs/gtalign_sft \
        --workdir=runs/gtalign_demo

(`make demo-gtalign` runs both.) Without `--config.model.init_from`, `jaxalign train` starts RL from the base
SmolLM2-135M-Instruct, which does not write the four-block format: every reward is 0 and nothing is learnt.

SFT (`sft` section): next-token loss on the assistant turns of `embedded:gtalign_coldstart` (560 chats,
`jaxalign/methods/gtalign/coldstart.py`; its user turns are exactly the RL prompts, none of them a held-out
question). On a 2-core CPU a chat is ~790 tokens (a ~500-token prompt and a ~290-token reply, the longest
827), batches are padded to `max_len` = 832, and with per-layer remat a step of 4 chats took 49.8 s (about
67 padded tokens/s); the 36 steps, loading and two eval-loss passes over 16 held-out chats took 32 min 27 s
(held-out loss 1.550 -> 0.226, peak memory 8.9 GB; measured 2026-12-03). 36 x 4 = 144 chats is a quarter
of the set; `--config.sft.steps` trades time for more. lr 1e-4 after 4 warmup steps: a format is learnt fast, and few steps are affordable here.

RL: PPO with a value head on the trunk (GAE gamma = lambda = 1, dual clip 3, token-mean loss), one sample
for each of 8 prompts per step, 4 steps, replies up to 384 new tokens (the cold-start replies are at most
~330), greedy eval on 32 held-out questions before (= after SFT) and after. Memory: per-layer remat.
For the paper's setting see `configs/gtalign_qwen25_3b.py`.
"""

import common


def get_config(arg=None):
    del arg
    c = common.base_config()
    c.method = "gtalign"
    c.model.spec = "smollm2-135m-instruct"
    # The game prompt is ~500 tokens: per-layer remat takes the run's peak memory from 18.6 GB to 5.1 GB
    # (and the update from ~75 s to ~52 s per step on 2 CPU cores; measured 2026-12-02 with 64 new tokens).
    c.model.remat = True

    c.sft = common.sft_section(
        "embedded:gtalign_coldstart", learning_rate=1e-4, optim=dict(warmup_steps=4),
        batch_size=4, steps=36, max_len=832, overlong="drop", eval_examples=16, eval_batch_size=8)

    common.set_estimator(c, "gae")
    c.algorithm.loss.dual_clip = 3.0
    c.algorithm.loss.aggregation = "token_mean"
    c.critic = common.critic_section("shared", head_init_std=0.0)

    c.rollout.prompts_per_step = 8  # one sample each (PPO)
    c.rollout.samples_per_prompt = 1
    c.rollout.max_prompt_len = 512
    c.rollout.max_new_tokens = 384
    c.algorithm.micro_batches = 1
    c.algorithm.recompute_old_logprobs = False
    c.algorithm.loss.logprob_chunk_size = 64
    c.optim.learning_rate = 1e-5

    c.train.steps = 4
    c.train.eval_every = 0
    c.train.eval_examples = 32
    c.checkpoint.every = 2
    c.logging.samples_every = 1

    c.gtalign = common.gtalign_section(num_train=64, num_eval=32)
    return c
