"""RLEV paper setting: Qwen2.5-7B base on sarosavo/RLEV with REINFORCE++, on a TPU slice.

    jaxalign train --config=configs/rlev_qwen25_7b_tpu.py --config.model.spec=/path/to/Qwen2.5-7B \
        --config.rlev.judge_model=/path/to/judge --workdir=gs://bucket/runs/rlev_qwen25_7b

(launch/tpu_vm.sh runs this on every host of a slice.) Paper values: lr 5e-7, rollout batch 128 prompts,
1024 prompt / 1024 response tokens, greedy eval, a model verifier, and one RL setup for REINFORCE++, RLOO
and GRPO (`configs/rlev_qwen25_7b_rloo.py`, `configs/rlev_qwen25_7b_grpo.py` differ only in the estimator).
Not stated by the paper and chosen here: 4 samples per prompt, temperature 1.0, and the shared RL setup
`RL_SETUP` below. The baseline is `--config.rlev.reward=correctness`.

Verifier: `rlev.verifier="model"` judges every response with `rlev.judge_model`, a local HF directory (or
.gguf file) of the judge model; `checkpoints/judge` is a placeholder to point at yours. A judge that is not
there stops the run before any model is loaded (the command line checks every model spec): there is no
silent fallback, because a run verified by rules is a different experiment. To run with the rule verifier
on purpose (weaker on free-form answers): `--config.rlev.verifier=rule --config.rlev.judge_model=`.
"""

import common


VARIANTS = ("reinforce_pp", "rloo", "grpo")  # `--config=configs/rlev_qwen25_7b_tpu.py:<variant>`

JUDGE_PLACEHOLDER = "checkpoints/judge"  # a local HF directory of the verifier model

# The RL setup shared by the three estimators; only the estimator (and what defines it) differs:
# * KL in the loss (k3, beta 0.01), none in the reward: grpo and rloo see sequence rewards only, so the loss
#   is the one place all three can take the same KL term (KL in the reward is a config error for them).
# * Token-mean aggregation and PPO clip 0.2 (no clip-higher, no dual clip).
# Per estimator: REINFORCE++ whitens its returns over the batch, and GRPO skips the group-std division
# (`std_normalization="none"`), which would cancel RLEV's per-prompt scale s(x) (constant within a group).
RL_SETUP = dict(
    advantage=dict(kl_coef=0.0),
    loss=dict(policy_loss="ppo_clip", clip_low=0.2, clip_high=0.2, dual_clip=None, kl_in="loss", kl_coef=0.01,
              kl_estimator="k3", aggregation="token_mean"),
)


def get_config(arg=None):
    c = common.base_config()
    c.method = "rlev"
    c.model.spec = "checkpoints/Qwen2.5-7B"  # a local HF directory (config.json + safetensors + tokenizer)
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    common.set_estimator(c, arg or "reinforce_pp")
    c.algorithm.advantage.update(RL_SETUP["advantage"])
    c.algorithm.loss.update(RL_SETUP["loss"])

    # Fully sharded over the slice: parameters and optimizer state over fsdp, batch over data x fsdp.
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    c.rollout.prompts_per_step = 128
    c.rollout.samples_per_prompt = 4
    c.rollout.max_prompt_len = 1024
    c.rollout.max_new_tokens = 1024
    c.rollout.overlong_prompts = "drop"
    c.algorithm.mini_batches = 4
    c.algorithm.micro_batches = 4
    c.algorithm.loss.logprob_chunk_size = 256
    c.optim.learning_rate = 5e-7

    c.train.steps = 780  # one epoch over 100k prompts at 128 prompts per step
    c.train.eval_every = 50
    c.train.eval_examples = 0
    c.checkpoint.every = 50
    c.checkpoint.keep = 3
    c.logging.samples_every = 10
    c.rewards.num_workers = 16

    # "rlev" is the hub dataset sarosavo/RLEV (read from the local datasets cache); 0 = every row of the
    # train and test splits. Another split name: --config.rlev.eval_split=... The policy prompt is the default
    # one, with no length instruction (response length is what the paper measures).
    # The judge sees the question, the response's final step and the reference: 2048 tokens leave room for
    # a 1024-token question.
    c.rlev = common.rlev_section(dataset="rlev", num_train=0, num_eval=0, verifier="model",
                                 judge_model=JUDGE_PLACEHOLDER, judge_max_prompt_len=2048)
    return c
