"""`two_agent_toy`: a token-level episode with two agents, the smallest test of the multi-agent machinery.

Agent `a` writes a response to a random prompt (token ids, no tokenizer); agent `b` answers given the
prompt followed by `a`'s response as the ids `a` sampled. Each agent's reward depends on both: with
`f(x)` the fraction of a response's tokens whose id is below `target_below`,

    R_a = (1 - w) * f(a) + w * f(b)        R_b = (1 - w) * f(b) + w * f(a)        (w = `partner_weight`)

so both rewards rise when both agents learn to write low ids, and each agent's samples are grouped by
prompt (`a` draws `samples_per_prompt` responses per prompt, `b` answers each of them once). A random
model starts near `target_below / vocab_size`. Config section `two_agent_toy`: `target_below`,
`partner_weight`, `num_train`, `num_eval`, `prompt_len`, `seed`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from jaxalign.methods.base import Method, config_section, register
from jaxalign.methods.toy.token import PROMPT_ID_RANGE
from jaxalign.train.episodes import sampling_params
from jaxalign.train.samples import Example, Samples, left_pad



@dataclasses.dataclass(frozen=True)
class TwoAgentToyConfig:
    target_below: int = 16
    partner_weight: float = 0.25
    num_train: int = 64
    num_eval: int = 8
    prompt_len: int = 6
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.target_below <= PROMPT_ID_RANGE[0]:
            raise ValueError(f"target_below must be in (0, {PROMPT_ID_RANGE[0]}], got {self.target_below}")
        if not 0.0 <= self.partner_weight <= 1.0:
            raise ValueError(f"partner_weight must be in [0, 1], got {self.partner_weight}")


def target_fraction(response_ids_np: np.ndarray, response_mask_np: np.ndarray, target_below: int) -> np.ndarray:
    """float32 [N]: the fraction of each response's tokens with an id below `target_below` (0 if empty)."""
    mask = response_mask_np.astype(bool)
    hits = ((response_ids_np < target_below) & mask).sum(axis=1)
    return (hits / np.maximum(mask.sum(axis=1), 1)).astype(np.float32)


@register("two_agent_toy")
class TwoAgentToy(Method):
    """Agents `a` (writes) and `b` (answers given `a`'s output); see the module docstring."""

    def parse_config(self, section: Any) -> TwoAgentToyConfig:
        return config_section(TwoAgentToyConfig, section, "two_agent_toy")

    def agents(self) -> tuple[str, ...]:
        return ("a", "b")

    def _examples(self, count: int, seed: int) -> list[Example]:
        rng = np.random.default_rng(seed)
        return [{"prompt": f"toy2-{seed}-{i}", "prompt_ids": rng.integers(*PROMPT_ID_RANGE, self.config.prompt_len).tolist()}
                for i in range(count)]

    def load_data(self) -> tuple[list[Example], list[Example]]:
        return (self._examples(self.config.num_train, self.config.seed),
                self._examples(self.config.num_eval, self.config.seed + 1))

    def _play(self, agents, prompt_ids: list[list[int]], key, *, greedy: bool, n: int):
        """Both turns: `a`'s rollout (n per prompt), then `b`'s rollout given prompt + `a`'s ids."""
        a, b = agents["a"], agents["b"]
        rollout_a = a.sampler.generate(prompt_ids, sampling_params(a.spec.rollout, greedy=greedy, n=n),
                                       jax.random.fold_in(key, 0))
        # b's context: the prompt followed by a's response ids as sampled (no template: token level).
        contexts = [(list(prompt_ids[i // n]) + ids[mask.astype(bool)].tolist())[-b.spec.rollout.max_prompt_len:]
                    for i, (ids, mask) in enumerate(zip(rollout_a.response_ids_np, rollout_a.response_mask_np))]
        rollout_b = b.sampler.generate(contexts, sampling_params(b.spec.rollout, greedy=greedy, n=1),
                                       jax.random.fold_in(key, 1))
        t = self.config.target_below
        f_a = target_fraction(rollout_a.response_ids_np, rollout_a.response_mask_np, t)
        f_b = target_fraction(rollout_b.response_ids_np, rollout_b.response_mask_np, t)
        return rollout_a, rollout_b, contexts, f_a, f_b

    def episode(self, ctx) -> dict[str, Samples]:
        a = ctx.agents["a"]
        n = a.spec.rollout.samples_per_prompt
        examples, prompt_ids = ctx.next_prompts(a, lambda ex: list(ex["prompt_ids"]), a.spec.rollout.prompts_per_step)
        with ctx.timer("generate"):
            rollout_a, rollout_b, contexts, f_a, f_b = self._play(ctx.agents, prompt_ids, ctx.key,
                                                                   greedy=False, n=n)
        w = self.config.partner_weight
        groups = np.repeat(np.arange(len(examples)), n).astype(np.int32)
        ex_n = tuple(examples[i // n] for i in range(len(examples) * n))
        out = {}
        for name, rollout, own, other, ids in (("a", rollout_a, f_a, f_b, None), ("b", rollout_b, f_b, f_a, contexts)):
            context_ids, context_mask = ((rollout.prompt_ids_np, rollout.prompt_mask_np) if ids is None
                                         else left_pad(ids))
            out[name] = Samples(
                context_ids_np=context_ids, context_mask_np=context_mask,
                response_ids_np=rollout.response_ids_np, response_mask_np=rollout.response_mask_np,
                logprobs_np=rollout.logprobs_np, rewards_n=((1 - w) * own + w * other).astype(np.float32),
                ok_n=np.ones(len(groups), bool), group_ids_n=groups,
                components={"own_fraction": own, "partner_fraction": other},
                texts=tuple(" ".join(map(str, r[m.astype(bool)])) for r, m in
                            zip(rollout.response_ids_np, rollout.response_mask_np)),
                examples=ex_n, finish_reasons=tuple(rollout.finish_reasons),
            )
        return out

    def eval_episode(self, examples: Sequence[Example], ctx) -> dict[str, float]:
        prompt_ids = [list(ex["prompt_ids"]) for ex in examples]
        _, _, _, f_a, f_b = self._play(ctx.agents, prompt_ids, ctx.key, greedy=True, n=1)
        return {"a_target_fraction": float(f_a.mean()), "b_target_fraction": float(f_b.mean())}
