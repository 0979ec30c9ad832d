"""`Samples`: what an episode hands the learner for one agent (host side, NumPy).

An episode (`jaxalign.train.episodes`, or a method's own protocol) produces one `Samples` per agent; the
learner (`jaxalign.train.learner`) turns it into the device batch. Sample i answers `contexts[i]`: the
prompt, or the whole conversation so far as the token ids each agent generated (never decoded and
re-encoded), and its response ids are exactly the ids the agent sampled, so what was sampled is what is
trained on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Samples:
    """One agent's samples of a step.

    Attributes:
      context_ids_np: int32 [N, C], left-padded contexts (prompt or conversation so far).
      context_mask_np: int32 [N, C], 1 on context tokens.
      response_ids_np: int32 [N, R], right-padded responses as sampled.
      response_mask_np: int32 [N, R], 1 on response tokens (a stop token included).
      logprobs_np: float32 [N, R], the sampler's log-probs, 0 off the mask.
      rewards_n: float32 [N], sequence rewards; a failed sample carries its group's mean of the others.
      ok_n: bool [N], False for failed samples (they keep their tokens but get no loss).
      group_ids_n: int32 [N], samples compared with each other by group estimators: the same prompt, agent
        and turn share an id.
      components: named float arrays [N] for logging (`reward/<name>`).
      texts: decoded responses (space-separated ids without a tokenizer).
      examples: the example each sample belongs to.
      finish_reasons: "stop" or "length" per sample.
      stats: the episode's statistics for this agent (`rollout/tries`, method metrics, ...), logged as they
        are (with the agent's prefix when there are several agents).
    """

    context_ids_np: np.ndarray
    context_mask_np: np.ndarray
    response_ids_np: np.ndarray
    response_mask_np: np.ndarray
    logprobs_np: np.ndarray
    rewards_n: np.ndarray
    ok_n: np.ndarray
    group_ids_n: np.ndarray
    components: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    texts: tuple[str, ...] = ()
    examples: tuple[Example, ...] = ()
    finish_reasons: tuple[str, ...] = ()
    stats: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = self.response_ids_np.shape[0]
        for name in ("context_ids_np", "context_mask_np", "response_mask_np", "logprobs_np", "rewards_n", "ok_n",
                     "group_ids_n"):
            if np.shape(getattr(self, name))[0] != n:
                raise ValueError(f"Samples.{name} has {np.shape(getattr(self, name))[0]} rows, expected {n}")
        if self.context_ids_np.shape != self.context_mask_np.shape:
            raise ValueError("Samples: context ids and mask differ in shape")
        if self.response_ids_np.shape != self.response_mask_np.shape:
            raise ValueError("Samples: response ids and mask differ in shape")

    @property
    def num_samples(self) -> int:
        return int(self.response_ids_np.shape[0])

    @property
    def lengths_n(self) -> np.ndarray:
        return self.response_mask_np.sum(axis=1).astype(np.int32)

    def take(self, index_n: Sequence[int]) -> "Samples":
        """The samples `index_n`, in that order (stats kept)."""
        index_n = np.asarray(index_n, np.int64)
        pick = (lambda xs: tuple(xs[i] for i in index_n))
        return dataclasses.replace(
            self,
            context_ids_np=self.context_ids_np[index_n], context_mask_np=self.context_mask_np[index_n],
            response_ids_np=self.response_ids_np[index_n], response_mask_np=self.response_mask_np[index_n],
            logprobs_np=self.logprobs_np[index_n], rewards_n=self.rewards_n[index_n], ok_n=self.ok_n[index_n],
            group_ids_n=self.group_ids_n[index_n],
            components={k: np.asarray(v)[index_n] for k, v in self.components.items()},
            texts=pick(self.texts) if self.texts else (), examples=pick(self.examples) if self.examples else (),
            finish_reasons=pick(self.finish_reasons) if self.finish_reasons else (),
        )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = 0, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token-id lists as left-padded int32 [N, width] ids and mask (width: the longest row)."""
    width = max([len(r) for r in rows] + [1]) if width is None else width
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the width {width}")
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return ids, mask


def concat(parts: Sequence[Samples], *, stats: Mapping[str, float] | None = None) -> Samples:
    """Several `Samples` of one agent as one (contexts left-padded and responses right-padded to the widest;
    group ids kept as they are, so parts must not reuse each other's ids; a component some parts lack is
    NaN on their rows)."""
    if len(parts) == 1:
        return parts[0] if stats is None else dataclasses.replace(parts[0], stats=dict(stats))
    c_width = max(p.context_ids_np.shape[1] for p in parts)
    r_width = max(p.response_ids_np.shape[1] for p in parts)

    def pad(x, width, left):
        extra = width - x.shape[1]
        return np.pad(x, ((0, 0), (extra, 0) if left else (0, extra)))

    keys = list(dict.fromkeys(k for p in parts for k in p.components))  # a part without a key gets NaN there
    return Samples(
        context_ids_np=np.concatenate([pad(p.context_ids_np, c_width, True) for p in parts]),
        context_mask_np=np.concatenate([pad(p.context_mask_np, c_width, True) for p in parts]),
        response_ids_np=np.concatenate([pad(p.response_ids_np, r_width, False) for p in parts]),
        response_mask_np=np.concatenate([pad(p.response_mask_np, r_width, False) for p in parts]),
        logprobs_np=np.concatenate([pad(p.logprobs_np, r_width, False) for p in parts]),
        rewards_n=np.concatenate([p.rewards_n for p in parts]),
        ok_n=np.concatenate([p.ok_n for p in parts]),
        group_ids_n=np.concatenate([p.group_ids_n for p in parts]),
        components={k: np.concatenate([np.asarray(p.components[k], np.float32) if k in p.components
                                        else np.full(p.num_samples, np.nan, np.float32) for p in parts])
                    for k in keys},
        texts=tuple(t for p in parts for t in p.texts),
        examples=tuple(e for p in parts for e in p.examples),
        finish_reasons=tuple(f for p in parts for f in p.finish_reasons),
        stats=dict(stats or {}),
    )
