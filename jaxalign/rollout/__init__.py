"""Rollout engine: sampling parameters, the jitted KV-cache sampler and the `Rollout` record."""

from jaxalign.rollout.results import FINISH_LENGTH, FINISH_STOP, Rollout
from jaxalign.rollout.sampler import Sampler, bucket_batch, decode, decode_step, prefill
from jaxalign.rollout.sampling import SamplingParams, sample_tokens, token_logprobs, truncate_logits

__all__ = [
    "FINISH_LENGTH",
    "FINISH_STOP",
    "Rollout",
    "Sampler",
    "SamplingParams",
    "bucket_batch",
    "decode",
    "decode_step",
    "prefill",
    "sample_tokens",
    "token_logprobs",
    "truncate_logits",
]
