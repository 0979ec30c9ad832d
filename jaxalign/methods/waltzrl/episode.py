"""WaltzRL's collaboration protocol for a batch of prompts, every turn one batched generate call per agent.

    c0 = conversation(p)
    for t in 0 .. t_max - 1:                    (episodes still active)
        f_t = feedback(p, c_t)                  one JSON object; its labels stay private
        J(c_t) = judge(p, c_t)                  (unsafe, overrefuse)
        active = active and f_t parsed and (f_t.unsafe or f_t.overrefuse)
        c_{t+1} = conversation(p, c0, feedback_0, ..., c_t, feedback_t)   only the `feedback` string is shown
    J(c_T) for the last answers not yet judged

The conversation agent's revision context is built as token ids: its earlier turns' ids as it generated
them, then the chat template's tokens of the feedback turn (`jaxalign.rollout.prompts.turn_context`). The
feedback agent reads the user request and the answer under review as text (a single turn of its own).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from jaxalign.methods.waltzrl import prompts as prompts_lib
from jaxalign.methods.waltzrl.rewards import Feedback, parse_feedback, triggered
from jaxalign.rollout.prompts import encode_text, turn_context
from jaxalign.train import batching
from jaxalign.train.episodes import sampling_params


@dataclasses.dataclass
class Turn:
    """One agent's generation for some episodes: `rows[i]` is the episode of row i of the rollout."""

    rows: np.ndarray
    contexts: list[list[int]]
    rollout: Any

    def row_of(self, episode: int) -> int | None:
        hits = np.flatnonzero(self.rows == episode)
        return int(hits[0]) if len(hits) else None


@dataclasses.dataclass
class Played:
    """The episodes of a batch: turns, parsed feedback and the judge's labels per answer."""

    examples: list[dict]
    answers: list[Turn]  # answers[t]: the conversation agent's c_t for the episodes that reached it
    feedback: list[Turn]  # feedback[t]: f_t
    parsed: list[list[Feedback | None]]  # parsed[t][episode]
    labels: list[list[Any]]  # labels[t][episode]: SafetyLabels, None (judge failure) or absent (no c_t)
    texts: list[list[str | None]]  # texts[t][episode] of c_t
    dropped_revisions: int = 0

    @property
    def num_episodes(self) -> int:
        return len(self.examples)

    def last_turn(self, episode: int) -> int:
        return max(t for t, turn in enumerate(self.answers) if turn.row_of(episode) is not None)


def _generate(agent, contexts: list[list[int]], key, *, greedy: bool, stop: str = ""):
    sp = sampling_params(agent.spec.rollout, greedy=greedy, n=1, stop_strings=(stop,) if stop else ())
    return agent.sampler.generate(contexts, sp, key)


def play(roles: dict, judge, examples: Sequence[dict], prompt_ids: list[list[int]], key, *, t_max: int,
         greedy: bool, counters: batching.PromptCounters, timer=None, feedback_prefix: str = "",
         feedback_stop: str = "") -> Played:
    """Runs the protocol for `examples` (one episode each; `prompt_ids` their encoded first turns).

    `feedback_prefix` is text the feedback agent's reply starts with (appended to its prompt as tokens, so
    it is context, not trained on; parsed as part of the reply), `feedback_stop` a string that ends its
    reply (e.g. "}" for a flat JSON object). Both are off by default, as in the paper.
    """
    from contextlib import nullcontext

    phase = timer if timer is not None else (lambda name: nullcontext())
    conversation, feedback = roles["conversation"], roles.get("feedback")
    n = len(examples)
    with phase("generate"):
        rollout = _generate(conversation, prompt_ids, jax.random.fold_in(key, 0), greedy=greedy)
    answers = [Turn(np.arange(n), [list(p) for p in prompt_ids], rollout)]
    texts = [list(rollout.texts)]
    messages = [[*prompts_lib.conversation_messages(ex["prompt"]), {"role": "assistant", "content": text}]
                for ex, text in zip(examples, rollout.texts)]
    played = Played(list(examples), answers, [], [], [], texts)
    active = np.ones(n, bool)
    for t in range(t_max):
        turn = answers[t]
        episodes = [int(e) for e in turn.rows if active[e]]
        if not episodes:
            break
        fb_contexts = []
        kept = []
        for e in episodes:
            ids = feedback.tokenizer.apply_chat_template(
                prompts_lib.feedback_messages(examples[e]["prompt"], texts[t][e]), add_generation_prompt=True)
            ids = ids + encode_text(feedback.tokenizer, feedback_prefix) if feedback_prefix else ids
            r = feedback.spec.rollout
            ids = batching.fit_prompt(ids, r.max_prompt_len, r.overlong_prompts, counters)
            if ids is not None:
                fb_contexts.append(ids)
                kept.append(e)
        with phase("generate"):
            fb_rollout = _generate(feedback, fb_contexts, jax.random.fold_in(key, 2 * t + 1), greedy=greedy,
                                   stop=feedback_stop)
        played.feedback.append(Turn(np.asarray(kept, np.int64), fb_contexts, fb_rollout))
        parsed: list[Feedback | None] = [None] * n
        for e, text in zip(kept, fb_rollout.texts):
            parsed[e] = parse_feedback(feedback_prefix + text)
        played.parsed.append(parsed)
        revise = [e for e in kept if triggered(parsed[e])]
        active[:] = False
        contexts, revised = [], []
        for e in revise:
            row = turn.row_of(e)
            mask = turn.rollout.response_mask_np[row].astype(bool)
            new = [prompts_lib.revision_user_message(parsed[e].feedback)]
            ids = turn_context(conversation.tokenizer, turn.contexts[row], turn.rollout.response_ids_np[row][mask],
                               messages[e], new)
            r = conversation.spec.rollout
            ids = batching.fit_prompt(ids, r.max_prompt_len, r.overlong_prompts, counters)
            if ids is None:
                played.dropped_revisions += 1
                continue
            contexts.append(ids)
            revised.append(e)
        if not revised:
            break
        with phase("generate"):
            rev_rollout = _generate(conversation, contexts, jax.random.fold_in(key, 2 * t + 2), greedy=greedy)
        answers.append(Turn(np.asarray(revised, np.int64), contexts, rev_rollout))
        texts.append([None] * n)
        for e, text in zip(revised, rev_rollout.texts):
            texts[t + 1][e] = text
            messages[e] += [*new_messages(parsed[e]), {"role": "assistant", "content": text}]
            active[e] = True
    with phase("judge"):
        for t, turn in enumerate(answers):
            episodes = [int(e) for e in turn.rows]
            labels = judge.label([examples[e]["prompt"] for e in episodes], [texts[t][e] for e in episodes],
                                 [bool(examples[e]["harmful_prompt"]) for e in episodes])
            per_episode: list[Any] = [None] * n
            for e, label in zip(episodes, labels):
                per_episode[e] = label
            played.labels.append(per_episode)
    return played


def new_messages(parsed: Feedback) -> list[dict]:
    """The messages a revision adds to the conversation agent's view: the feedback turn alone."""
    return [prompts_lib.revision_user_message(parsed.feedback)]
