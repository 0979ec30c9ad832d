"""From a sampler's rollout arrays to the training batch layout (host side, NumPy).

A training sequence is `concat(prompt_ids (left-padded, width P), response_ids (right-padded, width R))`,
so the response token j sits at column P + j and every per-response-token array ([n, R]: advantages,
sampler log-probs, ...) moves to columns [P, P + R) of an [n, P + R] array (`place_response`). The model's
log-prob at column c is log p(tokens[c] | tokens[<c]), which is exactly the sampler's log-prob of
response token c - P, so sampler and trainer log-probs line up column by column.

Typical use in the host loop:

    seq = sequence_batch(r.prompt_ids_np, r.prompt_mask_np, r.response_ids_np, r.response_mask_np)
    adv_nr, _ = compute_advantages(...)                      # on response columns, mask = response_mask
    batch = dict(seq,
                 advantages=place_response(adv_nr, P),
                 old_logp=place_response(r.logprobs_np, P),  # or recomputed with make_logprob_fn
                 loss_weights=loss_weights(seq["loss_mask"], cfg.aggregation, cfg.constant_normalizer))
    batch = split_micro_batches(batch, num_micro_batches)   # [m, b, t] for train_step
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


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
