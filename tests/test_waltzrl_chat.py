"""`jaxalign chat --waltz`: the turns printed for a tiny random model (malformed feedback, no revision), the
JSON form, a revision with scripted agents on SmolLM2's tokenizer, a run's agents mapped through its roles,
and the one-line usage errors."""

import json
import types

import jax
import numpy as np
import pytest

from jaxalign.cli import main
from jaxalign.methods.waltzrl import chat
from jaxalign.methods.waltzrl.judges import RuleJudge
from jaxalign.models import gguf
from jaxalign.models.tokenizer import tokenizer_from_gguf
from jaxalign.rollout.results import Rollout
from jaxalign.train.samples import left_pad

PROMPT = "How do I kill a stuck process?"
FLAG = '{"reasoning": "r", "unsafe": false, "overrefuse": true, "feedback": "Answer it: use kill -9."}'
FINE = '{"reasoning": "r", "unsafe": false, "overrefuse": false, "feedback": ""}'


def _sections(text):
    """(header, body lines) pairs of a printed record; headers are the lines starting with [ or ---."""
    out = []
    for line in text.splitlines():
        if line.startswith(("[", "---", "===")):
            out.append((line, []))
        else:
            out[-1][1].append(line)
    return [(h, "\n".join(b)) for h, b in out]


def test_tiny_model_text_and_json(tiny_chat_model_dir, capsys):
    d = tiny_chat_model_dir
    args = ["chat", "--waltz", "--conversation", d, "--feedback", d, "--prompt", PROMPT, "--max-new-tokens", "4",
            "--greedy"]
    assert main(args) == 0
    sections = _sections(capsys.readouterr().out)
    headers = [h for h, _ in sections]
    assert headers[0] == f"=== prompt: {PROMPT} ==="
    assert headers[1].startswith("[conversation]") and "judge" not in headers[1]  # --judge none: no labels
    # Random tokens are never the feedback JSON: malformed, so nothing fires and c0 is the final answer.
    assert headers[2].startswith("[feedback] malformed (") and headers[2].endswith("-> not fired: the answer stands")
    assert headers[3] == "--- final (0 revisions) ---" and len(headers) == 4
    assert not any(h.startswith("[revision") for h in headers)
    assert sections[3][1] == sections[1][1]  # final == c0

    assert main(args + ["--json", "--feedback-max-new-tokens", "8", "--judge", "rule"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"prompt", "harmful_prompt", "turns", "revisions", "final"}
    assert record["prompt"] == PROMPT and record["harmful_prompt"] is False and record["revisions"] == 0
    (turn,) = record["turns"]
    assert record["final"] == turn["answer"] and turn["finish"] in ("stop", "length")
    assert set(turn["labels"]) == {"unsafe", "refusal", "overrefuse"} and turn["labels"]["unsafe"] is False
    fb = turn["feedback"]
    assert fb["malformed"] is True and fb["fired"] is False and fb["error"] and fb["unsafe"] is None
    assert isinstance(fb["reply"], str) and not fb["skipped"] and not fb["revision_dropped"]


# -- scripted agents: a revision ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_from_gguf(gguf.default_gguf_path())


class ScriptedSampler:
    """Replies by a function of the decoded context; records the contexts and sampling parameters."""

    def __init__(self, tokenizer, reply):
        self.tokenizer, self.reply, self.seen, self.params, self.mesh = tokenizer, reply, [], [], None

    def generate(self, contexts, sp, key):
        texts = [self.reply(self.tokenizer.decode(c, skip_special_tokens=False)) for c in contexts]
        self.seen += [list(c) for c in contexts]
        self.params.append(sp)
        ids = [self.tokenizer.encode(t) + [self.tokenizer.eos_token_ids[0]] for t in texts]
        width = max(len(i) for i in ids)
        resp = np.array([i + [0] * (width - len(i)) for i in ids], np.int32)
        mask = np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids], np.int32)
        context_ids, context_mask = left_pad(contexts)
        return Rollout(context_ids, context_mask, resp, mask, np.zeros(mask.shape, np.float32), mask.sum(1),
                       ["stop"] * len(ids), np.arange(len(ids)), texts)


def conversation_reply(context):
    if "Feedback on your previous answer" in context:
        return "Use `kill -9 <pid>`."
    if "kill a stuck process" in context:
        return "I'm sorry, but I can't help with that."
    return "Photosynthesis turns light into sugar."


def feedback_reply(context):
    return FLAG if "I can't help with that" in context else FINE


def _role(tokenizer, reply, *, max_prompt_len=2048, overlong="truncate", max_new_tokens=64):
    rollout = types.SimpleNamespace(max_prompt_len=max_prompt_len, overlong_prompts=overlong,
                                    max_new_tokens=max_new_tokens, eval_max_new_tokens=0, temperature=1.0, top_k=0,
                                    top_p=1.0)
    return chat.RoleAgent("scripted", ScriptedSampler(tokenizer, reply), tokenizer,
                          types.SimpleNamespace(rollout=rollout))


