"""Host-side (NumPy) batch assembly for the training loop: the data order, prompt encoding with the
overlong policy, the training sequence layout, dynamic-sampling group filtering, and the split into
mini-batches and micro-batches.

The sequence layout: a training sequence is `concat(context ids (left-padded, width P), response ids
(right-padded, width R))`, so response token j sits at column P + j and every per-response-token array
([n, R]: advantages, sampler log-probs, ...) moves to columns [P, P + R) of an [n, P + R] array
(`place_response`). The model's log-prob at column c is log p(tokens[c] | tokens[<c]), which is exactly
the sampler's log-prob of response token c - P, so sampler and trainer log-probs line up column by column.

Everything here is a pure function of its inputs, so a resumed run sees exactly the data of an
uninterrupted one: the order of epoch `e` is a permutation drawn from `(seed, e)`, and the data position is
one integer (prompts consumed so far).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of example indices used in `epoch` (a pure function of seed and epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


class DataStream:
    """Examples in the (seed, epoch) order, addressed by a global position that survives restarts."""

    def __init__(self, num_examples: int, seed: int, position: int = 0):
        if num_examples < 1:
            raise ValueError("the training split is empty; check the method's dataset settings")
        self.num_examples = num_examples
        self.seed = seed
        self.position = position
        self._cached_epoch = -1
        self._order = np.empty(0, np.int64)

    def next_index(self) -> int:
        epoch, offset = divmod(self.position, self.num_examples)
        if epoch != self._cached_epoch:
            self._order = epoch_order(self.num_examples, self.seed, epoch)
            self._cached_epoch = epoch
        self.position += 1
        return int(self._order[offset])

    @property
    def epoch(self) -> int:
        return self.position // self.num_examples


@dataclasses.dataclass
class PromptCounters:
    truncated: int = 0
    dropped: int = 0


def fit_prompt(ids: Sequence[int], max_len: int, mode: str, counters: PromptCounters) -> list[int] | None:
    """Applies the overlong-prompt policy: "truncate" keeps the last `max_len` tokens (the generation
    prompt is at the end), "drop" returns None. Both are counted."""
    ids = list(ids)
    if len(ids) <= max_len:
        return ids
    if mode == "drop":
        counters.dropped += 1
        return None
    counters.truncated += 1
    return ids[-max_len:]


def next_prompts(
    stream: DataStream,
    examples: Sequence[dict],
    encode: Callable[[dict], list[int]],
    count: int,
    *,
    max_len: int,
    mode: str,
    counters: PromptCounters,
) -> tuple[list[dict], list[list[int]]]:
    """The next `count` usable examples and their prompt ids; dropped prompts are skipped (a full pass
    without a usable prompt is an error naming the limit)."""
    chosen, prompt_ids = [], []
    skipped_in_a_row = 0
    while len(chosen) < count:
        example = examples[stream.next_index()]
        ids = fit_prompt(encode(example), max_len, mode, counters)
        if ids is None:
            skipped_in_a_row += 1
            if skipped_in_a_row >= len(examples):
                raise ValueError(
                    f"every training prompt is longer than rollout.max_prompt_len={max_len}; raise it or set "
                    "rollout.overlong_prompts='truncate'"
                )
            continue
        skipped_in_a_row = 0
        chosen.append(example)
        prompt_ids.append(ids)
    return chosen, prompt_ids


def informative_groups(rewards_n: np.ndarray, group_size: int, tol: float) -> np.ndarray:
    """bool [num_groups]: groups whose rewards span more than `tol` times the largest |reward| of
    `rewards_n` (they carry a learning signal). Relative, like the estimators' `equal_reward_tol`, so
    rewards in small units are not all taken for ties."""
    grouped = np.asarray(rewards_n, np.float64).reshape(-1, group_size)
    scale = float(np.abs(grouped).max()) if grouped.size else 0.0
    return (grouped.max(axis=1) - grouped.min(axis=1)) > tol * scale


def fill_failed_rewards(rewards_n: np.ndarray, ok_n: np.ndarray, group_size: int) -> np.ndarray:
    """Replaces the rewards of failed samples by the mean of their group's successful ones (0 if none), so
    a failure does not move its group's baseline; failed samples are masked out of the loss elsewhere."""
    rewards_gk = np.where(ok_n, np.nan_to_num(rewards_n), 0.0).reshape(-1, group_size).astype(np.float64)
    ok_gk = np.asarray(ok_n, bool).reshape(-1, group_size)
    count_g = ok_gk.sum(axis=1)
    mean_g = np.where(count_g > 0, (rewards_gk * ok_gk).sum(axis=1) / np.maximum(count_g, 1), 0.0)
    return np.where(ok_gk, rewards_gk, mean_g[:, None]).reshape(-1).astype(np.float32)


