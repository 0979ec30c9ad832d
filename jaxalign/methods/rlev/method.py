"""`RLEVMethod`, registered as "rlev": value-weighted correctness rewards (see `jaxalign.methods.rlev`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxalign.compare import CompareMetric as Col, CompareSpec
from jaxalign.methods.base import Example, FeatureFn, Method, register
from jaxalign.methods.rlev.config import RLEVConfig
from jaxalign.methods.rlev.data import (
    PREDICTOR_MAX_NEW_TOKENS,
    ScorePredictor,
    build_score_predictor,
    load_splits,
    training_values,
)
from jaxalign.methods.rlev.prompts import POLICY_SYSTEM_PROMPT
from jaxalign.methods.rlev.rewards import eos_value_metrics, judge_mask, rlev_metrics, rlev_rewards, value_scale
from jaxalign.rewards.judges import EquivalenceJudge, build_model_judge, judge_correctness, rule_features
from jaxalign.rewards.verifiers import correctness_features


@register("rlev")
class RLEVMethod(Method):
    """Value-weighted correctness rewards (see `jaxalign.methods.rlev`).

    The loop calls `setup(agents)` with the policy before `load_data`; the method takes the policy's
    sampler there. With `value_source="predicted"`, `load_data` predicts the training values with
    `predictor_model` (loaded on the policy's mesh for that pass only) or, without one, with the policy's
    sampler (or pass `score_predictor=`); `load_eval_data` (the `jaxalign eval` path) never predicts. With
    a model verifier, `judge_model` is loaded on the sampler's mesh with a sampler of its own (or pass
    `judge=`, any `EquivalenceJudge`). Tests can hand a sampler straight to `use_sampler`.
    """

    compare_spec = CompareSpec((  # `jaxalign compare`: (eval key, label, higher is better, decimals)
        Col("acc", "Acc", True, 1), Col("h_acc", "H-Acc", True, 1), Col("resp_length", "length", None, 1),
        Col("value_density", "value density", True, 2), Col("acc_top20_value", "Acc top-20% value", True, 1),
        Col("acc_bottom20_value", "Acc bottom-20% value", True, 1),
        Col("length_value_slope", "length-value slope", None, 1)))

    def __init__(self, section: Any, *, score_predictor: ScorePredictor | None = None,
                 judge: EquivalenceJudge | None = None):
        super().__init__(section)
        self.score_predictor = score_predictor
        self.judge = judge
        self._judge_calls = 0
        self._sampler: Any = None
        self._predictor_key: Any = None
        self.uniform_scale: float | None = None
        self._data_report: dict[str, Any] = {}
        self._stop_prob_fns: dict[str, Any] = {}

    def parse_config(self, section: Any) -> RLEVConfig:
        return RLEVConfig.from_dict(section)

    @property
    def data_report(self) -> Mapping[str, Any]:
        return self._data_report

    # -- models ----------------------------------------------------------------------------------------
    def setup(self, agents: Mapping[str, Any]) -> None:
        """Takes the (only) agent's sampler: see `use_sampler`."""
        self.use_sampler(next(iter(agents.values())).sampler)

    def use_sampler(self, sampler: Any, sampling_params: Any = None, key: Any = None) -> None:
        """Takes `sampler` (the policy's): without `predictor_model` it predicts the values
        (value_source="predicted"; defaults: greedy, `PREDICTOR_MAX_NEW_TOKENS` new tokens), and its mesh
        (`sampler.mesh`) is where a predictor or judge model is loaded. With a model verifier and no judge
        yet, loads `judge_model` there with a sampler of its own."""
        if key is None:
            key = jax.random.key(self.config.seed)
        self._sampler = sampler
        self._predictor_key = key
        if not self.config.predictor_model:
            if sampling_params is None:
                from jaxalign.rollout import SamplingParams

                sampling_params = SamplingParams(max_new_tokens=PREDICTOR_MAX_NEW_TOKENS, greedy=True, n=1)
            self.score_predictor = ScorePredictor(sampler, sampling_params, key)
        if self.config.verifier != "rule":
            self._load_judge()

    def _training_values(self, train: Sequence[Example]) -> np.ndarray:
        """The values of `train` under `value_source`; a `predictor_model` is loaded for this pass only."""
        cfg = self.config
        if cfg.value_source != "predicted" or self.score_predictor is not None or not cfg.predictor_model:
            return training_values(cfg, train, self.score_predictor, self._data_report)
        predictor = build_score_predictor(
            cfg.predictor_model, mesh=getattr(self._sampler, "mesh", None),
            max_prompt_len=getattr(self._sampler, "max_prompt_len", 1024),
            key=self._predictor_key if self._predictor_key is not None else jax.random.key(cfg.seed))
        values = training_values(cfg, train, predictor, self._data_report)
        self._data_report["predicted_values"]["model"] = cfg.predictor_model
        del predictor  # its weights are not needed after this pass
        return values

    def _load_judge(self) -> None:
        if self.judge is not None or self._sampler is None:
            return
        cfg = self.config
        self.judge = build_model_judge(
            cfg.judge_model, mesh=getattr(self._sampler, "mesh", None), max_new_tokens=cfg.judge_max_new_tokens,
            greedy=cfg.judge_greedy, temperature=cfg.judge_temperature, max_prompt_len=cfg.judge_max_prompt_len,
            batch_size=cfg.judge_batch_size, dtype=cfg.judge_dtype)

    # -- data ------------------------------------------------------------------------------------------
    def load_data(self) -> tuple[list[Example], list[Example]]:
        train, held_out = load_splits(self.config, self._data_report)
        if not train or not held_out:
            raise ValueError(f"rlev: empty split (train {len(train)}, eval {len(held_out)} examples)")
        reward_values = self._training_values(train)
        if self.config.reward == "random":
            reward_values = np.random.default_rng(self.config.seed).permutation(reward_values)
        train = [dict(example, reward_value=float(v)) for example, v in zip(train, reward_values)]
        human_scale = value_scale(reward_values, mode="human", alpha=self.config.alpha)
        self.uniform_scale = float(np.mean(np.asarray(human_scale)))
        self._data_report.update(
            num_train=len(train), num_eval=len(held_out), mean_value=float(reward_values.mean()),
            mean_human_scale=self.uniform_scale,
        )
        return train, held_out

    def load_eval_data(self) -> list[Example]:
        """The eval split alone: no training values, so no value prediction (and no predictor model)."""
        _, held_out = load_splits(self.config, self._data_report)
        if not held_out:
            raise ValueError("rlev: the eval split is empty; check rlev.eval_split / rlev.num_eval")
        return held_out

    # -- prompts and rewards ---------------------------------------------------------------------------
    def messages(self, example: Example) -> list[dict[str, str]]:
        system = self.config.system_prompt if self.config.system_prompt is not None else POLICY_SYSTEM_PROMPT
        return [{"role": "system", "content": system}, {"role": "user", "content": example["prompt"]}]

    @property
    def feature_fn(self) -> FeatureFn:
        return correctness_features if self.config.verifier == "rule" else rule_features

    @property
    def uses_judge(self) -> bool:
        return self.config.verifier != "rule"

    def judge_features(
        self, texts: Sequence[str], examples: Sequence[Example], features: Mapping[str, np.ndarray]
    ) -> Mapping[str, np.ndarray]:
        """The judge's verdicts as "correct" (routing: `rewards.judge_mask`); adds "judged". Samples the pool
        failed on are not judged; failed verdicts make the sample's features NaN."""
        verifier = self.config.verifier
        if verifier == "rule":
            return features
        self._load_judge()  # a stage may have switched to a model verifier after setup
        if self.judge is None:
            raise RuntimeError(f"rlev.verifier={verifier!r} needs its judge: setup(agents) (or "
                               "use_sampler(policy_sampler)) loads rlev.judge_model; or pass judge= to RLEVMethod")
        ask_n = judge_mask(verifier, features, len(texts))
        self._judge_calls += 1
        key = jax.random.fold_in(jax.random.key(self.config.seed), self._judge_calls)
        return judge_correctness(self.judge, texts, [e["prompt"] for e in examples],
                                 [str(e["answer"]) for e in examples], features, ask_n, key)

    def rewards(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        correct_n = np.asarray(features.get("correct", np.full(len(examples), np.nan)), np.float32)
        value_n = np.array([example.get("reward_value", example["value"]) for example in examples], np.float32)
        if self.config.reward == "uniform" and self.uniform_scale is None:
            raise RuntimeError("rlev reward 'uniform' needs the training-set mean scale: call load_data first")
        rewards_n, scale_n = rlev_rewards(correct_n, value_n, self.config.alpha, self.uniform_scale or 1.0,
                                          mode=self.config.reward)
        components = {
            "correct": np.nan_to_num(correct_n, nan=0.0),
            "value_scale": np.asarray(scale_n),
            "verifier_failed": np.isnan(correct_n).astype(np.float32),
        }
        if "judged" in features:
            components["judged"] = np.nan_to_num(np.asarray(features["judged"], np.float32), nan=0.0)
        return np.asarray(rewards_n), components

    def eval_episode(self, examples: Sequence[Example], ctx) -> dict[str, float]:
        """The single-turn greedy eval plus the termination analysis by value (`eos_value_metrics`): the
        policy's stop-token probability at every generated position, from one forward pass per batch."""
        from jaxalign.train.episodes import single_turn_eval

        return single_turn_eval(self, examples, ctx, rollout_metrics=self._termination_metrics)

    def _termination_metrics(self, agent: Any, examples: Sequence[Example], rollouts: Sequence[Any]
                             ) -> dict[str, float]:
        from jaxalign.train import batching
        from jaxalign.train.step import make_token_set_prob_fn

        stop_ids = tuple(int(t) for t in getattr(agent.tokenizer, "eos_token_ids", ()) or ())
        if not stop_ids or not rollouts:
            return {}
        fn = self._stop_prob_fns.get(agent.name)
        if fn is None:
            fn = make_token_set_prob_fn(agent.graphdef, stop_ids, mesh=getattr(agent.sampler, "mesh", None))
            self._stop_prob_fns[agent.name] = fn
        mesh = getattr(agent.sampler, "mesh", None)
        shards = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape]))
        probs, masks = [], []
        width = max(r.response_ids_np.shape[1] for r in rollouts)
        for r in rollouts:
            seq = batching.sequence_batch(r.prompt_ids_np, r.prompt_mask_np, r.response_ids_np,
                                          r.response_mask_np)
            n = len(r.response_ids_np)
            rows = -(-n // shards) * shards  # the rows split evenly over the mesh's batch axes
            seq = {k: np.pad(v, ((0, rows - n), (0, 0))) for k, v in seq.items()}
            p_nt = np.asarray(fn(agent.policy_params, seq["tokens"], seq["valid"], seq["positions"]))[:n]
            p_nr = batching.response_columns(p_nt, r.prompt_ids_np.shape[1])
            pad = ((0, 0), (0, width - p_nr.shape[1]))
            probs.append(np.pad(p_nr, pad))
            masks.append(np.pad(r.response_mask_np, pad))
        return eos_value_metrics(np.concatenate(probs), np.concatenate(masks),
                                 np.array([example["value"] for example in examples]))

    def eval_metrics(
        self, features: Mapping[str, np.ndarray], examples: Sequence[Example], lengths_n: np.ndarray
    ) -> dict[str, float]:
        correct_n = np.asarray(features.get("correct", np.full(len(examples), np.nan)), np.float64)
        metrics = rlev_metrics(correct_n, np.array([example["value"] for example in examples]), lengths_n)
        metrics["verifier_failed"] = float(np.isnan(correct_n).mean())
        if "has_answer" in features:
            metrics["has_answer"] = float(100.0 * np.nan_to_num(features["has_answer"]).mean())
        if "judged" in features:
            metrics["judged"] = float(100.0 * np.nan_to_num(features["judged"]).mean())
        return metrics
