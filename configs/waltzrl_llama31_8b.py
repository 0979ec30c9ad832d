"""WaltzRL paper setting: two Llama-3.1-8B-Instruct agents, WildGuard judge, WildJailbreak + OR-Bench-80K.

On a TPU slice (every host runs the same command; launch/tpu_vm.sh does that):

    jaxalign train --config=configs/waltzrl_llama31_8b.py \
        --config.model.spec=/mnt/models/Llama-3.1-8B-Instruct --config.waltzrl.judge_model=/mnt/models/wildguard \
        --workdir=gs://bucket/runs/waltzrl_llama31_8b

    ACCELERATOR=v5p-32 WORKDIR=gs://bucket/runs/waltzrl_llama31_8b CONFIG=configs/waltzrl_llama31_8b.py \
        launch/tpu_vm.sh all --config.model.spec=/mnt/models/Llama-3.1-8B-Instruct \
        --config.waltzrl.judge_model=/mnt/models/wildguard

On one node with 8 GPUs (`:gpu8`):

    CONFIG=configs/waltzrl_llama31_8b.py:gpu8 WORKDIR=runs/waltzrl_llama31_8b launch/gpu.sh \
        --config.model.spec=/models/Llama-3.1-8B-Instruct --config.waltzrl.judge_model=/models/wildguard
    # or directly: jaxalign train --config=configs/waltzrl_llama31_8b.py:gpu8 --workdir=runs/waltzrl_llama31_8b ...

`model.spec` and `judge_model` are local HF directories (config.json, safetensors, tokenizer), present on
every host: Llama-3.1-8B-Instruct for both agents (each starts from it and keeps it as its KL reference) and
`allenai/wildguard` for the judge. The two datasets are read with `datasets` from its local cache (download
the gated `allenai/wildjailbreak` and `bench-llm/or-bench` once), or from local copies of the dataset
repositories: `--config.waltzrl.wildjailbreak.source=/data/wildjailbreak
--config.waltzrl.orbench.source=/data/or-bench` (a single file per split goes in `source` and `eval_source`).

Paper values (arXiv 2510.08240, App. B): REINFORCE++ for each agent (k1 KL to the reference folded into the
return with beta 0.01, advantages whitened over the agent's batch, PPO clip 0.2, per-sequence token mean as in
eqn 4), rollout and training batch 32 prompts x 1 sample, lr 5e-7 for both agents, 512 new tokens per turn,
4096-token prompts, T_max = 1, alpha 0.65 / lam 0.25 / gamma 0.1. Stage 1 trains only the feedback agent;
stage 2 trains both with lam = 0. Data: 9,984 adversarial-harmful WildJailbreak train prompts and 9,984
OR-Bench-80K prompts (de-duplicated against OR-Bench-Hard-1K), one epoch = 624 steps; the paper's two halves
of 10k prompts are the two equal stages of 312 steps (one shuffle of the pool, each stage reads its half).
The held-out set is 256 WildJailbreak eval (adversarial harmful) + 256 OR-Bench-Hard-1K prompts, played in
one batch; `eval/asr`, `eval/orr`, `eval/ftr`, `eval/label_acc`, `eval/f1` are the paper's metrics on it.

Not stated by the paper and chosen here: sampling temperature 1.0, Adam with the library's defaults
(grad-norm clip 1.0), greedy eval, tau_A / tau_B with probability 0.5 each. Parameters are float32 master
weights with bfloat16 compute: an update of 5e-7 is far below bfloat16's resolution at the weights'
magnitude, so bfloat16 master weights would not move. Memory: per agent float32 parameters, Adam moments
and reference, and the sampler's bfloat16 copy (about 145 GB for 8B), both agents plus the judge about
310 GB before activations: a v5p-16/-32 or v4-32 slice, or 8 x 80 GB GPUs (the start-up estimate for
`:gpu8` is 73 GiB per GPU). The batch of 32 must divide over the mesh's
data*fsdp in every micro-batch: on a slice of 32 chips add `--config.algorithm.micro_batches=1`; beyond
that put the extra chips on `--config.mesh.tensor`.
Variants: `:gpu8` (a fixed 8-way fsdp mesh, smaller micro-batches).
"""

import common
import ml_collections

# `jaxalign.methods.waltzrl.data.SourceSpec` fields; every one can be overridden from the command line.
WILDJAILBREAK = dict(source="allenai/wildjailbreak", name="train", split="train", eval_source=None, eval_name="eval",
                     eval_split=None, data_types=["adversarial_harmful"])
ORBENCH = dict(source="bench-llm/or-bench", name="or-bench-80k", split="train", eval_source=None,
               eval_name="or-bench-hard-1k", eval_split=None, harmful=False)


VARIANTS = ("gpu8",)  # `--config=configs/waltzrl_llama31_8b.py:<variant>`


def get_config(arg=None):
    c = common.base_config()
    c.method = "waltzrl"
    c.model.spec = "/models/Llama-3.1-8B-Instruct"  # a local HF directory; both agents start from it
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    common.set_estimator(c, "reinforce_pp")
    c.algorithm.loss.aggregation = "seq_mean_token_mean"  # eqn 4: (1/|y|) sum over a sequence's tokens

    # Fully sharded over the slice: parameters and optimizer state over fsdp, the batch over data x fsdp.
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    c.rollout.prompts_per_step = 32
    c.rollout.samples_per_prompt = 1
    c.rollout.max_prompt_len = 4096
    c.rollout.max_new_tokens = 512
    c.rollout.temperature = 1.0
    c.algorithm.mini_batches = 1  # training batch = rollout batch = 32: one update per step
    c.algorithm.micro_batches = 2
    c.algorithm.loss.logprob_chunk_size = 256
    c.optim.learning_rate = 5e-7

    c.train.steps = 624  # one epoch over 19,968 prompts at 32 per step
    c.train.eval_every = 104
    c.train.eval_examples = 0  # the whole held-out set (256 + 256 prompts)
    c.checkpoint.every = 52
    c.checkpoint.keep = 3
    c.logging.samples_every = 10
    c.rewards.num_workers = 0  # the judge runs on the mesh; no reward processes

    c.waltzrl = ml_collections.ConfigDict(dict(
        dataset="wildjailbreak+orbench", wildjailbreak=WILDJAILBREAK, orbench=ORBENCH,
        max_examples=10240, eval_fraction=0.025,  # per source: 9,984 train + 256 held out
        skip_malformed=False, t_max=1, shared_policy=False, alpha=0.65, lam=0.25, gamma=0.1,
        feedback_reward="dir_label", conversation_sample="mix", p_tau_a=0.5,
        judge="wildguard", judge_model="/models/wildguard", judge_max_new_tokens=128, judge_dtype="bfloat16",
        seed=0))
    c.agents = ml_collections.ConfigDict({
        "conversation": ml_collections.ConfigDict({}),
        "feedback": ml_collections.ConfigDict({}),
    })
    c.stages = [dict(steps=312, train=["feedback"], overrides={"lam": 0.25}),
                dict(steps=-1, train=["conversation", "feedback"], overrides={"lam": 0.0})]

    if arg == "gpu8":
        c.mesh.data = 1
        c.mesh.fsdp = 8
        c.mesh.tensor = 1
        c.algorithm.micro_batches = 4  # one sequence per GPU per micro-batch
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use :gpu8 (or nothing for a TPU slice)")
    return c
