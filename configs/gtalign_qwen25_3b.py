"""GTAlign paper setting: PPO with a learned critic on the mutual-welfare reward, Qwen2.5-3B-Instruct.

    jaxalign train --config=configs/gtalign_qwen25_3b.py --config.model.spec=/path/to/Qwen2.5-3B-Instruct \
        --config.gtalign.dataset=/path/to/train.parquet --config.gtalign.eval_dataset=/path/to/test.parquet \
        --workdir=gs://bucket/runs/gtalign_3b

The reference's PPO recipe: one response per prompt at temperature 1.0, 512 prompts per step, GAE with
gamma = lambda = 1 and advantages whitened over the batch, PPO clip 0.2 with dual clip 3.0, token-mean loss,
one epoch in mini-batches of 32, no KL term anywhere, actor lr 1e-6 and a separate critic at lr 2e-6 with
value clip 0.5. The paper starts from an SFT'd checkpoint (cold start on the format): without it a model
rarely writes a parsable payoff block and rewards stay at 0. Mixed-source data: add
`--config.gtalign.normalize=zscore` (the reference's per-source standardisation) and
`--config.gtalign.llm_terms=pareto`. Ablations: `--config.gtalign.reward=linear|user|llm`.
"""

import common


def get_config(arg=None):
    del arg
    c = common.base_config()
    c.method = "gtalign"
    c.model.spec = "checkpoints/Qwen2.5-3B-Instruct"  # a local HF directory, ideally after format SFT
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    common.set_estimator(c, "gae")
    c.algorithm.loss.dual_clip = 3.0
    c.algorithm.loss.aggregation = "token_mean"
    c.algorithm.loss.value_clip = 0.5
    c.critic = common.critic_section("separate", learning_rate=2e-6)

    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    c.rollout.prompts_per_step = 512
    c.rollout.samples_per_prompt = 1
    c.rollout.max_prompt_len = 2048
    c.rollout.max_new_tokens = 4096
    c.rollout.temperature = 1.0
    c.rollout.overlong_prompts = "drop"
    c.algorithm.mini_batches = 16  # 512 / 32
    c.algorithm.micro_batches = 4
    c.algorithm.epochs = 1
    c.algorithm.loss.logprob_chunk_size = 256
    c.optim.learning_rate = 1e-6

    c.train.steps = 150
    c.train.eval_every = 5
    c.train.eval_examples = 0
    c.checkpoint.every = 10
    c.logging.samples_every = 5
    c.rewards.num_workers = 16

    c.gtalign = common.gtalign_section()  # the embedded set until --config.gtalign.dataset names a file
    return c
