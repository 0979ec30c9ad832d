"""Supervised fine-tuning (`jaxalign sft`) on 8 fake devices with a tiny random Llama and SmolLM2's real
tokenizer and chat template: the loss against a NumPy cross-entropy over the assistant mask, the mask
itself, batches without cross-example attention, a run that lowers the loss, exact resume, export, and an
RL run started from the SFT weights (`model.init_from`)."""

import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxalign import cli, runs
from jaxalign.algorithms.losses import LossConfig, loss_weights, policy_objective
from jaxalign.config import ConfigError, apply_overrides, from_config_dict, load_config_file
from jaxalign.data.chat import encode_conversation
from jaxalign.sharding import make_mesh
from jaxalign.train import sft as sft_lib
from jaxalign.train.agents import build_agents
from jaxalign.train.loop import TIMING_PREFIXES
from jaxalign.train.metrics import read_metrics

SYSTEM = "Answer with one short sentence."


def _conversation(i: int) -> list[dict]:
    """A small arithmetic chat; every third one has two exchanges (so lengths differ)."""
    a, b = i % 7, (3 * i) % 5
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
    if i % 3 == 0:
        messages += [{"role": "user", "content": "And doubled?"},
                     {"role": "assistant", "content": f"Doubled it is {2 * (a + b)}."}]
    return messages


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": _conversation(i)}) + "\n" for i in range(40)))
    return str(path)


def _sft_cd(model_dir, data, **sft_fields):
    """tiny_test.py's config with the chat model and an `sft` section (every SFTSpec field listed, so the
    test can override any)."""
    cd = load_config_file("configs/tiny_test.py")
    cd.unlock()
    fields = dict(data=data, messages_field="messages", split="train", eval_fraction=0.0, eval_examples=8,
                  max_len=96, overlong="truncate", batch_size=8, micro_batches=1, epochs=1, steps=6, eval_every=0,
                  eval_batch_size=0, bucket_batches=2, optim=dict(learning_rate=1e-2))
    fields.update(sft_fields)
    cd.sft = ml_collections.ConfigDict(fields)
    cd.model.spec = model_dir
    cd.logging.progress = False
    cd.lock()
    return cd


def _sft_config(model_dir, data, overrides=None, **sft_fields):
    cd = apply_overrides(_sft_cd(model_dir, data, **sft_fields), {k: str(v) for k, v in (overrides or {}).items()})
    return from_config_dict(cd, kind="sft")


def _train_records(workdir):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)}
            for r in read_metrics(workdir) if r["kind"] == "train"]


def _saved_policy(workdir, step):
    tree = ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return jax.tree.leaves(tree["agents"]["policy"]["params"])


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ---------------------------------------------------------------------------------------------------------
# The loss and the assistant mask.


def test_sft_loss_entry_is_the_masked_mean_cross_entropy():
    rng = np.random.default_rng(0)
    n, t, v = 3, 7, 11
    logits = rng.normal(size=(n, t, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(n, t))
    mask = (rng.random((n, t)) < 0.5).astype(np.float32)
    mask[:, 0] = 0.0
    # log p(token_t | <t) from the logits at t - 1, as the trainer lays them out.
    logp = np.zeros((n, t), np.float32)
    logp[:, 1:] = np.take_along_axis(_log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)[..., 0]
    expected = -(logp * mask).sum() / mask.sum()
    cfg = LossConfig(policy_loss="sft", aggregation="token_mean")
    loss, metrics = policy_objective(cfg, logp, np.zeros_like(logp), rng.normal(size=(n, t)).astype(np.float32),
                                     loss_weights(mask, "token_mean"), mask)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["tokens"]) == mask.sum()


