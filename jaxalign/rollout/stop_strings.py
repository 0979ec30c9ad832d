"""Stop strings checked on device, inside the decode loop, on the exact bytes of the decoded text.

A stop string (say `</payoff>`) is a property of the text, not of token ids: it can span several tokens
or end in the middle of one. The host knows the text only after decoding, so without help a sequence
would keep generating until EOS or the length limit after its stop string had appeared. Here the
tokenizer's vocabulary becomes a byte table (`token_id -> UTF-8 bytes it adds to the decoded text`;
special tokens add none), and each row of the decode loop keeps a short window of its last response
bytes. After each token the window is shifted and every stop string is compared at every end offset
inside the new token's bytes, so a row is done on the very token that completes a stop string and the
loop exits as soon as all rows are done.

This is exact for tokenizers whose decoding is a plain concatenation of per-token bytes (byte-level
BPE: Llama 3, Qwen, SmolLM2, GPT-2). Other tokenizers return no table and stop strings are then applied
on the host after decoding (`results.assemble_rollout`), with the same final rollout, only slower.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_STOP_COUNT_BUCKET = 4
_STOP_WIDTH_BUCKET = 8
_EMPTY = -1  # window and stop padding value; never equal to a real byte (0..255)


class StopBytes(NamedTuple):
    """Device arrays for on-device stop strings.

    table_vm: uint8 [V, M], the bytes of each token id, left-aligned, zero padded.
    lengths_v: int32 [V], how many of the table's bytes are real.
    stops_sl: int32 [S, L], the stop strings' bytes right-aligned, `-1` in padding (rows and columns).
    """

    table_vm: jax.Array
    lengths_v: jax.Array
    stops_sl: jax.Array

    @property
    def window_width(self) -> int:
        """Bytes a row must remember: the longest stop string minus one, plus one token's bytes."""
        return int(self.stops_sl.shape[1]) - 1 + int(self.table_vm.shape[1])


def byte_table(token_bytes: Sequence[bytes], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Packs per-token bytes into (table_vm uint8, lengths_v int32) for a model with `vocab_size` ids.

    Ids past the tokenizer's vocabulary (models often pad the embedding) add no bytes.
    """
    if len(token_bytes) > vocab_size:
        raise ValueError(f"the tokenizer has {len(token_bytes)} tokens but the model only {vocab_size}")
    width = max([len(b) for b in token_bytes] + [1])
    table_vm = np.zeros((vocab_size, width), np.uint8)
    lengths_v = np.zeros((vocab_size,), np.int32)
    for token_id, data in enumerate(token_bytes):
        table_vm[token_id, : len(data)] = np.frombuffer(data, np.uint8)
        lengths_v[token_id] = len(data)
    return table_vm, lengths_v


def encode_stops(stop_strings: Sequence[str]) -> np.ndarray:
    """The stop strings' UTF-8 bytes, right-aligned in an int32 [S, L] array padded with -1.

    S and L are rounded up to small buckets so that similar stop lists share one compiled program.
    """
    if not stop_strings:
        raise ValueError("encode_stops: no stop strings given")
    encoded = [s.encode("utf-8") for s in stop_strings]
    count = -(-len(encoded) // _STOP_COUNT_BUCKET) * _STOP_COUNT_BUCKET
    width = -(-max(len(e) for e in encoded) // _STOP_WIDTH_BUCKET) * _STOP_WIDTH_BUCKET
    stops_sl = np.full((count, width), _EMPTY, np.int32)
    for i, data in enumerate(encoded):
        stops_sl[i, width - len(data):] = np.frombuffer(data, np.uint8)
    return stops_sl


def empty_window(batch: int, stop_bytes: StopBytes) -> jax.Array:
    """The byte window of rows that have generated nothing yet."""
    return jnp.full((batch, stop_bytes.window_width), _EMPTY, jnp.int32)


def advance(window_bw: jax.Array, tokens_b: jax.Array, stop_bytes: StopBytes
            ) -> tuple[jax.Array, jax.Array]:
    """Appends each row's new token bytes to its window; returns (new window, hit_b).

    `hit_b` is True where a stop string ends inside the new token's bytes (so the text up to and
    including this token contains a stop string that the text before it did not complete).
    """
    table_vm, lengths_v, stops_sl = stop_bytes
    _, width = window_bw.shape
    token_width = table_vm.shape[1]
    stop_width = stops_sl.shape[1]
    new_bm = table_vm[tokens_b].astype(jnp.int32)
    new_len_b = lengths_v[tokens_b]
    joined_bj = jnp.concatenate([window_bw, new_bm], axis=1)
    # Shifting left by each row's byte count keeps the last `width` real bytes.
    shift_bw = new_len_b[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
    window_bw = jnp.take_along_axis(joined_bj, shift_bw, axis=1)

    # Candidate end offsets o (0 = last byte); the window is wide enough that every start is >= 0.
    offsets_m = jnp.arange(token_width, dtype=jnp.int32)
    positions_ml = (width - 1 - offsets_m)[:, None] - (stop_width - 1 - jnp.arange(stop_width))[None, :]
    candidates_bml = window_bw[:, positions_ml]
    stop_valid_sl = stops_sl != _EMPTY
    equal_bmsl = (candidates_bml[:, :, None, :] == stops_sl[None, None]) | ~stop_valid_sl[None, None]
    match_bms = jnp.all(equal_bmsl, axis=-1) & jnp.any(stop_valid_sl, axis=-1)[None, None]
    in_new_bytes_bm = offsets_m[None, :] < new_len_b[:, None]
    hit_b = jnp.any(match_bms & in_new_bytes_bm[:, :, None], axis=(1, 2))
    return window_bw, hit_b
