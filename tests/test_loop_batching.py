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


def test_informative_groups_uses_tolerance():
    rewards = np.array([1, 1 + 1e-9, 0, 1, 2, 2], np.float32)
    np.testing.assert_array_equal(batching.informative_groups(rewards, 2, 1e-6), [False, True, False])


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
