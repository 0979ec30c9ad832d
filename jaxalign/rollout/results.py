"""The `Rollout` record handed to the trainer, and its host-side assembly (stop strings, texts)."""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class Detokenizer(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class Rollout:
    """Sampled responses as NumPy arrays; sample i belongs to prompt `i // n`, a prompt's samples are
    contiguous.

    Attributes:
      prompt_ids_np: int32 [N, P], left-padded prompts (P is the sampler's bucketed prompt width).
      prompt_mask_np: int32 [N, P], 1 on prompt tokens.
      response_ids_np: int32 [N, R], right-padded responses (R = max_new_tokens); pad id after the end.
      response_mask_np: int32 [N, R], 1 on generated tokens up to and including the stop token.
      logprobs_np: float32 [N, R], the sampler's log-probs (see `sampling`), 0 where the mask is 0.
      lengths_n: int32 [N], number of response tokens (the mask's row sums).
      finish_reasons: "stop" (EOS, stop id or stop string) or "length" per sample.
      group_ids_n: int32 [N], index of the sample's prompt.
      texts: decoded responses; stop-token text excluded, a stop string included at the end.
    """

    prompt_ids_np: np.ndarray
    prompt_mask_np: np.ndarray
    response_ids_np: np.ndarray
    response_mask_np: np.ndarray
    logprobs_np: np.ndarray
    lengths_n: np.ndarray
    finish_reasons: list[str]
    group_ids_n: np.ndarray
    texts: list[str]

    @property
    def num_samples(self) -> int:
        return int(self.response_ids_np.shape[0])

    @property
    def num_generated_tokens(self) -> int:
        return int(self.lengths_n.sum())


def _first_stop_string_end(text: str, stop_strings: Sequence[str]) -> int | None:
    """End offset of the stop string occurrence that ends first in `text`, or None."""
    ends = [text.find(s) + len(s) for s in stop_strings if s in text]
    return min(ends) if ends else None


def _tokens_to_first_stop_string(
    ids: Sequence[int], stop_strings: Sequence[str], tokenizer: Detokenizer
) -> int:
    """Fewest leading tokens whose text contains a stop string (the caller knows all of `ids` does).

    Binary search: containing a stop string is monotone in the number of tokens decoded.
    """
    low, high = 1, len(ids)
    while low < high:
        mid = (low + high) // 2
        if _first_stop_string_end(tokenizer.decode(list(ids[:mid])), stop_strings) is not None:
            high = mid
        else:
            low = mid + 1
    return low


def assemble_rollout(
    *,
    prompt_ids_np: np.ndarray,
    prompt_mask_np: np.ndarray,
    response_ids_np: np.ndarray,
    logprobs_np: np.ndarray,
    lengths_n: np.ndarray,
    ended_by_stop_token_n: np.ndarray,
    n: int,
    ended_by_stop_string_n: np.ndarray | None = None,
    stop_strings: Sequence[str],
    tokenizer: Detokenizer | None,
    pad_id: int,
) -> Rollout:
    """Builds the `Rollout` from the device loop's outputs (already cut to the real samples).

    `lengths_n` counts generated tokens including a stop token; `ended_by_stop_token_n` says whether
    the last counted token is a stop token; `ended_by_stop_string_n` (when the device loop checked stop
    strings) that its last token completed a stop string. Stop strings are applied here either way: a
    response is cut after the token that completes its first stop string, and its text right after the
    stop string. Without a tokenizer, texts are empty and stop strings must be empty.
    """
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode responses; the sampler has none")
    num_samples, max_new = response_ids_np.shape
    lengths_n = np.asarray(lengths_n, np.int32).copy()
    stopped_n = np.asarray(ended_by_stop_token_n, bool).copy()
    string_stopped_n = (np.zeros_like(stopped_n) if ended_by_stop_string_n is None
                        else np.asarray(ended_by_stop_string_n, bool))
    texts: list[str] = []
    for i in range(num_samples):
        length = int(lengths_n[i])
        text_ids = response_ids_np[i, : length - 1 if stopped_n[i] else length].tolist()
        if tokenizer is None:
            texts.append("")
            continue
        text = tokenizer.decode(text_ids)
        if stop_strings and text_ids:
            end = _first_stop_string_end(text, stop_strings)
            if end is not None:
                cut = _tokens_to_first_stop_string(text_ids, stop_strings, tokenizer)
                lengths_n[i] = cut
                stopped_n[i] = True
                text = tokenizer.decode(text_ids[:cut])
                text = text[: _first_stop_string_end(text, stop_strings)]
        stopped_n[i] |= string_stopped_n[i]
        texts.append(text)

    response_mask_np = (np.arange(max_new)[None, :] < lengths_n[:, None]).astype(np.int32)
    response_ids_np = np.where(response_mask_np == 1, response_ids_np, pad_id).astype(np.int32)
    logprobs_np = np.where(response_mask_np == 1, logprobs_np, 0.0).astype(np.float32)
    finish_reasons = [FINISH_STOP if s else FINISH_LENGTH for s in stopped_n]
    return Rollout(
        prompt_ids_np=np.asarray(prompt_ids_np, np.int32),
        prompt_mask_np=np.asarray(prompt_mask_np, np.int32),
        response_ids_np=response_ids_np,
        response_mask_np=response_mask_np,
        logprobs_np=logprobs_np,
        lengths_n=lengths_n,
        finish_reasons=finish_reasons,
        group_ids_n=(np.arange(num_samples) // n).astype(np.int32),
        texts=texts,
    )
