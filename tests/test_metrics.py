"""Run outputs of a tiny run (metrics.jsonl, TensorBoard events, samples.jsonl, report.png, the before/after
table) checked against independent readers, plus the metric helpers against hand-computed values."""

import json
import struct

import numpy as np
import pytest

from jaxalign.config import apply_overrides, from_config_dict, load_config_file
from jaxalign.train import metrics as metrics_lib
from jaxalign.runs import train
from jaxalign.methods.toy.token import token_features

STEPS, EVAL_EVERY, SAMPLES_PER_LOG = 4, 2, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metrics_run")
    overrides = {"train.steps": STEPS, "train.eval_every": EVAL_EVERY, "logging.tensorboard": True,
                 "logging.report": True, "logging.progress": False, "logging.samples_per_log": SAMPLES_PER_LOG}
    cd = apply_overrides(load_config_file("configs/tiny_test.py"), {k: str(v) for k, v in overrides.items()})
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train(from_config_dict(cd), workdir)
    return workdir, result, out.getvalue()


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_metrics_jsonl_rows(run):
    workdir, result, _ = run
    rows = _jsonl(workdir / "metrics.jsonl")
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, STEPS + 1))
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 2, STEPS]
    for row, record in zip(train_rows, result.history):
        for key in ("reward/mean", "loss/loss", "loss/kl", "time/step_s", "time/generate_s", "time/reward_s",
                    "time/logprobs_s", "time/update_s", "time/weight_sync_s", "perf/tokens_per_s", "rollout/failed"):
            assert np.isfinite(row[key]), key
        assert row["reward/mean"] == pytest.approx(record["reward/mean"])
        phases = sum(v for k, v in row.items() if k.startswith("time/") and k.endswith("_s")
                     and k != "time/step_s")
        assert row["time/step_s"] == pytest.approx(phases)


def _tfrecords(path):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        yield data[offset + 12:offset + 12 + length]
        offset += 12 + length + 4


def test_tensorboard_event_file_has_the_scalars(run):
    from tensorboardX.proto.event_pb2 import Event

    workdir, result, _ = run
    files = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {}
    for record in _tfrecords(files[0]):
        event = Event.FromString(record)
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    assert sorted(scalars["reward/mean"]) == list(range(1, STEPS + 1))
    for step, record in enumerate(result.history, 1):
        assert scalars["reward/mean"][step] == pytest.approx(record["reward/mean"], rel=1e-6)
    assert scalars["eval/eval/target_fraction"][STEPS] == pytest.approx(result.eval_after["eval/target_fraction"])


def test_samples_jsonl_rewards_match_their_responses(run):
    workdir, _, _ = run
    rows = _jsonl(workdir / "samples.jsonl")
    assert [r["step"] for r in rows] == [s for s in range(1, STEPS + 1) for _ in range(SAMPLES_PER_LOG)]
    target = load_config_file("configs/tiny_test.py").toy_token.target_below
    for row in rows:
        assert row["prompt"].startswith("toy-")
        expected = token_features(row["response"], {"target_below": target})["target_fraction"]
        assert row["reward"] == pytest.approx(expected), row


def test_report_png_is_a_real_image(run):
    import matplotlib.image

    workdir, _, _ = run
    path = workdir / "report.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # curves and text, not a blank canvas


def test_before_after_table_is_printed(run):
    _, result, stdout = run
    lines = {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.startswith("eval/")}
    before, after = result.eval_before["eval/target_fraction"], result.eval_after["eval/target_fraction"]
    assert [float(x) for x in lines["eval/target_fraction"]] == pytest.approx(
        [before, after, after - before], abs=1e-4)


def test_eval_table_and_helpers_against_hand_values():
    table = metrics_lib.eval_table({"a": 1.0, "b": 0.5}, {"a": 1.25, "c": 2.0}).splitlines()
    assert table[0].split() == ["metric", "before", "after", "change"]
    assert table[1].split() == ["a", "1.0000", "1.2500", "+0.2500"]
    assert table[2].split()[0] == "b" and table[2].split()[2] == "nan"
    out = metrics_lib.throughput_metrics(tokens=1000, step_seconds=2.0, num_devices=4, train_flops=989e12,
                                         device_kind="NVIDIA H100 80GB HBM3")
    assert out["perf/tokens_per_s"] == 500 and out["perf/tokens_per_s_per_device"] == 125
    assert out["perf/mfu"] == pytest.approx(989e12 / (2.0 * 4 * 989e12))
    assert "perf/mfu" not in metrics_lib.throughput_metrics(tokens=1, step_seconds=1, num_devices=1,
                                                            train_flops=1, device_kind="cpu")


def test_read_and_truncate_metrics_after_a_resume(tmp_path):
    writer = metrics_lib.MetricsWriter(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, {"reward/mean": float(step)})
    writer.write(3, {"eval/x": 1.0}, kind="eval")
    writer.write(0, {"eval/x": 0.5}, kind="eval")
    metrics_lib.truncate_metrics(tmp_path, 2)  # resumed from the step-2 checkpoint: step 3 is redone
    writer.write(3, {"reward/mean": 30.0})
    records = metrics_lib.read_metrics(tmp_path)
    assert [(r["step"], r["kind"]) for r in records] == [(0, "eval"), (1, "train"), (2, "train"), (3, "train")]
    assert records[-1]["reward/mean"] == 30.0
    raw = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(raw) == 4  # nothing of the discarded step 3 is left in the file
    metrics_lib.truncate_metrics(tmp_path, -1)  # no checkpoint at all: the run starts over
    assert metrics_lib.read_metrics(tmp_path) == []
