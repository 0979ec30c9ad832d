"""WaltzRL on the CPU: two SmolLM2-135M-Instruct agents (conversation and feedback), the rule judge and the
embedded request set; stage 1 trains only the feedback agent (lam = 0.25), stage 2 both (lam = 0).

    jaxalign train --config=configs/waltzrl_smollm2_demo.py --workdir=runs/waltzrl_demo

Baselines: `:collab` evaluates the two untrained agents collaborating (`jaxalign eval
--config=configs/waltzrl_smollm2_demo.py:collab`), `:single` is single-agent RL of the conversation agent
on R_c only (no feedback agent). REINFORCE++ (k1 KL in the return, beta 0.01, per-agent whitening, clip 0.2)
for both agents, as in the paper, at a learning rate a 135M model moves with in a few steps.
"""

import common
import ml_collections


VARIANTS = ("single", "collab")  # `--config=configs/waltzrl_smollm2_demo.py:<variant>`


def get_config(arg=None):
    c = common.base_config()
    c.method = "waltzrl"
    c.model.spec = "smollm2-135m-instruct"
    # Two trained agents with references on a 24 GB machine: recompute activations in the backward pass
    # (without it, the process was killed for memory at about 17 GB).
    c.model.remat = True
    common.set_estimator(c, "reinforce_pp")
    c.rollout.prompts_per_step = 8
    c.rollout.samples_per_prompt = 1
    c.rollout.max_prompt_len = 512
    c.rollout.max_new_tokens = 48
    c.rollout.temperature = 0.7  # a 135M model at temperature 1 rarely writes a parsable JSON object
    c.algorithm.micro_batches = 1  # micro-batches change memory, not the maths (token-weighted losses add up exactly)
    c.algorithm.loss.logprob_chunk_size = 64
    c.optim.learning_rate = 5e-6
    c.train.steps = 8
    c.train.eval_examples = 28
    c.checkpoint.every = 2
    c.rewards.num_workers = 0
    c.waltzrl = ml_collections.ConfigDict(dict(dataset="embedded", t_max=1, alpha=0.65, lam=0.25, gamma=0.1,
                                               feedback_reward="dir_label", conversation_sample="mix",
                                               p_tau_a=0.5, judge="rule", seed=0,
                                               # SmolLM2-135M does not open the JSON object on its own (parse
                                               # rate 0 without this); the paper's 8B model needs no prefix.
                                               feedback_prefix='{"reasoning": "', feedback_stop="}"))
    # The feedback agent writes a JSON object: give it more tokens per turn.
    c.agents = ml_collections.ConfigDict({
        "conversation": ml_collections.ConfigDict({}),
        "feedback": ml_collections.ConfigDict({"rollout": ml_collections.ConfigDict({"max_new_tokens": 96})}),
    })
    c.stages = [dict(steps=4, train=["feedback"], overrides={"lam": 0.25}),
                dict(steps=-1, train=["conversation", "feedback"], overrides={"lam": 0.0})]
    if arg == "single":
        c.waltzrl.t_max = 0
        c.agents = ml_collections.ConfigDict({"conversation": ml_collections.ConfigDict({})})
        c.stages = [dict(steps=-1, train=["conversation"])]
    elif arg == "collab":
        c.train.steps = 1  # evaluated, not trained: jaxalign eval --config=...:collab
        c.stages = [dict(steps=-1, train=[])]
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use :single or :collab")
    return c
