"""`GTAlignMethod`, registered as "gtalign": mutual-welfare rewards over the four-block game format (see
`jaxalign.methods.gtalign`), and its `jaxalign steer` command."""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.compare import CompareMetric as Col, CompareSpec
from jaxalign.methods.base import Example, FeatureFn, Method, register
from jaxalign.methods.gtalign.config import ACTIONS, FEATURES, JUDGED_SOURCES, GTAlignConfig
from jaxalign.methods.gtalign.data import load_splits
from jaxalign.methods.gtalign.judges import GTAlignJudge, build_gtalign_judge
from jaxalign.methods.gtalign.prompts import game_messages
from jaxalign.methods.gtalign.rewards import GTAlignFeatures, gtalign_rewards, scored_mask, zscore_by_source
from jaxalign.methods.gtalign.steer import add_steer_command


@register("gtalign")
class GTAlignMethod(Method):
    """Mutual-welfare rewards over the four-block game format (see `jaxalign.methods.gtalign`)."""

    compare_spec = CompareSpec((  # `jaxalign compare`: (eval key, label, higher is better, decimals)
        Col("user_welfare", "U"), Col("llm_welfare", "L"), Col("welfare", "W"), Col("answer", "answer %", True, 1),
        Col("format", "format %", True, 1), Col("parsed", "parsed %", True, 1),
        Col("welfare_consistent", "welfare choice %", True, 1), Col("action_DA", "DA %", None, 1),
        Col("action_CQ", "CQ %", None, 1), Col("action_AQ", "AQ %", None, 1), Col("length", "length", None, 1)),
        pareto=("user_welfare", "llm_welfare"))

    def __init__(self, section: Any, *, judge: GTAlignJudge | None = None):
        super().__init__(section)
        self._data_report: dict[str, Any] = {}
        self.judge = judge
        self._judge_calls = 0
        self._base_model: tuple[str, Any] | None = None  # (the policy's model spec, its mesh), from setup

    def setup(self, agents: Mapping[str, Any]) -> None:
        """Notes the policy's base model (`model.spec`) and mesh, and loads the judge model when
        `gtalign.judge="model"`: `gtalign.judge_model`, or that base model, with a sampler of its own."""
        agent = next(iter(agents.values()))
        self._base_model = (agent.spec.model.spec, getattr(agent.sampler, "mesh", None))
        self._load_judge()

    def _load_judge(self) -> None:
        cfg = self.config
        if cfg.judge != "model" or self.judge is not None or self._base_model is None:
            return
        base_spec, mesh = self._base_model
        self.judge = build_gtalign_judge(cfg.judge_model or base_spec, mesh=mesh,
                                         max_new_tokens=cfg.judge_max_new_tokens,
                                         max_prompt_len=cfg.judge_max_prompt_len, batch_size=cfg.judge_batch_size,
                                         dtype=cfg.judge_dtype)

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
        train, held_out = load_splits(self.config, self._data_report)
        if self.config.judge == "rule":
            judged = sorted({e["data_source"] for e in (*train, *held_out)} & set(JUDGED_SOURCES))
            if judged:
                raise ValueError(f"gtalign: data source(s) {', '.join(judged)} of {self.config.dataset!r} are scored "
                                 "by model judges (writing, safety), but gtalign.judge='rule'; set "
                                 "gtalign.judge='model' (judge_model defaults to the policy's base model)")
        return train, held_out

    def messages(self, example: Example) -> list[dict[str, str]]:
        return game_messages(example["prompt"], first_question=example.get("first_question"),
                             system_prompt=self.config.system_prompt)

    @property
    def feature_fn(self) -> FeatureFn:
        return GTAlignFeatures(self.config)

    @property
    def uses_judge(self) -> bool:
        return self.config.judge == "model"

    def judge_features(self, texts: Sequence[str], examples: Sequence[Example], features: Mapping[str, np.ndarray]
                       ) -> Mapping[str, np.ndarray]:
        """With `gtalign.judge="model"`, the judges' verdicts (`GTAlignJudge.judge_features`); unchanged else."""
        if self.config.judge != "model":
            return features
        self._load_judge()  # a stage may have switched the judge on after setup
        if self.judge is None:
            raise RuntimeError("gtalign.judge='model' needs its judge: setup(agents) loads gtalign.judge_model (or "
                               "the policy's base model); or pass judge= to GTAlignMethod")
        self._judge_calls += 1
        key = jax.random.fold_in(jax.random.key(self.config.seed), self._judge_calls)
        return self.judge.judge_features(texts, examples, features, key, pareto=self.config.llm_terms == "pareto")

    def rewards(self, features: Mapping[str, np.ndarray], examples: Sequence[Example]
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(examples)
        f = {k: np.asarray(features.get(k, np.full(n, np.nan)), np.float32) for k in FEATURES}
        rewards_n, user_n, llm_n = gtalign_rewards(f, mode=self.config.reward, llm_terms=self.config.llm_terms)
        rewards_n = np.asarray(rewards_n)
        components = {"welfare": np.asarray(jnp.sqrt(user_n * llm_n)), "user": np.asarray(user_n),
                      "llm": np.asarray(llm_n), "format": f["format"], "parse_ok": f["parse_ok"],
                      "answer": f["answer_llm"]}
        if "judged" in features:
            components["judged"] = np.nan_to_num(np.asarray(features["judged"], np.float32), nan=0.0)
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
        parsed = np.asarray(scored_mask(f, self.config.llm_terms))  # with "pareto" the analysis must parse too
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
        if "judged" in features:
            metrics["judged"] = 100.0 * float(np.nan_to_num(np.asarray(features["judged"], np.float64)).mean())
        return metrics
