"""Episodes: from the agents' samplers to one `Samples` per agent (the first stage of an RL step).

`EpisodeContext` is what an episode may use: the agents by name (sampler, tokenizer, rollout settings), the
reward pool, the step's key, the training data stream and the phase timer. A method's `episode(ctx)`
returns `{agent name: Samples}`; its `eval_episode(examples, ctx)` returns eval metrics.

The default single-turn episode (`single_turn_episode`, used by RLEV, GTAlign and the toy methods) is:
the next prompts of the stream, encoded with the method's chat messages (or the example's own
`prompt_ids`), overlong ones truncated or dropped and counted; `n` samples per prompt from the agent's
sampler; the method's feature function in the reward pool, its `judge_features` hook and its rewards; with
dynamic sampling, groups whose rewards are all equal are dropped and more prompts are sampled (bounded
tries), keeping the batch shape fixed. `single_turn_eval` answers the eval split greedily and scores it
with the method's `eval_metrics`.

Scoring (training and eval alike), in this order: `feature_fn` in the pool's child processes (NaN where a
sample failed); `judge_features(texts, examples, features)` on the host (a NaN verdict fails the sample
and is counted as a judge failure); `rewards(features, examples)`. A sample is ok when the pool succeeded,
no feature is NaN after the judge and its reward is finite.

Multi-turn episodes build each turn's context with `turn_context` (`jaxalign.rollout.prompts`): the chat
template's tokens of the new messages appended to the ids of the conversation so far.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from jaxalign.train import batching, metrics as metrics_lib
from jaxalign.train.samples import Example, Samples, concat


@dataclasses.dataclass
class EpisodeContext:
    """What an episode may use.

    Attributes:
      agents: name -> `Agent` (its `sampler`, `tokenizer` and `spec.rollout`), in config order.
      pool: the `RewardPool` for feature functions.
      key: this step's PRNG key (fold in a constant per turn or agent).
      step: the training step (0 for eval).
      timer: phase timer (`generate`, `reward`, `judge`, ... in seconds).
      counters: overlong-prompt counters (truncated, dropped).
      stream, train_examples: the training data in its resumable order (None in eval).
      progress: show a progress bar over long loops (eval batches).
    """

    agents: Mapping[str, Any]
    pool: Any
    key: jax.Array
    step: int = 0
    timer: metrics_lib.PhaseTimer = dataclasses.field(default_factory=metrics_lib.PhaseTimer)
    counters: batching.PromptCounters = dataclasses.field(default_factory=batching.PromptCounters)
    stream: batching.DataStream | None = None
    train_examples: Sequence[Example] = ()
    progress: bool = False

    def batches(self, count: int, size: int, desc: str = "eval"):
        """`range(0, count, size)` with a progress bar over the batches when `progress` is on."""
        from tqdm.auto import tqdm

        return tqdm(range(0, count, size), desc=desc, unit="batch", disable=not self.progress or count <= size,
                    leave=False, dynamic_ncols=True)

    def only_agent(self) -> Any:
        """The agent of a single-agent run."""
        if len(self.agents) != 1:
            raise ValueError(f"a single-agent episode got {len(self.agents)} agents: {', '.join(self.agents)}")
        return next(iter(self.agents.values()))

    def next_examples(self, count: int) -> list[Example]:
        """The next `count` training examples of the stream (no encoding, nothing dropped)."""
        if self.stream is None:
            raise ValueError("this context has no training stream (eval)")
        return [self.train_examples[self.stream.next_index()] for _ in range(count)]

    def fit_prompts(self, agent, encode: Callable[[Example], list[int]], examples: Sequence[Example]
                    ) -> tuple[list[Example], list[list[int]]]:
        """`examples` encoded under `agent`'s overlong-prompt policy: the kept ones and their prompt ids
        (dropped ones are left out and counted)."""
        r = agent.spec.rollout
        kept, prompt_ids = [], []
        for example in examples:
            ids = batching.fit_prompt(encode(example), r.max_prompt_len, r.overlong_prompts, self.counters)
            if ids is not None:
                kept.append(example)
                prompt_ids.append(ids)
        return kept, prompt_ids

    def next_prompts(self, agent, encode: Callable[[Example], list[int]], count: int
                     ) -> tuple[list[Example], list[list[int]]]:
        """The next `count` usable examples and their prompt ids under `agent`'s overlong-prompt policy."""
        r = agent.spec.rollout
        return batching.next_prompts(self.stream, self.train_examples, encode, count, max_len=r.max_prompt_len,
                                     mode=r.overlong_prompts, counters=self.counters)