def test_assistant_mask_covers_each_reply_and_its_end_of_turn_token_only(tiny_chat_model_dir):
    from jaxalign.models.registry import load_model

    _, tokenizer = load_model(tiny_chat_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
    ids, mask = encode_conversation(tokenizer, messages)
    assert len(ids) == len(mask)
    # The whole conversation has exactly the template's ids.
    assert ids == tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    runs_of_ones, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs_of_ones, current = runs_of_ones + [current], []
    runs_of_ones += [current] if current else []
    decode = lambda x: tokenizer.decode(x, skip_special_tokens=False)  # noqa: E731
    assert [decode(r) for r in runs_of_ones] == ["Hello! How can I help?<|im_end|>", "It is 4.<|im_end|>"]
    unmasked = decode([t for t, m in zip(ids, mask) if not m])
    assert unmasked == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                        "<|im_start|>assistant\n\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                        "<|im_start|>assistant\n\n")
    # The first turn's context is exactly what the sampler is given for it.
    first = mask.index(1)
    assert ids[:first] == tokenizer.apply_chat_template(messages[:2], add_generation_prompt=True)


def test_a_template_that_rewrites_earlier_turns_is_an_error(tiny_chat_model_dir):
    import copy

    from jaxalign.data.chat import ChatDataError
    from jaxalign.models.registry import load_model
    from jaxalign.models.tokenizer import Tokenizer

    _, tokenizer = load_model(tiny_chat_model_dir)
    hf = copy.copy(tokenizer.hf)
    # Earlier assistant turns lose their content (as templates that strip old reasoning do).
    hf.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                        "{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}{% endif %}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(ChatDataError, match=r"row 7: the chat template does not render .* messages\[1\]"):
        encode_conversation(Tokenizer(hf), messages, "row 7")


# ---------------------------------------------------------------------------------------------------------
# Batches: buckets, the epoch plan, no cross-example attention.


def test_bucket_widths():
    assert [sft_lib.bucket_width(n, 4096) for n in (1, 32, 33, 48, 49, 64, 65, 97, 129, 700, 1025)] == \
        [32, 32, 48, 48, 64, 64, 96, 128, 192, 768, 1536]
    assert sft_lib.bucket_width(700, 640) == 640


def test_each_epoch_covers_every_conversation_once_in_similar_length_batches():
    lengths = np.random.default_rng(1).integers(10, 500, size=37)
    batches = sft_lib.epoch_batches(lengths, 4, seed=3, epoch=0, pool_batches=3)
    assert all(len(b) == 4 for b in batches) and len(batches) == 10
    flat = np.concatenate(batches)
    assert sorted(flat[flat >= 0].tolist()) == list(range(37)) and (flat < 0).sum() == 3
    assert np.array_equal(np.concatenate(sft_lib.epoch_batches(lengths, 4, 3, 0, 3)), flat)  # deterministic
    assert not np.array_equal(np.concatenate(sft_lib.epoch_batches(lengths, 4, 3, 1, 3)), flat)
    # Sorting pools of 3 batches makes batches tighter than a plain shuffle.
    spread = lambda bs: np.mean([np.ptp(lengths[b[b >= 0]]) for b in bs])  # noqa: E731
    assert spread(batches) < 0.6 * spread(sft_lib.epoch_batches(lengths, 4, 3, 0, 1))


def test_a_conversation_gets_the_same_log_probs_whatever_it_is_batched_with(tiny_chat_model_dir, chats):
    config = _sft_config(tiny_chat_model_dir, chats)
    mesh = make_mesh(-1, 1, 1)
    agent = build_agents(config, mesh)["policy"]
    convs = [_conversation(i) for i in range(12)]
    data = sft_lib.encode_set(agent.tokenizer, convs, [str(i) for i in range(12)], max_len=96, overlong="truncate")
    lengths = data.lengths
    short, long_ = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert lengths[long_] > lengths[short]

    def logp_of(indices):
        arrays = sft_lib.batch_arrays(data, np.array(indices), max_len=96, pad_id=agent.tokenizer.pad_id)
        put = sft_lib._put_rows({k: arrays[k] for k in ("tokens", "valid", "positions")}, mesh)
        logp, _ = agent.logprob_fn(agent.policy_params, put["tokens"], put["valid"], put["positions"])
        return np.asarray(logp), arrays

    alone, arrays_alone = logp_of([short] + [-1] * 7)
    others = [i for i in range(12) if i != short]
    mixed, arrays_mixed = logp_of([long_] + others[:6] + [short])
    assert arrays_mixed["tokens"].shape[1] > arrays_alone["tokens"].shape[1]  # padded to another width
    n = lengths[short]
    np.testing.assert_allclose(mixed[7, :n], alone[0, :n], atol=2e-5)
    assert np.all(mixed[7, n:] == 0)  # padding has no log-prob
    # A filler row (-1) repeats a conversation but carries no loss.
    assert arrays_alone["loss_mask"][1:].sum() == 0 and arrays_alone["loss_mask"][0].sum() > 0


# ---------------------------------------------------------------------------------------------------------
# A run: the first step's loss, lower loss, exact resume, export, init_from.


def test_first_step_loss_is_the_numpy_cross_entropy_over_assistant_tokens(tiny_chat_model_dir, chats):
    from jaxalign.models import causal_attention_mask

    config = _sft_config(tiny_chat_model_dir, chats)
    mesh = make_mesh(-1, 1, 1)
    agent = build_agents(config, mesh)["policy"]
    convs = [_conversation(i) for i in range(16)]
    data = sft_lib.encode_set(agent.tokenizer, convs, [str(i) for i in range(16)], max_len=96, overlong="truncate")
    arrays = sft_lib.batch_arrays(data, np.arange(16), max_len=96, pad_id=agent.tokenizer.pad_id)
    model = nnx.merge(agent.graphdef, jax.tree.map(np.asarray, agent.policy_params))
    hidden, _ = model(arrays["tokens"], arrays["positions"], causal_attention_mask(arrays["valid"]))
    logits = np.asarray(model.unembed(hidden), np.float64)
    tokens = arrays["tokens"]
    logp = np.take_along_axis(_log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)[..., 0]
    # The assistant mask written here from the messages: the tokens of each reply plus its <|im_end|>.
    mask = np.zeros(tokens.shape)
    for row, messages in enumerate(convs):
        ids = tokens[row].tolist()
        for k, m in enumerate(messages):
            if m["role"] == "assistant":
                start = len(agent.tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True))
                reply = agent.tokenizer.encode(m["content"] + "<|im_end|>")
                assert ids[start:start + len(reply)] == reply
                mask[row, start:start + len(reply)] = 1
    assert np.array_equal(mask, arrays["loss_mask"])
    expected = -(logp * mask[:, 1:]).sum() / mask.sum()
    # Two micro-batches of 8 rows (one per device each): their weighted sums add up to the batch's token mean.
    metrics = sft_lib.sft_update(agent, arrays, micro_batches=2, mesh=mesh)  # the loss is taken before the update
    np.testing.assert_allclose(metrics["loss"], expected, rtol=2e-5)
    assert metrics["tokens"] == mask.sum()