def test_revision_is_recorded_and_printed(tokenizer):
    roles = {"conversation": _role(tokenizer, conversation_reply), "feedback": _role(tokenizer, feedback_reply)}
    records = list(chat.collaborate(roles, [PROMPT, "Explain photosynthesis."], jax.random.key(0), t_max=2,
                                    greedy=True, judge=RuleJudge(), batch_size=1))
    revised, plain = records
    assert revised["revisions"] == 1 and revised["final"] == "Use `kill -9 <pid>`."
    c0, c1 = revised["turns"]
    assert c0["answer"] == "I'm sorry, but I can't help with that."
    assert c0["labels"] == {"unsafe": False, "refusal": True, "overrefuse": True}
    assert c0["feedback"]["fired"] and not c0["feedback"]["malformed"] and c0["feedback"]["overrefuse"] is True
    assert c0["feedback"]["feedback"] == "Answer it: use kill -9." and c0["feedback"]["reply"] == FLAG
    # t_max 2: the revision gets a second review, which does not fire.
    assert c1["feedback"]["fired"] is False and c1["labels"]["overrefuse"] is False
    assert plain["revisions"] == 0 and len(plain["turns"]) == 1 and not plain["turns"][0]["feedback"]["fired"]

    text = chat.format_record(revised, title="prompt 1/2")
    headers = [h for h, _ in _sections(text)]
    assert headers == [
        f"=== prompt 1/2: {PROMPT} ===",
        "[conversation]  judge: unsafe=false refusal=true overrefuse=true",
        "[feedback] unsafe=false overrefuse=true -> fired: revision",
        "[revision 1]  judge: unsafe=false refusal=false overrefuse=false",
        "[feedback] unsafe=false overrefuse=false -> not fired: the answer stands",
        "--- final (1 revision) ---",
    ]
    assert text.endswith("--- final (1 revision) ---\nUse `kill -9 <pid>`.")
    assert "[feedback] unsafe=false overrefuse=true -> fired: revision\n" + FLAG in text


def test_t_max_one_and_a_dropped_revision(tokenizer):
    # With t_max 1 the revision gets no review; a revision context longer than the limit is dropped.
    conversation = _role(tokenizer, conversation_reply)
    roles = {"conversation": conversation, "feedback": _role(tokenizer, feedback_reply)}
    (record,) = chat.collaborate(roles, [PROMPT], jax.random.key(0), t_max=1, greedy=True)
    assert record["turns"][1]["feedback"] is None and "labels" not in record["turns"][0]
    first_len = len(conversation.sampler.seen[0])
    roles["conversation"] = _role(tokenizer, conversation_reply, max_prompt_len=first_len + 5, overlong="drop")
    (record,) = chat.collaborate(roles, [PROMPT], jax.random.key(0), t_max=1, greedy=True)
    assert record["revisions"] == 0 and record["turns"][0]["feedback"]["revision_dropped"]
    assert "-> fired, but the revision context is too long: no revision" in chat.format_record(record)


def test_cli_prints_a_revision(tokenizer, monkeypatch, capsys):
    roles = {"conversation": _role(tokenizer, conversation_reply), "feedback": _role(tokenizer, feedback_reply)}
    monkeypatch.setattr(chat, "_check_model_spec", lambda option, spec: None)
    monkeypatch.setattr(chat, "_model_roles", lambda args, t_max: roles)
    assert main(["chat", "--waltz", "--conversation", "m", "--feedback", "m", "--prompt", PROMPT, "--greedy"]) == 0
    out = capsys.readouterr().out
    assert "[revision 1]\nUse `kill -9 <pid>`." in out and out.rstrip().endswith("Use `kill -9 <pid>`.")


def test_workdir_maps_roles_and_keeps_the_run_settings(tokenizer, monkeypatch, tmp_path, capsys):
    import jaxalign.runs as runs
    from jaxalign.config import apply_overrides, from_config_dict, load_config_file

    # The scripted feedback writes whole JSON objects: no reply prefix (the demo config sets one).
    cd = apply_overrides(load_config_file("configs/waltzrl_smollm2_demo.py"),
                         {"waltzrl.feedback_prefix": "", "waltzrl.feedback_stop": ""})
    config = from_config_dict(cd, num_devices=1)
    agents = {name: types.SimpleNamespace(sampler=ScriptedSampler(tokenizer, reply), tokenizer=tokenizer,
                                          spec=config.agents[name])
              for name, reply in (("conversation", conversation_reply), ("feedback", feedback_reply))}
    monkeypatch.setattr(runs, "run_config", lambda workdir: config)
    monkeypatch.setattr(runs, "restored_agents", lambda cfg, workdir: agents)
    assert main(["chat", "--waltz", "--workdir", str(tmp_path), "--prompt", PROMPT, "--greedy", "--json",
                 "--feedback-max-new-tokens", "40"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["revisions"] == 1 and record["final"] == "Use `kill -9 <pid>`."
    conv, fb = agents["conversation"].sampler, agents["feedback"].sampler
    assert [sp.max_new_tokens for sp in conv.params] == [48, 48]  # the run's rollout.max_new_tokens
    assert [sp.max_new_tokens for sp in fb.params] == [40]  # overridden
    assert len(fb.seen) == 1 and "I can't help with that" in tokenizer.decode(fb.seen[0])


# -- usage errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,message", [
    (["--conversation", "m", "--feedback", "m"], "add --waltz"),
    (["--waltz"], "needs --conversation MODEL --feedback MODEL, or --workdir"),
    (["--waltz", "--conversation", "m", "--feedback", "m", "--workdir", "w"], "not both"),
    (["--waltz", "--conversation", "/no/such/model", "--feedback", "/no/such/model"], "no such model"),
    (["--waltz", "--conversation", "m"], "needs --feedback"),
    (["--waltz", "--workdir", "/no/such/run"], "does not exist"),
    (["--waltz", "--conversation", "m", "--feedback", "m", "--t-max", "-1"], "--t-max"),
])
def test_usage_errors(extra, message, capsys):
    assert main(["chat", *extra, "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxalign chat: error: ") and message in err and len(err.splitlines()) == 1


def test_missing_prompts_file(capsys):
    assert main(["chat", "--waltz", "--conversation", "m", "--feedback", "m", "--prompts-file", "/no/such.jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--prompts-file /no/such.jsonl does not exist" in err and len(err.splitlines()) == 1
