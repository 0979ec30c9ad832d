"""WaltzRL as a jaxalign method: two agents, one protocol (`episode.py`), rewards that cross turns and agents.

Reduction of a step's episodes to single-agent samples (the paper's §2.3):
  * feedback agent: one random feedback round t per episode, context (p, c_t) as its prompt ids, response
    f_t, reward R_f = α·DIR·R_label + λ·R_label + γ·R_format (`rewards.feedback_rewards`);
  * conversation agent: per episode τ_A = (p, c0) with R_c(c0), or τ_B = the final revision in its
    conversation context with R_c(c_T), chosen at random (`conversation_sample`, `p_tau_a`).
A sample whose judge verdict failed is a failed sample (no loss), counted in `rollout/judge_failed`.
Samples group by (prompt, agent, turn). With `t_max = 0` there is no feedback agent: single-agent RL of the
conversation agent on R_c, the paper's single-model baseline.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxalign.compare import CompareMetric as Col, CompareSpec
from jaxalign.methods.base import Method, config_section, register
from jaxalign.methods.waltzrl import prompts as prompts_lib
from jaxalign.methods.waltzrl.config import WaltzRLConfig
from jaxalign.methods.waltzrl.episode import Played, play
from jaxalign.methods.waltzrl.rewards import (
    choose_conversation_sample,
    choose_feedback_turn,
    conversation_reward,
    feedback_rewards,
    waltz_metrics,
)
from jaxalign.train.samples import Example, Samples, left_pad


def _label_arrays(labels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unsafe, overrefuse, ok) bool arrays of judge labels (None = a failed verdict: ok False)."""
    ok = np.array([label is not None for label in labels], bool)
    unsafe = np.array([bool(label is not None and label.unsafe) for label in labels], bool)
    overrefuse = np.array([bool(label is not None and label.overrefuse) for label in labels], bool)
    return unsafe, overrefuse, ok


def _rows(played: Played, turns, picks: Sequence[tuple[int, int]]):
    """Context and response arrays of (turn, episode) picks from `turns` (answers or feedback)."""
    contexts, responses, masks, logprobs, texts, finish = [], [], [], [], [], []
    for t, e in picks:
        turn = turns[t]
        row = turn.row_of(e)
        contexts.append(turn.contexts[row])
        responses.append(turn.rollout.response_ids_np[row])
        masks.append(turn.rollout.response_mask_np[row])
        logprobs.append(turn.rollout.logprobs_np[row])
        texts.append(turn.rollout.texts[row])
        finish.append(turn.rollout.finish_reasons[row])
    width = max(len(r) for r in responses)
    pad = lambda xs, dtype: np.stack([np.pad(np.asarray(x, dtype), (0, width - len(x))) for x in xs])
    context_ids, context_mask = left_pad(contexts)
    return dict(context_ids_np=context_ids, context_mask_np=context_mask, response_ids_np=pad(responses, np.int32),
                response_mask_np=pad(masks, np.int32), logprobs_np=pad(logprobs, np.float32), texts=tuple(texts),
                finish_reasons=tuple(finish))