RUN = {"checkpoint.every": 3, "logging.report": True}


@pytest.fixture(scope="module")
def sft_run(tiny_chat_model_dir, chats, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sft_run")
    result = runs.sft(_sft_config(tiny_chat_model_dir, chats, overrides=RUN), workdir)
    return workdir, result


def test_sft_lowers_the_train_and_held_out_loss(sft_run):
    workdir, result = sft_run
    losses = [r["sft/loss"] for r in result.history]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    before, after = result.eval_before["eval/loss"], result.eval_after["eval/loss"]
    assert after < 0.7 * before, (before, after)
    assert result.eval_after["eval/conversations"] == 8
    records = read_metrics(workdir)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 6]
    assert json.loads((workdir / "config.json").read_text())["run_kind"] == "sft"
    assert (workdir / "report.png").stat().st_size > 0
    # 40 - 8 held-out = 32 training conversations: 4 batches of 8 per epoch.
    assert [r["data/epoch"] for r in records if r["kind"] == "train"] == [0, 0, 0, 0, 1, 1]


def test_resume_is_exact_and_a_finished_run_is_left_alone(tiny_chat_model_dir, chats, sft_run, tmp_path):
    full_dir, full = sft_run
    split = tmp_path / "split"
    first = runs.sft(_sft_config(tiny_chat_model_dir, chats, overrides=RUN, steps=3), split)
    resumed = runs.sft(_sft_config(tiny_chat_model_dir, chats, overrides=RUN), split)
    assert len(first.history) == 3 and len(resumed.history) == 3
    assert _train_records(split) == _train_records(full_dir)
    for a, b in zip(_saved_policy(split, 6), _saved_policy(full_dir, 6)):
        np.testing.assert_array_equal(a, b)
    assert resumed.eval_after == full.eval_after
    again = runs.sft(_sft_config(tiny_chat_model_dir, chats, overrides=RUN), split)
    assert again.already_finished and again.final_step == 6 and not again.history


