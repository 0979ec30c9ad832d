"""Shared presets for the config files in this directory (not a runnable config itself).

`base_config()` returns every section with defaults; the runnable configs start from it and override what
their setup needs. `estimator_preset(name)` gives the algorithm section of a named RL estimator.
"""

import dataclasses

import ml_collections

from jaxalign.config import LORA_TARGETS

ESTIMATOR_PRESETS = {
    # REINFORCE++: per-token KL (k1, beta 0.01) folded into the return, advantages whitened over the batch.
    "reinforce_pp": dict(
        estimator="reinforce_pp",
        advantage=dict(kl_coef=0.01, kl_estimator="k1", whiten=True),
        loss=dict(policy_loss="ppo_clip", clip_low=0.2, clip_high=0.2, kl_in="reward", aggregation="token_mean"),
    ),
    # RLOO: leave-one-out baseline within each prompt's group.
    "rloo": dict(
        estimator="rloo",
        advantage=dict(kl_coef=0.0),
        loss=dict(policy_loss="ppo_clip", kl_in="loss", kl_coef=0.01, kl_estimator="k3", aggregation="token_mean"),
    ),
    # GRPO without division by the group std (Dr.GRPO style): a group-std division would cancel a reward
    # scale that is constant within a prompt's group (RLEV's s(x)).
    "grpo": dict(
        estimator="grpo",
        advantage=dict(std_normalization="none"),
        loss=dict(policy_loss="ppo_clip", kl_in="loss", kl_coef=0.01, kl_estimator="k3",
                  aggregation="seq_mean_token_mean"),
    ),
    # The same three without any KL term: no reference forward pass (for small CPU runs).
    "reinforce_pp_nokl": dict(
        estimator="reinforce_pp",
        advantage=dict(kl_coef=0.0, whiten=True),
        loss=dict(policy_loss="ppo_clip", kl_in="none", aggregation="token_mean"),
    ),
    "rloo_nokl": dict(estimator="rloo", advantage=dict(), loss=dict(kl_in="none", aggregation="token_mean")),
    "grpo_nokl": dict(
        estimator="grpo", advantage=dict(std_normalization="none"), loss=dict(kl_in="none")
    ),
    # PPO with a learned critic: GAE(gamma = lambda = 1) advantages whitened over the batch, PPO-clip with a
    # clipped value loss. Needs a `critic` section (`critic_section()`); one sample per prompt is enough.
    "gae": dict(
        estimator="gae",
        advantage=dict(gamma=1.0, lam=1.0, whiten=True, kl_coef=0.0),
        loss=dict(policy_loss="ppo_clip", clip_low=0.2, clip_high=0.2, kl_in="none", aggregation="token_mean",
                  value_clip=0.5, value_coef=0.5),
    ),
}


def _defaults(cls, drop: tuple[str, ...]) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in drop}


def estimator_preset(name: str) -> ml_collections.ConfigDict:
    """The `algorithm.estimator/advantage/loss` fields of a named estimator preset.

    The advantage and loss sections list every field of the algorithms' AdvantageConfig / LossConfig (the
    preset's values over the defaults), so any of them can be overridden from the command line.
    """
    from jaxalign.algorithms.advantages import AdvantageConfig
    from jaxalign.algorithms.losses import LossConfig

    if name not in ESTIMATOR_PRESETS:
        raise ValueError(f"unknown estimator preset {name!r}; known: {', '.join(ESTIMATOR_PRESETS)}")
    preset = ESTIMATOR_PRESETS[name]
    return ml_collections.ConfigDict(
        dict(
            estimator=preset["estimator"],
            advantage={**_defaults(AdvantageConfig, ("estimator",)), **preset["advantage"]},
            loss={**_defaults(LossConfig, ("temperature",)), **preset["loss"]},
        )
    )