def encoder(method, tokenizer) -> Callable[[Example], list[int]]:
    """Prompt ids of an example: its own `prompt_ids`, or the method's messages through the chat template."""

    def encode(example: Example) -> list[int]:
        if "prompt_ids" in example:
            return list(example["prompt_ids"])
        if tokenizer is None:
            raise ValueError(
                "this model has no tokenizer, so examples need token-level 'prompt_ids'; load a model with a "
                "tokenizer (HF directory, .gguf or a named alias) for text prompts"
            )
        return tokenizer.apply_chat_template(method.messages(example), add_generation_prompt=True)

    return encode


def response_texts(rollout, tokenizer) -> list[str]:
    """Responses as a reward sees them: decoded text, or space-separated token ids without a tokenizer."""
    if tokenizer is not None:
        return list(rollout.texts)
    return [" ".join(str(int(t)) for t in ids[mask.astype(bool)])
            for ids, mask in zip(rollout.response_ids_np, rollout.response_mask_np)]


def sampling_params(rollout_spec, *, greedy: bool, n: int, **extra):
    """`SamplingParams` of an agent's rollout settings: its sampling for training, greedy for eval."""
    from jaxalign.rollout import SamplingParams

    r = rollout_spec
    return SamplingParams(
        max_new_tokens=(r.eval_max_new_tokens or r.max_new_tokens) if greedy else r.max_new_tokens,
        temperature=1.0 if greedy else r.temperature, top_k=0 if greedy else r.top_k,
        top_p=1.0 if greedy else r.top_p, greedy=greedy, n=n, **extra,
    )


@dataclasses.dataclass(frozen=True)
class Scored:
    """Scores of a batch of responses: features, rewards, components, the ok and judge-failure masks."""

    features: Mapping[str, np.ndarray]
    rewards_n: np.ndarray
    components: Mapping[str, np.ndarray]
    ok_n: np.ndarray
    judge_failed_n: np.ndarray


def score(method, pool, texts: Sequence[str], examples: Sequence[Example], timer=None) -> Scored:
    """The method's feature function in the pool, its `judge_features` hook, its rewards (see the module
    docstring). Timed into `timer`'s "reward" and, for methods with `uses_judge`, "judge" phases."""
    from jaxalign.rewards.pool import collect_features

    timer = timer if timer is not None else metrics_lib.PhaseTimer()
    with timer("reward"):
        results = pool.map(method.feature_fn, list(zip(texts, examples)))
        features = collect_features(results)
    ok_n = np.array([r.ok for r in results], bool)
    with timer("judge" if method.uses_judge else "reward"):
        features = method.judge_features(list(texts), list(examples), features)
    not_nan_n = np.ones(len(texts), bool)
    for values in features.values():
        not_nan_n &= ~np.isnan(np.asarray(values, np.float64))
    judge_failed_n = ok_n & ~not_nan_n
    ok_n = ok_n & not_nan_n
    with timer("reward"):
        rewards_n, components = method.rewards(features, list(examples))
    rewards_n = np.asarray(rewards_n, np.float32)
    # A non-finite reward is a failed sample like a failed feature: no loss, no effect on its baseline.
    ok_n = ok_n & np.isfinite(rewards_n)
    return Scored(features, rewards_n, components, ok_n, judge_failed_n)


def samples_from_rollout(rollout, scored: Scored, examples: Sequence[Example], texts: Sequence[str], *,
                         group_ids_n: np.ndarray, group_size: int | None = None) -> Samples:
    """A `Samples` of a sampler's `Rollout` and its scores. With `group_size` the rewards of failed samples
    are replaced by their group's mean (contiguous groups of that size)."""
    rewards_n = scored.rewards_n
    if group_size:
        rewards_n = batching.fill_failed_rewards(rewards_n, scored.ok_n, group_size)
    return Samples(
        context_ids_np=rollout.prompt_ids_np, context_mask_np=rollout.prompt_mask_np,
        response_ids_np=rollout.response_ids_np, response_mask_np=rollout.response_mask_np,
        logprobs_np=rollout.logprobs_np, rewards_n=np.asarray(rewards_n, np.float32), ok_n=scored.ok_n,
        group_ids_n=np.asarray(group_ids_n, np.int32),
        components={k: np.asarray(v, np.float32) for k, v in scored.components.items()},
        texts=tuple(texts), examples=tuple(examples), finish_reasons=tuple(rollout.finish_reasons),
    )


