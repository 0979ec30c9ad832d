"""Host-side batch assembly: data order, overlong prompts, failed samples, sequences, splits."""

import numpy as np
import pytest

from jaxalign.train import batching


def test_data_order_depends_only_on_seed_epoch_and_position():
    a = batching.DataStream(10, seed=3)
    first = [a.next_index() for _ in range(25)]
    b = batching.DataStream(10, seed=3, position=13)  # a resumed stream
    assert [b.next_index() for _ in range(12)] == first[13:]
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert first[:10] != first[10:20]  # a new permutation each epoch
    assert a.epoch == 2


def test_overlong_prompts_truncate_keeps_tail_drop_skips_and_counts():
    examples = [{"ids": list(range(n))} for n in (3, 9, 4, 12)]
    counters = batching.PromptCounters()
    stream = batching.DataStream(4, seed=0)
    chosen, ids = batching.next_prompts(stream, examples, lambda e: e["ids"], 4, max_len=5, mode="drop",
                                        counters=counters)
    assert all(len(p) <= 5 for p in ids) and counters.dropped >= 2
    counters = batching.PromptCounters()
    assert batching.fit_prompt(list(range(9)), 5, "truncate", counters) == [4, 5, 6, 7, 8]
    assert counters.truncated == 1
    with pytest.raises(ValueError, match="every training prompt is longer"):
        batching.next_prompts(batching.DataStream(1, 0), [{"ids": [1] * 9}], lambda e: e["ids"], 1, max_len=5,
                              mode="drop", counters=counters)


def test_failed_rewards_take_their_group_mean_of_successes():
    rewards = np.array([1.0, np.nan, 0.0, 5.0, np.nan, np.nan], np.float32)
    ok = np.array([True, False, True, True, False, False])
    filled = batching.fill_failed_rewards(rewards, ok, 3)
    np.testing.assert_allclose(filled, [1.0, 0.5, 0.0, 5.0, 5.0, 5.0])


def test_informative_groups_uses_a_tolerance_relative_to_the_largest_reward():
    rewards = np.array([1, 1 + 1e-9, 0, 1, 2, 2], np.float32)
    np.testing.assert_array_equal(batching.informative_groups(rewards, 2, 1e-6), [False, True, False])
    # The same batch in units of 1e-7: the spread of the second group (1e-7) is far above 1e-6 * 2e-7, so it
    # still counts; an absolute tolerance of 1e-6 would call every group a tie.
    np.testing.assert_array_equal(batching.informative_groups(rewards * 1e-7, 2, 1e-6), [False, True, False])
    # Relative to the largest |reward| of the batch: a spread of 0.5 beside a reward of 1e6 is a tie at tol 1e-6
    # (0.5 <= 1.0), and not at tol 1e-7.
    big = np.array([0.0, 0.5, 1e6, 1e6], np.float64)
    np.testing.assert_array_equal(batching.informative_groups(big, 2, 1e-6), [False, False])
    np.testing.assert_array_equal(batching.informative_groups(big, 2, 1e-7), [True, False])
    np.testing.assert_array_equal(batching.informative_groups(np.zeros(4), 2, 1e-6), [False, False])


def test_build_sequences_layout():
    prompt = np.array([[0, 5, 6], [7, 8, 9]])
    pmask = np.array([[0, 1, 1], [1, 1, 1]])
    resp = np.array([[1, 2, 0], [3, 0, 0]])
    rmask = np.array([[1, 1, 0], [1, 0, 0]])
    logp = np.array([[-1.0, -2.0, 0], [-3.0, 0, 0]])
    seqs = batching.build_sequences(prompt, pmask, resp, rmask, logp, prompt_width=4,
                                    ok_n=np.array([True, False]))
    np.testing.assert_array_equal(seqs.tokens_nt, [[0, 0, 5, 6, 1, 2, 0], [0, 7, 8, 9, 3, 0, 0]])
    np.testing.assert_array_equal(seqs.valid_nt, [[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(seqs.loss_mask_nt, [[0, 0, 0, 0, 1, 1, 0], [0] * 7])  # failed -> no loss
    np.testing.assert_array_equal(seqs.sampler_logp_nt[0], [0, 0, 0, 0, -1, -2, 0])


def test_minibatch_split_is_a_partition_and_micro_batches_reshape():
    parts = batching.split_minibatches(12, 3, seed=0, step=4, epoch=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(12)) and all(len(p) == 4 for p in parts)
    assert batching.to_micro_batches(np.arange(12).reshape(6, 2), 3).shape == (3, 2, 2)


def test_learner_leaves_failed_samples_out_of_the_group_statistics():
    """The learner hands the samples' ok mask to the estimator: a failed sample, whose reward the episode
    filled with its group's mean, counts neither in RLOO's k nor in GRPO's std (rewards [1, 0, 1, failed]:
    RLOO gives sample 0 an advantage of 0.5, not the 0.444 of a group of four)."""
    from types import SimpleNamespace

    from jaxalign.algorithms.advantages import AdvantageConfig
    from jaxalign.train import learner
    from jaxalign.train.samples import Samples

    ok = np.array([True, True, True, False, True, True, True, True])
    rewards = batching.fill_failed_rewards(np.array([1, 0, 1, np.nan, 3, 1, 2, 2], np.float32), ok, 4)
    n, r = 8, 3
    samples = Samples(
        context_ids_np=np.ones((n, 2), np.int32), context_mask_np=np.ones((n, 2), np.int32),
        response_ids_np=np.ones((n, r), np.int32), response_mask_np=np.ones((n, r), np.int32),
        logprobs_np=np.full((n, r), -1.0, np.float32), rewards_n=rewards, ok_n=ok,
        group_ids_n=np.repeat(np.arange(2), 4).astype(np.int32))

    def advantages(estimator):
        algorithm = SimpleNamespace(estimator=estimator, recompute_old_logprobs=False,
                                    advantage_config=lambda: AdvantageConfig(estimator=estimator, eps=0.0))
        agent = SimpleNamespace(spec=SimpleNamespace(rollout=SimpleNamespace(max_prompt_len=4), algorithm=algorithm),
                                ref_params=None, has_critic=False)
        batch = learner.prepare(agent, samples, mesh=None)
        return np.asarray(batch.advantages)[:, -r:]  # the response columns

    rloo = advantages("rloo")
    # Group 0: 1 - (0 + 1)/2, 0 - (1 + 1)/2, 1 - (1 + 0)/2, failed. Group 1 (all valid, k = 4): r - mean of others.
    want = [0.5, -1.0, 0.5, 0.0, 3 - 5 / 3, 1 - 7 / 3, 2 - 2.0, 2 - 2.0]
    np.testing.assert_allclose(rloo, np.repeat(np.array(want)[:, None], r, axis=1), rtol=1e-5, atol=1e-6)
    grpo = advantages("grpo")
    s = np.sqrt(1.0 / 3.0)  # unbiased std of [1, 0, 1]
    np.testing.assert_allclose(grpo[:4, 0], [(1 / 3) / s, (-2 / 3) / s, (1 / 3) / s, 0.0], rtol=1e-5)
