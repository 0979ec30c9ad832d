"""End to end on a toy bandit: a tiny policy's expected reward rises under every advantage estimator.

The task: given a short prompt, the first generated token earns reward 1 if it lies in a target set (a
quarter of the vocabulary), else 0. Sampling uses `jax.random.categorical` on the policy's logits; the
expected reward is computed exactly from the softmax, so the check is not at the mercy of sampling noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.algorithms.advantages import ESTIMATORS, AdvantageConfig, compute_advantages, group_ids
from jaxalign.train.batching import place_response, sequence_batch, split_micro_batches
from jaxalign.algorithms.losses import LossConfig, loss_weights
from jaxalign.models import Transformer, causal_attention_mask, get_preset, positions_from_mask
from jaxalign.algorithms.optim import OptimConfig, make_optimizer
from jaxalign.train.state import init_train_state
from jaxalign.train.step import make_logprob_fn, make_train_step

VOCAB, PROMPTS, GROUP, PROMPT_LEN, STEPS = 16, 4, 8, 3, 12
TARGET = np.array([1, 5, 9, 13])
CFG = get_preset("tiny", vocab_size=VOCAB, num_layers=1, hidden_size=32, intermediate_size=64, head_dim=8)
MODEL = Transformer(CFG, rngs=nnx.Rngs(0))
GRAPHDEF, INIT_PARAMS = nnx.split(MODEL)
LOSS = LossConfig(aggregation="token_mean", logprob_chunk_size=4)
OPTIMIZER = make_optimizer(OptimConfig(learning_rate=3e-2, grad_clip_norm=1.0))
TRAIN_STEP = make_train_step(GRAPHDEF, OPTIMIZER, LOSS)
LOGPROB_FN = make_logprob_fn(GRAPHDEF, chunk_size=4)
PROMPT_IDS = np.random.default_rng(0).integers(0, VOCAB, size=(PROMPTS, PROMPT_LEN)).astype(np.int32)


@jax.jit
def next_token_logits(params, prompt_ids):
    model = nnx.merge(GRAPHDEF, params)
    valid = jnp.ones_like(prompt_ids, dtype=bool)
    hidden, _ = model(prompt_ids, positions_from_mask(valid), causal_attention_mask(valid))
    return model.unembed(hidden)[:, -1]


def expected_reward(params):
    probs = jax.nn.softmax(next_token_logits(params, jnp.asarray(PROMPT_IDS)), axis=-1)
    return float(jnp.mean(jnp.sum(probs[:, TARGET], axis=-1)))


def run(estimator, adv_cfg, seed=0):
    state = init_train_state(jax.tree.map(jnp.array, INIT_PARAMS), OPTIMIZER)
    key = jax.random.key(seed)
    n = PROMPTS * GROUP
    prompts = np.repeat(PROMPT_IDS, GROUP, axis=0)
    gids = group_ids(n, GROUP)
    for _ in range(STEPS):
        key, sample_key = jax.random.split(key)
        logits = next_token_logits(state.params, jnp.asarray(prompts))
        response = np.asarray(jax.random.categorical(sample_key, logits))[:, None].astype(np.int32)
        rewards = np.isin(response[:, 0], TARGET).astype(np.float32)
        seq = sequence_batch(prompts, np.ones_like(prompts, bool), response, np.ones_like(response, bool))
        old_logp, _ = LOGPROB_FN(state.params, seq["tokens"], seq["valid"], seq["positions"])
        ref_logp, _ = LOGPROB_FN(INIT_PARAMS, seq["tokens"], seq["valid"], seq["positions"])
        resp = slice(PROMPT_LEN, None)
        old_nr, ref_nr = np.asarray(old_logp)[:, resp], np.asarray(ref_logp)[:, resp]
        values = np.zeros_like(old_nr)  # GAE without a critic: V = 0 (returns = rewards-to-go)
        adv_nr, _ = compute_advantages(estimator, adv_cfg, rewards, gids, np.ones_like(old_nr), old_nr, ref_nr,
                                       values)
        batch = dict(
            seq,
            advantages=place_response(np.asarray(adv_nr), PROMPT_LEN),
            old_logp=np.asarray(old_logp) * seq["loss_mask"],
            loss_weights=loss_weights(seq["loss_mask"], LOSS.aggregation),
        )
        state, metrics = TRAIN_STEP(state, split_micro_batches(batch, 2))
        assert np.isfinite(float(metrics["loss"]))
    return expected_reward(state.params)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_expected_reward_rises(estimator):
    kl_coef = 0.01 if estimator in ("reinforce_pp", "reinforce_pp_baseline", "gae") else 0.0
    before = expected_reward(INIT_PARAMS)
    after = run(estimator, AdvantageConfig(kl_coef=kl_coef))
    assert 0.15 < before < 0.35
    assert after > before + 0.25, (estimator, before, after)
