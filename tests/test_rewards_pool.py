"""RewardPool: order, reuse, and failures (timeout, crash, exception, NaN) that never escape `map`."""

import os
import time

import numpy as np
import pytest

from jaxalign.rewards.pool import RewardPool, RewardResult, collect_features, validate_features


# Feature functions must be top-level so the children can unpickle them (they import this module).
def length_features(text, example):
    return {"length": float(len(text)), "index": float(example["i"])}


def misbehaving_features(text, example):
    mode = example["mode"]
    if mode == "sleep":
        time.sleep(60)
    if mode == "exit":
        os._exit(3)
    if mode == "raise":
        raise ZeroDivisionError("boom")
    if mode == "nan":
        return {"x": float("nan")}
    if mode == "inf":
        return {"x": float("inf")}
    if mode == "not_dict":
        return [1.0]
    if mode == "string_value":
        return {"x": "1.0"}
    return {"x": float(example["i"]), "pid": float(os.getpid())}


def test_in_process_mode_matches_and_counts_failures():
    items = [("ab", {"mode": "ok", "i": 0}), ("c", {"mode": "raise", "i": 1}), ("d", {"mode": "nan", "i": 2})]
    with RewardPool(num_workers=0, timeout_s=1.0) as pool:
        results = pool.map(misbehaving_features, items)
    assert [r.ok for r in results] == [True, False, False]
    assert results[0].value == {"x": 0.0, "pid": float(os.getpid())}
    assert results[1].failure == "exception" and "ZeroDivisionError" in results[1].error
    assert results[2].failure == "invalid" and "not finite" in results[2].error
    assert pool.stats["failed"] == 2 and pool.stats["ok"] == 1


def test_order_kept_and_workers_reused_across_calls():
    texts = [("x" * k, {"i": k}) for k in range(7)]
    with RewardPool(num_workers=2, timeout_s=20.0) as pool:
        first = pool.map(length_features, texts)
        second = pool.map(misbehaving_features, [("", {"mode": "ok", "i": k}) for k in range(6)])
        third = pool.map(misbehaving_features, [("", {"mode": "ok", "i": k}) for k in range(6)])
        assert pool.stats["restarts"] == 0
    assert [r.value["length"] for r in first] == [float(k) for k in range(7)]
    assert [r.value["index"] for r in first] == [float(k) for k in range(7)]
    assert [r.value["x"] for r in second] == [float(k) for k in range(6)]
    pids_second = {r.value["pid"] for r in second}
    pids_third = {r.value["pid"] for r in third}
    assert len(pids_second) <= 2 and pids_second == pids_third  # same two children both times
    assert float(os.getpid()) not in pids_second
    assert len(pool.startup_seconds) == 2


def test_every_failure_kind_is_counted_and_pool_keeps_working():
    modes = ["ok", "sleep", "ok", "exit", "raise", "nan", "inf", "not_dict", "string_value", "ok"]
    items = [("", {"mode": mode, "i": i}) for i, mode in enumerate(modes)]
    with RewardPool(num_workers=2, timeout_s=3.0) as pool:
        started = time.perf_counter()
        results = pool.map(misbehaving_features, items)
        elapsed = time.perf_counter() - started
        after = pool.map(misbehaving_features, [("", {"mode": "ok", "i": i}) for i in range(4)])
        stats = dict(pool.stats)
    failures = [r.failure for r in results]
    assert failures == [None, "timeout", None, "crash", "exception", "invalid", "invalid", "invalid",
                        "invalid", None]
    assert [r.value.get("x") for r in results if r.ok] == [0.0, 2.0, 9.0]
    assert "exit code 3" in results[3].error
    assert elapsed < 30  # the 60 s sleep was cut off
    assert all(r.ok for r in after) and [r.value["x"] for r in after] == [0.0, 1.0, 2.0, 3.0]
    assert stats["timeout"] == 1 and stats["crash"] == 1 and stats["exception"] == 1
    assert stats["invalid"] == 4 and stats["failed"] == 7 and stats["ok"] == 7
    assert stats["restarts"] == 2  # the hung and the crashed worker were replaced


def test_unpicklable_function_is_a_clear_error():
    with RewardPool(num_workers=1, timeout_s=5.0) as pool:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pool.map(lambda text, example: {}, [("", {})])


def test_bad_arguments_and_closed_pool():
    with pytest.raises(ValueError, match="num_workers"):
        RewardPool(num_workers=-1, timeout_s=1.0)
    with pytest.raises(ValueError, match="timeout_s"):
        RewardPool(num_workers=0, timeout_s=0.0)
    pool = RewardPool(num_workers=0, timeout_s=1.0)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.map(length_features, [])


def test_validate_and_collect_features():
    assert validate_features({"a": 1, "b": np.float32(0.5)}) == {"a": 1.0, "b": 0.5}
    with pytest.raises(ValueError, match="expected a real number"):
        validate_features({"a": True})
    results = [
        RewardResult(True, {"a": 1.0, "b": 2.0}),
        RewardResult(False, {}, "timeout: x", "timeout"),
        RewardResult(True, {"a": 3.0}),
    ]
    features = collect_features(results)
    np.testing.assert_array_equal(features["a"], [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(features["b"], [2.0, np.nan, np.nan])


def heavy_modules_loaded(text, example):
    import sys

    return {name: float(name in sys.modules) for name in ("jax", "torch", "math_verify")}


def test_child_starts_light_and_preload_is_honoured():
    import jax  # noqa: F401  - the parent has jax loaded, as the training loop does

    with RewardPool(num_workers=1, timeout_s=20.0) as pool:
        (bare,) = pool.map(heavy_modules_loaded, [("", {})])
    assert bare.value == {"jax": 0.0, "torch": 0.0, "math_verify": 0.0}
    with RewardPool(num_workers=1, timeout_s=20.0, preload=("math_verify",)) as pool:
        (loaded,) = pool.map(heavy_modules_loaded, [("", {})])
    assert loaded.value["math_verify"] == 1.0 and loaded.value["jax"] == 0.0