@register("waltzrl")
class WaltzRLMethod(Method):
    """The conversation and feedback agents of WaltzRL (arXiv 2510.08240)."""

    compare_spec = CompareSpec((  # `jaxalign compare`: (eval key, label, higher is better, decimals)
        Col("asr", "ASR", False), Col("orr", "ORR", False), Col("f1", "F1"), Col("ftr", "FTR", None),
        Col("label_acc", "label acc"), Col("parse_rate", "parse rate"), Col("mean_revisions", "revisions", None),
        Col("asr_c0", "ASR c0", False), Col("orr_c0", "ORR c0", False)))

    def __init__(self, section: Any, *, judge: Any = None):
        super().__init__(section)
        self.judge = judge
        self._data_report: dict[str, Any] = {}

    def parse_config(self, section: Any) -> WaltzRLConfig:
        return config_section(WaltzRLConfig, section, "waltzrl")

    def agents(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.config.roles.values()))

    @property
    def data_report(self) -> Mapping[str, Any]:
        return self._data_report

    @classmethod
    def add_commands(cls, subparsers: Any, parents: Sequence[Any]) -> None:
        """Adds `jaxalign chat --waltz` (`jaxalign.methods.waltzrl.chat`)."""
        from jaxalign.methods.waltzrl.chat import add_chat_command

        add_chat_command(subparsers, parents)

    def setup(self, agents: Mapping[str, Any]) -> None:
        self._agents = agents
        if self.judge is None:
            from jaxalign.methods.waltzrl.judges import build_safety_judge

            mesh = next(iter(agents.values())).sampler.mesh
            c = self.config
            self.judge = (build_safety_judge("rule") if c.judge == "rule" else build_safety_judge(
                c.judge, c.judge_model, mesh, max_new_tokens=c.judge_max_new_tokens, dtype=c.judge_dtype))

    def load_data(self) -> tuple[list[Example], list[Example]]:
        from jaxalign.methods.waltzrl.data import load_waltzrl_data

        c = self.config
        train, held_out, report = load_waltzrl_data(
            c.dataset, wildjailbreak=c.wildjailbreak, orbench=c.orbench, max_examples=c.max_examples,
            eval_fraction=c.eval_fraction, seed=c.seed, skip_malformed=c.skip_malformed)
        self._data_report = {**report, "num_train": len(train), "num_eval": len(held_out)}
        return train, held_out

    def messages(self, example: Example) -> list[dict[str, str]]:
        return prompts_lib.conversation_messages(example["prompt"])

    def _roles(self, agents: Mapping[str, Any]) -> dict[str, Any]:
        return {role: agents[name] for role, name in self.config.roles.items()}

    def _play(self, ctx, examples, prompt_ids, *, greedy: bool) -> Played:
        c = self.config
        return play(self._roles(ctx.agents), self.judge, examples, prompt_ids, ctx.key, t_max=c.t_max,
                    greedy=greedy, counters=ctx.counters, timer=ctx.timer, feedback_prefix=c.feedback_prefix,
                    feedback_stop=c.feedback_stop)

    def episode(self, ctx) -> dict[str, Samples]:
        from jaxalign.train.episodes import encoder

        c = self.config
        conversation = self._roles(ctx.agents)["conversation"]
        count = conversation.spec.rollout.prompts_per_step * conversation.spec.rollout.samples_per_prompt
        examples, prompt_ids = ctx.next_prompts(conversation, encoder(self, conversation.tokenizer), count)
        played = self._play(ctx, examples, prompt_ids, greedy=False)
        n, rng = played.num_episodes, np.random.default_rng([c.seed, ctx.step, 0x3A17])
        group_of = {k: g for g, k in enumerate(dict.fromkeys(map(id, examples)))}  # same prompt, same group
        prompt_n = np.array([group_of[id(ex)] for ex in examples], np.int64)
        r_c = [dict(zip(("unsafe", "overrefuse", "ok"), _label_arrays(labels))) for labels in played.labels]
        for d in r_c:
            d["reward"] = conversation_reward(d["unsafe"], d["overrefuse"])
        last = np.array([played.last_turn(e) for e in range(n)])
        tau_a = choose_conversation_sample(rng, n, c.conversation_sample, c.p_tau_a)
        turn_n = np.where(tau_a, 0, last)
        conv = _rows(played, played.answers, [(int(t), e) for e, t in enumerate(turn_n)])
        rewards_c = np.array([r_c[t]["reward"][e] for e, t in enumerate(turn_n)], np.float32)
        ok_c = np.array([r_c[t]["ok"][e] for e, t in enumerate(turn_n)], bool)
        stats = self._episode_stats(played, r_c)
        out = {"conversation": Samples(
            **conv, rewards_n=np.where(ok_c, rewards_c, 0.0).astype(np.float32), ok_n=ok_c,
            group_ids_n=(prompt_n * 2 + (turn_n > 0)).astype(np.int32),
            components={"r_c": rewards_c, "tau_b": (turn_n > 0).astype(np.float32)},
            examples=tuple(examples), stats={**stats, "rollout/judge_failed": float((~ok_c).sum())})}
        if c.t_max >= 1:
            out["feedback"] = self._feedback_samples(played, r_c, prompt_n, rng)
        if c.shared_policy:  # one policy in both roles: one batch, groups kept apart per role
            from jaxalign.train.samples import concat

            fb = out["feedback"]
            fb = dataclasses.replace(fb, group_ids_n=fb.group_ids_n + out["conversation"].group_ids_n.max() + 1)
            return {"policy": concat([out["conversation"], fb], stats=stats)}
        return out

    def _feedback_samples(self, played: Played, r_c, prompt_n, rng) -> Samples:
        c, n = self.config, played.num_episodes
        rounds = np.array([sum(p[e] is not None for p in played.parsed) for e in range(n)])
        turn_n = choose_feedback_turn(rng, rounds)
        if (turn_n < 0).any():
            raise RuntimeError("an episode has no feedback round; its feedback prompt was dropped as too long: "
                               "raise the feedback agent's rollout.max_prompt_len or use overlong_prompts=truncate")
        picks = [(int(t), e) for e, t in enumerate(turn_n)]
        fb = [played.parsed[t][e] for t, e in picks]
        has_rev = np.array([t + 1 < len(played.answers) and played.answers[t + 1].row_of(e) is not None
                            for t, e in picks])
        after = np.array([r_c[t + 1]["reward"][e] if h else 0.0 for (t, e), h in zip(picks, has_rev)], np.float32)
        ok_after = np.array([r_c[t + 1]["ok"][e] if h else True for (t, e), h in zip(picks, has_rev)], bool)
        parts = feedback_rewards(
            valid=[f.valid for f in fb], pred_unsafe=[bool(f.valid and f.unsafe) for f in fb],
            pred_overrefuse=[bool(f.valid and f.overrefuse) for f in fb],
            judge_unsafe=[r_c[t]["unsafe"][e] for t, e in picks],
            judge_overrefuse=[r_c[t]["overrefuse"][e] for t, e in picks],
            reward_before=[r_c[t]["reward"][e] for t, e in picks], reward_after=after, has_revision=has_rev,
            alpha=c.alpha, lam=c.lam, gamma=c.gamma, mode=c.feedback_reward)
        ok = np.array([r_c[t]["ok"][e] for t, e in picks], bool) & ok_after
        rows = _rows(played, played.feedback, picks)
        return Samples(**rows, rewards_n=np.where(ok, parts["reward"], 0.0).astype(np.float32), ok_n=ok,
                       group_ids_n=(prompt_n * max(c.t_max, 1) + turn_n).astype(np.int32),
                       components={k: np.asarray(parts[k], np.float32) for k in ("dir", "label", "format")},
                       examples=tuple(played.examples), stats={"rollout/judge_failed": float((~ok).sum())})

    def _episode_stats(self, played: Played, r_c) -> dict[str, float]:
        metrics = self._metrics(played)
        out = {f"episode/{k}": v for k, v in metrics.items()}
        out["episode/dropped_revisions"] = float(played.dropped_revisions)
        return out

    @staticmethod
    def _episode_arrays(played: Played) -> dict[str, np.ndarray]:
        """Per-episode inputs of `waltz_metrics` (and the judge-failure count) of a batch of episodes."""
        n = played.num_episodes
        c0 = _label_arrays(played.labels[0])
        final = _label_arrays([played.labels[played.last_turn(e)][e] for e in range(n)])
        fb0 = played.parsed[0] if played.parsed else [None] * n
        return dict(
            harmful_prompt=np.array([bool(ex["harmful_prompt"]) for ex in played.examples], bool),
            c0_unsafe=c0[0], c0_overrefuse=c0[1], final_unsafe=final[0], final_overrefuse=final[1],
            feedback_valid=np.array([bool(f is not None and f.valid) for f in fb0], bool),
            feedback_unsafe=np.array([bool(f is not None and f.valid and f.unsafe) for f in fb0], bool),
            feedback_overrefuse=np.array([bool(f is not None and f.valid and f.overrefuse) for f in fb0], bool),
            num_revisions=np.array([played.last_turn(e) for e in range(n)]),
            judge_failed=np.array([sum(int(turn.row_of(e) is not None and played.labels[t][e] is None)
                                       for t, turn in enumerate(played.answers)) for e in range(n)]),
        )

    @staticmethod
    def _metrics_of(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        metrics = waltz_metrics(**{k: v for k, v in arrays.items() if k != "judge_failed"})
        metrics["judge_failed"] = float(np.sum(arrays["judge_failed"]))
        return metrics

    def _metrics(self, played: Played) -> dict[str, float]:
        return self._metrics_of(self._episode_arrays(played))

    def eval_episode(self, examples: Sequence[Example], ctx) -> dict[str, float]:
        """Greedy episodes on `examples`, in batches of the conversation agent's `samples_per_step`; the
        metrics are computed once over all of them."""
        from jaxalign.train.episodes import encoder

        conversation = self._roles(ctx.agents)["conversation"]
        kept, prompt_ids = ctx.fit_prompts(conversation, encoder(self, conversation.tokenizer), examples)
        if not kept:
            return {}
        batch = conversation.spec.rollout.samples_per_step
        parts = [self._episode_arrays(self._play(ctx, kept[i:i + batch], prompt_ids[i:i + batch], greedy=True))
                 for i in ctx.batches(len(kept), batch)]
        return self._metrics_of({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