def single_turn_episode(method, ctx: EpisodeContext, agent_name: str | None = None) -> dict[str, Samples]:
    """One step's groups of one agent (the only one unless named), with dynamic-sampling refills.

    Generation, reward and judge time go to the context's timer, summed over tries. The returned samples'
    stats are `rollout/tries`, `rollout/informative_groups`, `rollout/failed` (and `rollout/judge_failed`
    for judging methods, counted over every try).
    """
    agent = ctx.agents[agent_name] if agent_name is not None else ctx.only_agent()
    r = agent.spec.rollout
    n = r.samples_per_prompt
    sp = sampling_params(r, greedy=False, n=n)
    encode = encoder(method, agent.tokenizer)
    parts, informative = [], []
    judge_failed = 0
    tries = r.dynamic_sampling_max_tries if r.dynamic_sampling else 1
    for attempt in range(tries):
        examples, prompt_ids = ctx.next_prompts(agent, encode, r.prompts_per_step)
        with ctx.timer("generate"):
            rollout = agent.sampler.generate(prompt_ids, sp, jax.random.fold_in(ctx.key, attempt))
        ex_n = [examples[i // n] for i in range(len(examples) * n)]
        texts = response_texts(rollout, agent.tokenizer)
        scored = score(method, ctx.pool, texts, ex_n, ctx.timer)
        judge_failed += int(scored.judge_failed_n.sum())
        offset = attempt * r.prompts_per_step
        part = samples_from_rollout(rollout, scored, ex_n, texts, group_size=n,
                                    group_ids_n=offset + np.repeat(np.arange(len(examples)), n))
        parts.append(part)
        informative.append(batching.informative_groups(part.rewards_n, n, r.dynamic_sampling_tol))
        if not r.dynamic_sampling or np.concatenate(informative).sum() >= r.prompts_per_step:
            break
    informative_g = np.concatenate(informative)
    groups = np.flatnonzero(informative_g) if r.dynamic_sampling else np.arange(r.prompts_per_step)
    if len(groups) < r.prompts_per_step:  # refill with uninformative groups (zero advantage) to keep shapes
        groups = np.concatenate([groups, np.flatnonzero(~informative_g)])
    groups = np.sort(groups[: r.prompts_per_step])
    index_n = (groups[:, None] * n + np.arange(n)[None, :]).reshape(-1)
    merged = concat(parts).take(index_n)
    stats = {
        "rollout/tries": float(attempt + 1),
        "rollout/informative_groups": float(informative_g[groups].sum()),
        "rollout/failed": float((~merged.ok_n).sum()),
    }
    if method.uses_judge:  # over every try: the judge's work, kept or not
        stats["rollout/judge_failed"] = float(judge_failed)
    # Group ids renumbered 0.. in the kept order, one per prompt.
    merged = dataclasses.replace(merged, group_ids_n=np.repeat(np.arange(len(groups)), n).astype(np.int32),
                                 stats=stats)
    return {agent.name: merged}


def single_turn_eval(method, examples: Sequence[Example], ctx: EpisodeContext, agent_name: str | None = None,
                     rollout_metrics: Callable[..., Mapping[str, float]] | None = None) -> dict[str, float]:
    """Greedy responses of one agent to `examples`, scored with the method's `eval_metrics` (judge included),
    in batches of the agent's `samples_per_step`. `rollout_metrics(agent, examples, rollouts)`, when given,
    adds metrics computed from the kept examples and the batches' `Rollout`s (e.g. with the policy's
    probabilities at the generated tokens)."""
    agent = ctx.agents[agent_name] if agent_name is not None else ctx.only_agent()
    r = agent.spec.rollout
    kept, prompts = ctx.fit_prompts(agent, encoder(method, agent.tokenizer), examples)
    if not kept:
        return {}
    texts, lengths, rollouts = [], [], []
    sp = sampling_params(r, greedy=True, n=1)
    for start in ctx.batches(len(prompts), r.samples_per_step):
        rollout = agent.sampler.generate(prompts[start:start + r.samples_per_step], sp, jax.random.key(0))
        texts += response_texts(rollout, agent.tokenizer)
        lengths.append(rollout.lengths_n)
        if rollout_metrics is not None:
            rollouts.append(rollout)
    scored = score(method, ctx.pool, texts, kept)
    out = dict(method.eval_metrics(scored.features, kept, np.concatenate(lengths)))
    if rollout_metrics is not None:
        out.update(rollout_metrics(agent, kept, rollouts))
    out["failed"] = float((~scored.ok_n).sum())
    if method.uses_judge:
        out["judge_failed"] = float(scored.judge_failed_n.sum())
    return out
