"""Two agents on a token-level toy episode: `a` writes, `b` answers given `a`'s output, and each agent's
reward depends on both (`jaxalign/methods/toy/two_agent.py`). Both mean rewards rise within the default
steps (under a minute on a CPU): the smoke test of the multi-agent episode, learner and stages.

    jaxalign train --config=configs/two_agent_toy.py --workdir=/tmp/jaxalign_two_agent

Argument `:staged` trains only `a` for the first half, then both (stage machinery).
"""

import common
import ml_collections


VARIANTS = ("staged",)  # `--config=configs/two_agent_toy.py:<variant>`


def get_config(arg=None):
    c = common.base_config()
    c.method = "two_agent_toy"
    c.model.spec = "random:tiny"
    common.set_estimator(c, "grpo")
    c.rollout.prompts_per_step = 8
    c.rollout.samples_per_prompt = 4
    c.rollout.max_prompt_len = 16  # b's context: the 6 prompt tokens and a's 8 response tokens
    c.rollout.max_new_tokens = 8
    c.optim.learning_rate = 1e-2
    # Each agent states only what differs from the top-level sections.
    c.agents = ml_collections.ConfigDict({
        "a": ml_collections.ConfigDict({"optim": ml_collections.ConfigDict({"learning_rate": 1e-2})}),
        "b": ml_collections.ConfigDict({"optim": ml_collections.ConfigDict({"learning_rate": 1e-2})}),
    })
    c.train.steps = 12
    c.train.eval_every = 0
    c.train.eval_examples = 8
    c.checkpoint.every = 3
    c.checkpoint.async_save = False
    c.logging.tensorboard = False
    c.logging.report = False
    c.rewards.num_workers = 0
    if arg == "staged":
        c.stages = [dict(steps=6, train=["a"]), dict(steps=-1, train=["a", "b"])]
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; use configs/two_agent_toy.py or configs/two_agent_toy.py:staged")
    c.two_agent_toy = ml_collections.ConfigDict(dict(target_below=16, partner_weight=0.25, num_train=64, num_eval=8,
                                                     prompt_len=6, seed=0))
    return c
