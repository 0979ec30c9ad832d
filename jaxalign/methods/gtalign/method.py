"""`GTAlignMethod`, registered as "gtalign": mutual-welfare rewards over the four-block game format (see
`jaxalign.methods.gtalign`), and its `jaxalign steer` command."""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from jaxalign.methods.base import Example, FeatureFn, Method, register
from jaxalign.methods.gtalign.config import ACTIONS, FEATURES, GTAlignConfig
from jaxalign.methods.gtalign.data import load_splits
from jaxalign.methods.gtalign.prompts import game_messages
from jaxalign.methods.gtalign.rewards import GTAlignFeatures, gtalign_rewards, zscore_by_source
from jaxalign.methods.gtalign.steer import add_steer_command


@register("gtalign")
class GTAlignMethod(Method):
    """Mutual-welfare rewards over the four-block game format (see `jaxalign.methods.gtalign`)."""

    def __init__(self, section: Any):
        super().__init__(section)
        self._data_report: dict[str, Any] = {}

    def parse_config(self, section: Any) -> GTAlignConfig:
        return GTAlignConfig.from_dict(section)

    @property
    def data_report(self) -> Mapping[str, Any]:
        return self._data_report

    @classmethod
    def add_commands(cls, subparsers: "argparse._SubParsersAction", parents: Sequence[argparse.ArgumentParser]
                     ) -> None:
        add_steer_command(subparsers, parents)

    def load_data(self) -> tuple[list[Example], list[Example]]:
        return load_splits(self.config, self._data_report)

    def messages(self, example: Example) -> list[dict[str, str]]:
        return game_messages(example["prompt"], first_question=example.get("first_question"),
                             system_prompt=self.config.system_prompt)

    @property
    def feature_fn(self) -> FeatureFn:
        return GTAlignFeatures(self.config)

    def rewards(self, features: Mapping[str, np.ndarray], examples: Sequence[Example]
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(examples)
        f = {k: np.asarray(features.get(k, np.full(n, np.nan)), np.float32) for k in FEATURES}
        rewards_n, user_n, llm_n = gtalign_rewards(f, mode=self.config.reward, llm_terms=self.config.llm_terms)
        rewards_n = np.asarray(rewards_n)
        components = {"welfare": np.asarray(jnp.sqrt(user_n * llm_n)), "user": np.asarray(user_n),
                      "llm": np.asarray(llm_n), "format": f["format"], "parse_ok": f["parse_ok"],
                      "answer": f["answer_llm"]}
        if self.config.normalize == "zscore":
            components["raw_reward"] = rewards_n
            rewards_n = zscore_by_source(rewards_n, [e["data_source"] for e in examples])
        return rewards_n, components

    def eval_metrics(self, features: Mapping[str, np.ndarray], examples: Sequence[Example], lengths_n: np.ndarray
                     ) -> dict[str, float]:
        n = len(examples)
        f = {k: np.nan_to_num(np.asarray(features.get(k, np.zeros(n)), np.float32)) for k in FEATURES}
        # The "welfare" reward is sqrt(U L), already 0 where the reply did not parse.
        welfare_n, user_n, llm_n = gtalign_rewards(f, mode="welfare", llm_terms=self.config.llm_terms)
        parsed = f["parse_ok"] > 0.5
        metrics = {
            "format": 100.0 * float(f["format"].mean()),
            "parsed": 100.0 * float(parsed.mean()),
            "answer": 100.0 * float(f["answer_llm"].mean()),
            "user_welfare": float(np.where(parsed, user_n, 0.0).mean()),
            "llm_welfare": float(np.where(parsed, llm_n, 0.0).mean()),
            "welfare": float(welfare_n.mean()),
            "welfare_consistent": 100.0 * float(f["welfare_consistent"].mean()),
            "response_ratio": float(f["response_ratio"].mean()),
            "length": float(np.mean(lengths_n)),
        }
        metrics.update({f"action_{a}": 100.0 * float(f[f"action_{a}"].mean()) for a in ACTIONS})
        for source in sorted({e["data_source"] for e in examples}):
            rows = np.array([e["data_source"] == source for e in examples])
            metrics[f"answer_{source}"] = 100.0 * float(f["answer_llm"][rows].mean())
        return metrics