def bucket(length: int, multiple: int, cap: int) -> int:
    """`length` rounded up to a multiple of `multiple`, at most `cap` (fewer distinct jit shapes)."""
    return min(cap, -(-max(length, 1) // multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Training sequences [n, t] = left-padded prompt followed by right-padded response."""

    tokens_nt: np.ndarray  # int32
    valid_nt: np.ndarray  # int32, 1 on real (prompt or response) tokens
    loss_mask_nt: np.ndarray  # float32, 1 on trained response tokens
    sampler_logp_nt: np.ndarray  # float32, the sampler's log-probs at response slots
    prompt_width: int


def build_sequences(
    prompt_ids_np: np.ndarray,
    prompt_mask_np: np.ndarray,
    response_ids_np: np.ndarray,
    response_mask_np: np.ndarray,
    sampler_logp_np: np.ndarray,
    *,
    prompt_width: int,
    ok_n: np.ndarray | None = None,
    pad_id: int = 0,
) -> Sequences:
    """Concatenates a rollout into training sequences with a fixed prompt width (left pad or crop of
    padding). Samples with `ok_n` False keep their tokens but get no loss tokens."""
    n, p = prompt_ids_np.shape
    if p > prompt_width:
        if np.any(prompt_mask_np[:, : p - prompt_width]):
            raise ValueError(f"prompts are longer than the prompt width {prompt_width}")
        prompt_ids_np, prompt_mask_np = prompt_ids_np[:, p - prompt_width:], prompt_mask_np[:, p - prompt_width:]
    elif p < prompt_width:
        pad = prompt_width - p
        prompt_ids_np = np.concatenate([np.full((n, pad), pad_id, prompt_ids_np.dtype), prompt_ids_np], 1)
        prompt_mask_np = np.concatenate([np.zeros((n, pad), prompt_mask_np.dtype), prompt_mask_np], 1)
    response_mask = np.asarray(response_mask_np, np.float32)
    loss_mask = response_mask if ok_n is None else response_mask * np.asarray(ok_n, np.float32)[:, None]
    return Sequences(
        tokens_nt=np.concatenate([prompt_ids_np, response_ids_np], 1).astype(np.int32),
        valid_nt=np.concatenate([prompt_mask_np, response_mask_np], 1).astype(np.int32),
        loss_mask_nt=np.concatenate([np.zeros((n, prompt_width), np.float32), loss_mask], 1),
        sampler_logp_nt=np.concatenate(
            [np.zeros((n, prompt_width), np.float32), np.asarray(sampler_logp_np, np.float32) * response_mask], 1
        ),
        prompt_width=prompt_width,
    )


def concat_rollouts(parts: Sequence[Any]) -> dict[str, Any]:
    """Concatenates several `Rollout`s (e.g. from dynamic-sampling retries) field by field, padding the
    prompt width to the widest one."""
    width = max(r.prompt_ids_np.shape[1] for r in parts)

    def left_pad(x, value=0):
        return np.pad(x, ((0, 0), (width - x.shape[1], 0)), constant_values=value)

    return dict(
        prompt_ids_np=np.concatenate([left_pad(r.prompt_ids_np) for r in parts]),
        prompt_mask_np=np.concatenate([left_pad(r.prompt_mask_np) for r in parts]),
        response_ids_np=np.concatenate([r.response_ids_np for r in parts]),
        response_mask_np=np.concatenate([r.response_mask_np for r in parts]),
        logprobs_np=np.concatenate([r.logprobs_np for r in parts]),
        lengths_n=np.concatenate([r.lengths_n for r in parts]),
        finish_reasons=[f for r in parts for f in r.finish_reasons],
        texts=[t for r in parts for t in r.texts],
    )


def take_samples(rollout: dict[str, Any], index_n: np.ndarray) -> dict[str, Any]:
    """The samples `index_n` of a concatenated rollout dict."""
    return {
        k: ([v[i] for i in index_n] if isinstance(v, list) else v[index_n]) for k, v in rollout.items()
    }


def split_minibatches(num_samples: int, mini_batches: int, seed: int, step: int, epoch: int) -> list[np.ndarray]:
    """Sample indices of each mini-batch: a permutation drawn from (seed, step, epoch), split evenly."""
    order = np.random.default_rng([seed, step, epoch, 0xB47C]).permutation(num_samples)
    return np.split(order, mini_batches)


def to_micro_batches(array_n: np.ndarray, micro_batches: int) -> np.ndarray:
    """[n, ...] -> [micro_batches, n // micro_batches, ...]."""
    return array_n.reshape(micro_batches, array_n.shape[0] // micro_batches, *array_n.shape[1:])


def positions_np(valid_nt: np.ndarray) -> np.ndarray:
    """Position ids counting valid tokens only (the model's `positions_from_mask`, on the host)."""
    return np.maximum(np.cumsum(valid_nt.astype(np.int32), axis=-1) - 1, 0).astype(np.int32)


def sequence_batch(prompt_ids_np, prompt_mask_np, response_ids_np, response_mask_np) -> dict[str, np.ndarray]:
    """`tokens` int32 [n, P + R], `valid` bool, `positions` int32 (valid tokens counted from 0, as
    `positions_from_mask`) and `loss_mask` float32 (the response mask at the response columns)."""
    prompt_ids_np, response_ids_np = np.asarray(prompt_ids_np), np.asarray(response_ids_np)
    prompt_mask_np = np.asarray(prompt_mask_np).astype(bool)
    response_mask_np = np.asarray(response_mask_np).astype(bool)
    if prompt_ids_np.shape != prompt_mask_np.shape or response_ids_np.shape != response_mask_np.shape:
        raise ValueError(
            f"ids and masks must match: prompt {prompt_ids_np.shape} vs {prompt_mask_np.shape}, response "
            f"{response_ids_np.shape} vs {response_mask_np.shape}"
        )
    if prompt_ids_np.ndim != 2 or response_ids_np.ndim != 2 or len(prompt_ids_np) != len(response_ids_np):
        raise ValueError(f"expected [n, P] prompts and [n, R] responses, got {prompt_ids_np.shape}, "
                         f"{response_ids_np.shape}")
    tokens = np.concatenate([prompt_ids_np, response_ids_np], axis=1).astype(np.int32)
    valid = np.concatenate([prompt_mask_np, response_mask_np], axis=1)
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    loss_mask = place_response(response_mask_np.astype(np.float32), prompt_ids_np.shape[1])
    return {"tokens": tokens, "valid": valid, "positions": positions, "loss_mask": loss_mask}


def place_response(x_nr: np.ndarray, prompt_width: int) -> np.ndarray:
    """An [n, R] per-response-token array placed at columns [P, P + R) of zeros [n, P + R]."""
    x_nr = np.asarray(x_nr)
    return np.concatenate([np.zeros((x_nr.shape[0], prompt_width), x_nr.dtype), x_nr], axis=1)


def response_columns(x_nt: np.ndarray, prompt_width: int) -> np.ndarray:
    """The inverse of `place_response`: columns [P, t) of an [n, t] array."""
    return np.asarray(x_nt)[:, prompt_width:]


def split_micro_batches(batch: Mapping[str, np.ndarray], num_micro_batches: int) -> dict[str, np.ndarray]:
    """Reshapes every [n, ...] array to [m, n / m, ...] (consecutive rows form a micro-batch)."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.shape[0] % num_micro_batches:
            raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows, not divisible into "
                             f"{num_micro_batches} micro-batches")
        out[key] = value.reshape(num_micro_batches, value.shape[0] // num_micro_batches, *value.shape[1:])
    return out
