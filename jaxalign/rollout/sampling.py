"""Token sampling maths: sampling parameters, logit truncation, draws and the sampler's log-probs.

The sampler's log-prob of a token (one definition shared with the trainer) is
`log_softmax(logits / temperature)` over the full vocabulary, taken *before* top-k / top-p truncation;
greedy decoding uses temperature 1. Truncation only decides which tokens may be drawn.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample responses.

    Attributes:
      max_new_tokens: most tokens generated per response (the stop token included).
      temperature: softmax temperature (> 0); ignored when `greedy`.
      top_k: keep the k most likely tokens (0 = off).
      top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches p (1.0 = off).
      greedy: always take the most likely token; log-probs then use temperature 1.
      n: samples per prompt; the samples of one prompt are contiguous in the rollout.
      stop_token_ids: token ids that end a response in addition to the tokenizer's EOS ids. The stop
        token is part of the response (mask 1) but not of its text.
      stop_strings: strings that end a response; the response is cut after the token that completes the
        first occurrence, and its text ends with the stop string. Checked inside the decode loop when the
        tokenizer has an exact byte table (`Tokenizer.token_bytes`), else on the host after decoding.
      include_eos: whether the tokenizer's EOS ids stop a response (True for chat and RL use).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    n: int = 1
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    include_eos: bool = True

    def __post_init__(self):
        # Lists are accepted for convenience and stored as tuples so the params stay hashable.
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if isinstance(self.stop_strings, str):
            raise TypeError("SamplingParams.stop_strings must be a sequence of strings, not one string")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if int(self.n) < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if int(self.top_k) < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not self.greedy and not float(self.temperature) > 0.0:
            raise ValueError(
                f"SamplingParams.temperature must be > 0 unless greedy=True, got {self.temperature}"
            )
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"SamplingParams.stop_token_ids must be non-negative, got {self.stop_token_ids}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"SamplingParams.stop_strings must be non-empty strings, got {self.stop_strings}")

    @property
    def logprob_temperature(self) -> float:
        """The temperature that defines the sampler's log-probs (1.0 for greedy)."""
        return 1.0 if self.greedy else float(self.temperature)

    @property
    def compile_key(self) -> tuple[bool, int, bool]:
        """The parts that change the compiled program: (greedy, top_k, top_p in use)."""
        return (bool(self.greedy), int(self.top_k), float(self.top_p) < 1.0)


def truncate_logits(logits_bv: jax.Array, *, top_k: int, top_p: jax.Array | float | None) -> jax.Array:
    """Sets logits outside the top-k / top-p set to -inf (top-k first, then top-p on what remains).

    `top_k` is static (0 = off); `top_p` may be traced (None = off). Tokens tied with the k-th or the
    nucleus' last logit are kept, so ties can make the kept set slightly larger. The most likely token
    is always kept.
    """
    vocab = logits_bv.shape[-1]
    neg_inf = jnp.asarray(-jnp.inf, logits_bv.dtype)
    sorted_desc_bk = None
    if 0 < top_k < vocab:
        sorted_desc_bk, _ = jax.lax.top_k(logits_bv, top_k)
        logits_bv = jnp.where(logits_bv < sorted_desc_bk[:, -1:], neg_inf, logits_bv)
    if top_p is not None:
        if sorted_desc_bk is None:
            sorted_desc_bk = -jnp.sort(-logits_bv, axis=-1)
        probs_bk = jax.nn.softmax(sorted_desc_bk.astype(jnp.float32), axis=-1)
        mass_before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
        # A token is in the nucleus if the tokens ranked above it have not yet reached top_p.
        kept_count_b = jnp.maximum(jnp.sum(mass_before_bk < top_p, axis=-1), 1)
        threshold_b1 = jnp.take_along_axis(sorted_desc_bk, kept_count_b[:, None] - 1, axis=-1)
        logits_bv = jnp.where(logits_bv < threshold_b1, neg_inf, logits_bv)
    return logits_bv


def token_logprobs(logits_bv: jax.Array, tokens_b: jax.Array, temperature: jax.Array | float) -> jax.Array:
    """`log_softmax(logits / temperature)[token]` in float32, over the full vocabulary."""
    scaled_bv = logits_bv.astype(jnp.float32) / temperature
    picked_b = jnp.take_along_axis(scaled_bv, tokens_b[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return picked_b - jax.nn.logsumexp(scaled_bv, axis=-1)


def sample_tokens(
    logits_bv: jax.Array,
    keys_b: jax.Array,
    *,
    temperature: jax.Array | float,
    top_p: jax.Array | float | None,
    top_k: int,
    greedy: bool,
) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row and returns `(tokens_b int32, logprobs_b float32)`.

    Each row uses its own key (`keys_b`, one per row), so a row's draw does not depend on the batch
    it sits in (padding, sharding). `greedy`, `top_k` and whether `top_p` is used are static.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if greedy:
        tokens_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        return tokens_b, token_logprobs(logits_bv, tokens_b, 1.0)
    scaled_bv = logits_bv / temperature
    allowed_bv = truncate_logits(scaled_bv, top_k=top_k, top_p=top_p)
    tokens_b = jax.vmap(jax.random.categorical)(keys_b, allowed_bv).astype(jnp.int32)
    return tokens_b, token_logprobs(scaled_bv, tokens_b, 1.0)


def per_sample_keys(key: jax.Array, sample_ids_b: jax.Array, step: jax.Array | int) -> jax.Array:
    """One key per sample and step: fold the sample id, then the step, into `key`."""
    step = jnp.asarray(step, jnp.int32)
    return jax.vmap(lambda sid: jax.random.fold_in(jax.random.fold_in(key, sid), step))(sample_ids_b)


def is_stop_token(tokens_b: jax.Array, stop_ids_s: jax.Array) -> jax.Array:
    """Whether each token is one of `stop_ids_s` (padding entries of -1 never match)."""
    matches_bs = (tokens_b[:, None] == stop_ids_s[None, :]) & (stop_ids_s[None, :] >= 0)
    return jnp.any(matches_bs, axis=-1)