def base_config() -> ml_collections.ConfigDict:
    """Every section with defaults. Sizes here suit a small CPU run; runnable configs override them."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = "rlev"

    # init_from: a run directory (e.g. of `jaxalign sft`) whose latest policy weights start this run.
    c.model = ml_collections.ConfigDict(dict(spec="random:tiny", param_dtype="float32", dtype="float32", remat=False,
                                             init_from=""))
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
        dict(mini_batches=1, micro_batches=1, epochs=1, recompute_old_logprobs=True)
    )
    set_estimator(c, "grpo")
    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-6))
    c.train = ml_collections.ConfigDict(dict(steps=10, eval_every=0, eval_examples=0, eval_at_start=True,
                                             skip_memory_check=False))
    c.checkpoint = ml_collections.ConfigDict(dict(every=0, keep=3, async_save=True))
    c.logging = ml_collections.ConfigDict(
        dict(progress=True, tensorboard=True, samples_every=1, samples_per_log=4, report=True)
    )
    c.rewards = ml_collections.ConfigDict(dict(num_workers=2, timeout_s=30.0))
    # LoRA: rank 0 = full fine-tuning; e.g. --config.lora.rank=8 trains adapters on a frozen base.
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=",".join(LORA_TARGETS), dropout=0.0,
                                            base_dtype="", sampler="merged"))
    return c


def set_estimator(c: ml_collections.ConfigDict, name: str) -> None:
    """Replaces the estimator and its advantage/loss sections with the named preset; a "gae" preset also
    adds a default `critic` section when the config has none."""
    preset = estimator_preset(name)
    with c.algorithm.ignore_type():
        c.algorithm.estimator = preset.estimator
        c.algorithm.advantage = preset.advantage
        c.algorithm.loss = preset.loss
    if preset.estimator == "gae" and "critic" not in c:
        c.critic = critic_section()


def critic_section(mode: str = "separate", *, head_init_std: float = 0.0, critic_warmup_steps: int = 0,
                   **optim) -> ml_collections.ConfigDict:
    """The `critic` section of a gae run (fields of `jaxalign.config.CriticSpec`).

    `mode`: "separate" (own value model and optimizer) or "shared" (value head on the policy's trunk,
    trained by the policy's optimizer with weight `algorithm.loss.value_coef`). `optim` fields (e.g.
    `learning_rate=1e-5`) override the policy's `optim` for a separate critic (fields not given take the
    policy's values); a separate critic's section always lists `learning_rate` (default 1e-6), so it can
    be overridden from the command line. A shared head has no `optim` of its own (the policy's trains it).
    """
    if mode == "shared" and optim:
        raise ValueError("critic_section: a shared value head is trained by the policy's optim; pass no optim "
                         "fields or use mode='separate'")
    optim = {"learning_rate": 1e-6, **optim} if mode != "shared" else {}
    return ml_collections.ConfigDict(dict(mode=mode, head_init_std=head_init_std,
                                          critic_warmup_steps=critic_warmup_steps, optim=optim))


def rlev_section(reward: str = "human", dataset: str = "embedded", **fields) -> ml_collections.ConfigDict:
    """The `rlev` method section: every field of the RLEV method's `RLEVConfig` (defaults, then `reward`,
    `dataset` and `fields`), so each can be overridden with `--config.rlev.<field>=...`.

    `reward`: human (the paper's s(x) = 1 + min(alpha * v, 1)) or an ablation (correctness, uniform,
    random, multiplicative); `dataset`: embedded (offline exam set), rlev, webinstruct or a local path.
    Values: `value_source` ground_truth, weak or predicted, the last by `predictor_model` (a model spec; empty:
    the policy itself).
    Verification: `verifier` rule (default), model or rule_or_model, with `judge_model` (required unless
    rule: an HF directory, a .gguf file or smollm2-135m-instruct) and the `judge_*` sampling settings
    (greedy, 8 new tokens, bfloat16 by default), e.g. `--config.rlev.verifier=rule_or_model
    --config.rlev.judge_model=/models/judge`.
    """
    from jaxalign.methods.rlev import RLEVConfig

    values = {**_defaults(RLEVConfig, ()), "reward": reward, "dataset": dataset, **fields}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(RLEVConfig)})
    if unknown:
        raise ValueError(f"rlev_section: unknown field(s) {unknown}; RLEVConfig has no such fields")
    return ml_collections.ConfigDict(values)


def gtalign_section(**fields) -> ml_collections.ConfigDict:
    """The `gtalign` method section: every field of `GTAlignConfig` (defaults, then `fields`), so each can be
    overridden with `--config.gtalign.<field>=...`: `dataset` (embedded or a local file), `reward` (welfare,
    linear, user, llm), `llm_terms` (main, pareto), `normalize` (none, zscore), the length bands."""
    from jaxalign.methods.gtalign import GTAlignConfig

    values = {**_defaults(GTAlignConfig, ()), **fields}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(GTAlignConfig)})
    if unknown:
        raise ValueError(f"gtalign_section: unknown field(s) {unknown}; GTAlignConfig has no such fields")
    return ml_collections.ConfigDict(values)


def sft_section(data: str = "", *, learning_rate: float = 1e-5, **fields) -> ml_collections.ConfigDict:
    """The `sft` section of `jaxalign sft`: every field of `jaxalign.config.SFTSpec` (defaults, then `data`
    and `fields`), so each can be overridden with `--config.sft.<field>=...`. `data`: a .jsonl file of
    {"messages": [...]} rows, "embedded:<name>" or a Hugging Face dataset. The section's `optim` overrides
    the top-level `optim` for SFT and always lists `learning_rate` (1e-5 unless given); more OptimConfig
    fields may be passed as `optim=dict(...)`.
    """
    from jaxalign.config import SFTSpec

    optim = {"learning_rate": learning_rate, **dict(fields.pop("optim", {}) or {})}
    values = {**{f.name: f.default for f in dataclasses.fields(SFTSpec) if f.name != "optim"}, "data": data, **fields}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(SFTSpec)})
    if unknown:
        raise ValueError(f"sft_section: unknown field(s) {unknown}; SFTSpec has no such fields")
    return ml_collections.ConfigDict({**values, "optim": optim})