def test_a_resume_refuses_a_changed_sft_experiment_and_the_other_kind_of_run(tiny_chat_model_dir, chats, sft_run):
    workdir, _ = sft_run
    with pytest.raises(ConfigError, match=r"sft\.max_len: 96 \u2192 64"):
        runs.check_resume(_sft_config(tiny_chat_model_dir, chats, max_len=64), workdir)
    # Fields SFT does not use may change (a config file serves both commands).
    plan = runs.check_resume(_sft_config(tiny_chat_model_dir, chats, overrides={**RUN, "rollout.max_new_tokens": 4,
                                                                                "sft.epochs": 3}), workdir)
    assert [c.field for c in plan.changes] == ["rollout.max_new_tokens", "sft.epochs"]
    rl = from_config_dict(apply_overrides(load_config_file("configs/tiny_test.py"),
                                          {"model.spec": tiny_chat_model_dir}))
    with pytest.raises(ConfigError, match="init_from"):
        runs.check_resume(rl, workdir)


def test_export_writes_the_sft_weights(sft_run, tmp_path, capsys):
    from jaxalign.models.registry import load_model

    workdir, _ = sft_run
    out = tmp_path / "hf"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    exported, tokenizer = load_model(str(out))
    assert tokenizer is not None and tokenizer.hf.chat_template
    for a, b in zip(jax.tree.leaves(nnx.state(exported)), _saved_policy(workdir, 6)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_eval_of_the_sft_run_runs_the_methods_eval_on_the_fine_tuned_policy(sft_run, capsys):
    workdir, _ = sft_run
    assert cli.main(["eval", f"--workdir={workdir}"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["eval/target_fraction"] <= 1.0  # tiny_test.py's toy method, on the SFT checkpoint


def _rl_config(model_spec, init_from, **overrides):
    cd = load_config_file("configs/tiny_test.py:rloo")  # KL in the loss: the run has a reference policy
    overrides = {"model.spec": model_spec, "model.init_from": init_from, "logging.progress": False, **overrides}
    return from_config_dict(apply_overrides(cd, {k: str(v) for k, v in overrides.items()}))


def test_init_from_starts_the_policy_and_the_reference_from_the_sft_run(tiny_chat_model_dir, sft_run):
    workdir, _ = sft_run
    config = _rl_config(tiny_chat_model_dir, str(workdir))
    agent = build_agents(config, make_mesh(-1, 1, 1))["policy"]
    assert agent.ref_params is not None
    trained = _saved_policy(workdir, 6)
    for policy, ref, saved in zip(jax.tree.leaves(agent.state.params), jax.tree.leaves(agent.ref_params), trained):
        np.testing.assert_array_equal(np.asarray(policy), saved)
        np.testing.assert_array_equal(np.asarray(ref), saved)
    # Without init_from the same config starts from the model's own (untrained) weights.
    plain = build_agents(_rl_config(tiny_chat_model_dir, ""), make_mesh(-1, 1, 1))["policy"]
    assert any(not np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(plain.state.params), trained))


def test_init_from_errors_name_the_problem(sft_run, tmp_path, capsys):
    workdir, _ = sft_run
    with pytest.raises(ConfigError, match=r"model.init_from=.*another architecture.*embedding: \[49152, 64\] there, "
                                          r"\[256, 64\] here"):
        build_agents(_rl_config("random:tiny", str(workdir)), make_mesh(-1, 1, 1))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    code = cli.main(["train", "--config=configs/tiny_test.py", f"--config.model.init_from={empty}",
                     f"--workdir={tmp_path / 'rl'}"])
    assert code == 2 and "has no checkpoint" in _error_line(capsys, "train")
    code = cli.main(["train", "--config=configs/tiny_test.py", f"--config.model.init_from={tmp_path / 'nowhere'}",
                     f"--workdir={tmp_path / 'rl'}"])
    assert code == 2 and "is not a directory" in _error_line(capsys, "train")


# ---------------------------------------------------------------------------------------------------------
# Data: sources and row errors.


def _error_line(capsys, command):
    """The one error line of a failed command (log lines may precede it)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"jaxalign {command}: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]},
     r"chats.jsonl:3: messages\[1\].role is 'bot'; accepted: system, user, assistant"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 7}]},
     r"chats.jsonl:3: messages\[1\].content must be a string, got 7"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, r"chats.jsonl:3: no assistant message"),
    ({"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "x"}]},
     r"chats.jsonl:3: messages\[0\] is an assistant message before any user message"),
    ({"messages": []}, r"chats.jsonl:3: the messages must be a non-empty list"),
    ({"conversation": []}, r"chats.jsonl:3: no 'messages' field \(found: conversation\); set sft.messages_field"),
    ("{not json", r"chats.jsonl:3: not JSON"),
])
def test_a_bad_row_is_an_error_naming_its_line(tmp_path, row, message):
    from jaxalign.data.chat import ChatDataError, load_conversations

    path = _write_rows(tmp_path / "chats.jsonl", [GOOD, "", row])  # line 2 is blank
    with pytest.raises(ChatDataError, match=message):
        load_conversations(path)


def test_sft_command_reports_a_bad_row_in_one_line(tiny_chat_model_dir, tmp_path, capsys):
    path = _write_rows(tmp_path / "chats.jsonl", [GOOD, {"messages": [{"role": "robot", "content": "x"}]}])
    config_file = tmp_path / "sft_config.py"
    config_file.write_text(
        "import sys\nsys.path.insert(0, %r)\nimport common\n\n"
        "def get_config(arg=None):\n    c = common.base_config()\n    c.model.spec = %r\n"
        "    c.sft = common.sft_section(%r)\n    return c\n"
        % (str(__import__("pathlib").Path("configs").resolve()), tiny_chat_model_dir, path))
    code = cli.main(["sft", f"--config={config_file}", f"--workdir={tmp_path / 'run'}"])
    assert code == 2 and "chats.jsonl:2: messages[0].role is 'robot'" in _error_line(capsys, "sft")
    code = cli.main(["sft", f"--config={config_file}", "--config.sft.batch_size=4", f"--workdir={tmp_path / 'r'}"])
    assert code == 2 and "not divisible by the mesh's batch-parallel size" in _error_line(capsys, "sft")


def test_sources_embedded_and_hf_dataset_with_a_messages_column(tmp_path):
    from jaxalign.data import chat

    chat.register_embedded_chat("test_pairs", lambda seed: [
        {"messages": [{"role": "user", "content": f"q{seed}-{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(3)])
    convs = chat.load_conversations("embedded:test_pairs", seed=5)
    assert [c[0]["content"] for c in convs] == ["q5-0", "q5-1", "q5-2"]
    with pytest.raises(ConfigError, match=r"no embedded chat set 'nope'; registered: .*embedded:test_pairs"):
        chat.load_conversations("embedded:nope")
    # A Hugging Face dataset (a local JSON file through `datasets`) with another column name.
    rows = [{"id": i, "chat": GOOD["messages"]} for i in range(4)]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    convs = chat.load_conversations(str(path), messages_field="chat")
    assert convs == [GOOD["messages"]] * 4
    with pytest.raises(ConfigError, match=r"rows.json \(train\) row 0: no 'messages' field \(found: chat, id\)"):
        chat.load_conversations(str(path))


def test_overlong_conversations_are_cut_or_dropped_and_counted(tiny_chat_model_dir):
    from jaxalign.models.registry import load_model

    _, tokenizer = load_model(tiny_chat_model_dir)
    convs = [_conversation(0), _conversation(1)]  # the first has two exchanges, the second one
    lengths = [len(encode_conversation(tokenizer, c)[0]) for c in convs]
    cap = (lengths[0] + lengths[1]) // 2 if lengths[0] > lengths[1] else lengths[0] - 1
    assert lengths[0] > cap >= lengths[1]
    cut = sft_lib.encode_set(tokenizer, convs, ["0", "1"], max_len=cap, overlong="truncate")
    assert (cut.truncated, cut.dropped, len(cut)) == (1, 0, 2) and len(cut.ids[0]) == cap
    dropped = sft_lib.encode_set(tokenizer, convs, ["0", "1"], max_len=cap, overlong="drop")
    assert (dropped.truncated, dropped.dropped, len(dropped)) == (0, 1, 1)
    # A cut before the first reply leaves nothing to train on: dropped.
    first_reply = encode_conversation(tokenizer, convs[0])[1].index(1)
    none_left = sft_lib.encode_set(tokenizer, convs[:1], ["0"], max_len=first_reply, overlong="truncate")
    assert (none_left.truncated, none_left.dropped, len(none_left)) == (0, 1, 0)
