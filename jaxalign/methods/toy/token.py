"""`toy_token`: a token-level toy method for smoke tests of the loop on random models without a tokenizer.

Prompts are random token ids (`example["prompt_ids"]`, used by the loop as they are); the loop hands the
feature function the response as space-separated token ids when there is no tokenizer. The reward is the
fraction of response tokens whose id is below `target_below`, a task any policy learns in a few steps, so a
rising reward shows that sampling, advantages, the update and the weight sync are all wired correctly.

The target ids are a small slice at the bottom of the vocabulary and the prompt ids come from a disjoint
range above it (`prompt_id_range`), so an untrained model scores low: sampling hits a target about
`target_below / vocab_size` of the time, and greedy decoding of a random model with tied embeddings mostly
echoes prompt tokens, which are never targets.

Config section `toy_token` (`ToyTokenConfig`): `target_below`, `num_train`, `num_eval`, `prompt_len`,
`prompt_id_range` (a [low, high) pair; default (128, 256), which needs a vocabulary of at least 256) and
`seed`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxalign.methods.base import Example, Method, config_section, register

PROMPT_ID_RANGE = (128, 256)


@dataclasses.dataclass(frozen=True)
class ToyTokenConfig:
    """The `toy_token` config section (see the module docstring)."""

    target_below: int = 16
    num_train: int = 64
    num_eval: int = 8
    prompt_len: int = 6
    prompt_id_range: tuple[int, int] = PROMPT_ID_RANGE
    seed: int = 0

    def __post_init__(self):
        for name in ("target_below", "num_train", "num_eval", "prompt_len", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        low, high = (int(x) for x in self.prompt_id_range)
        object.__setattr__(self, "prompt_id_range", (low, high))
        if not self.target_below <= low < high:
            raise ValueError(
                f"toy_token.prompt_id_range=({low}, {high}) must be a non-empty range at or above "
                f"target_below={self.target_below}, so prompts never contain target tokens; raise the range or "
                "lower target_below"
            )


def token_features(text: str, example: Mapping[str, Any]) -> dict[str, float]:
    """Fraction of response token ids below the target, from a space-separated id string."""
    ids = [int(tok) for tok in text.split()]
    if not ids:
        return {"target_fraction": 0.0, "num_tokens": 0.0}
    hits = sum(1 for i in ids if i < example["target_below"])
    return {"target_fraction": hits / len(ids), "num_tokens": float(len(ids))}


@register("toy_token")
class ToyTokenMethod(Method):
    """Reward = fraction of response tokens with id < `target_below`."""

    def parse_config(self, section: Any) -> ToyTokenConfig:
        return config_section(ToyTokenConfig, section, "toy_token")

    def _examples(self, count: int, seed: int) -> list[Example]:
        rng = np.random.default_rng(seed)
        cfg = self.config
        return [
            {
                "prompt": f"toy-{seed}-{i}",
                "prompt_ids": rng.integers(*cfg.prompt_id_range, size=cfg.prompt_len).tolist(),
                "target_below": cfg.target_below,
            }
            for i in range(count)
        ]

    def load_data(self) -> tuple[list[Example], list[Example]]:
        seed = self.config.seed
        return self._examples(self.config.num_train, seed), self._examples(self.config.num_eval, seed + 1)

    @property
    def feature_fn(self):
        return token_features

    def rewards(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        fraction = np.nan_to_num(np.asarray(features["target_fraction"], np.float32))
        return fraction, {"target_fraction": fraction}

    def eval_metrics(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example], lengths_n: np.ndarray
    ) -> dict[str, float]:
        fraction = np.nan_to_num(np.asarray(features["target_fraction"], np.float64))
        return {"target_fraction": float(fraction.mean()), "length": float(np.mean(lengths_n))}
