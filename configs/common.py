"""Shared presets for the config files in this directory (not a runnable config itself).

`base_config()` returns every section with defaults; the runnable configs start from it and override what
their setup needs. `estimator_preset(name)` gives the algorithm section of a named RL estimator.
"""

import ml_collections

ESTIMATOR_PRESETS = {
    # REINFORCE++: per-token KL folded into the return, advantages whitened over the whole batch.
    "reinforce_pp": dict(estimator="reinforce_pp", advantage=dict(), loss=dict()),
    # RLOO: leave-one-out baseline within each prompt's group.
    "rloo": dict(estimator="rloo", advantage=dict(), loss=dict()),
    # GRPO without division by the group std (Dr.GRPO style), so RLEV's per-prompt scale survives.
    "grpo": dict(estimator="grpo", advantage=dict(), loss=dict()),
}


def estimator_preset(name: str) -> ml_collections.ConfigDict:
    """The `algorithm.estimator/advantage/loss` fields of a named estimator preset."""
    if name not in ESTIMATOR_PRESETS:
        raise ValueError(f"unknown estimator preset {name!r}; known: {', '.join(ESTIMATOR_PRESETS)}")
    return ml_collections.ConfigDict(ESTIMATOR_PRESETS[name])


def base_config() -> ml_collections.ConfigDict:
    """Every section with defaults. Sizes here suit a small CPU run; runnable configs override them."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = "rlev"

    c.model = ml_collections.ConfigDict(dict(spec="random:tiny", param_dtype="float32", dtype="float32", remat=False))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.rollout = ml_collections.ConfigDict(
        dict(
            prompts_per_step=8,
            samples_per_prompt=4,
            max_prompt_len=128,
            max_new_tokens=32,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            overlong_prompts="truncate",
            dynamic_sampling=False,
            dynamic_sampling_tol=1e-6,
            dynamic_sampling_max_tries=3,
            eval_max_new_tokens=0,
        )
    )
    c.algorithm = ml_collections.ConfigDict(
        dict(mini_batches=1, micro_batches=1, epochs=1, logprob_chunk_size=0, **ESTIMATOR_PRESETS["grpo"])
    )
    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-6))
    c.train = ml_collections.ConfigDict(dict(steps=10, eval_every=0, eval_examples=0))
    c.checkpoint = ml_collections.ConfigDict(dict(every=0, keep=3, async_save=True))
    c.logging = ml_collections.ConfigDict(
        dict(progress=True, tensorboard=True, samples_every=1, samples_per_log=4, report=True)
    )
    c.rewards = ml_collections.ConfigDict(dict(num_workers=2, timeout_s=30.0))
    return c


def set_estimator(c: ml_collections.ConfigDict, name: str) -> None:
    """Replaces the estimator and its advantage/loss sections with the named preset."""
    preset = estimator_preset(name)
    c.algorithm.estimator = preset.estimator
    c.algorithm.advantage = preset.advantage
    c.algorithm.loss = preset.loss


def rlev_section(reward: str = "human_aligned", dataset: str = "embedded") -> ml_collections.ConfigDict:
    """The `rlev` method section: reward kind, value scale alpha (paper: 10) and dataset."""
    return ml_collections.ConfigDict(dict(reward=reward, alpha=10.0, dataset=dataset))
