"""RLEV paper setting: Qwen2.5-7B base on sarosavo/RLEV with REINFORCE++, on a TPU slice.

    jaxalign train --config=configs/rlev_qwen25_7b_tpu.py --config.model.spec=/path/to/Qwen2.5-7B \
        --workdir=gs://bucket/runs/rlev_qwen25_7b

(launch/tpu_vm.sh runs this on every host of a slice.) Paper values: lr 5e-7, rollout batch 128 prompts,
1024 prompt / 1024 response tokens, greedy eval. Not stated by the paper and chosen here: 4 samples per prompt,
temperature 1.0. The baseline is `--config.rlev.reward=correctness`.
"""

import common


VARIANTS = ("reinforce_pp", "rloo", "grpo")  # `--config=configs/rlev_qwen25_7b_tpu.py:<variant>`


def get_config(arg=None):
    c = common.base_config()
    c.method = "rlev"
    c.model.spec = "checkpoints/Qwen2.5-7B"  # a local HF directory (config.json + safetensors + tokenizer)
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    common.set_estimator(c, arg or "reinforce_pp")

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
    # train and test splits. Another split name: --config.rlev.eval_split=...
    c.rlev = common.rlev_section(dataset="rlev", num_train=0, num_eval=0)
    return c
