"""GTAlign's SFT cold-start set: the RL-time prompt, four blocks that parse, the welfare choice of each
matrix (computed here in NumPy), responses of the chosen kind, and no held-out GTAlign question."""

import json
import re

import numpy as np
import pytest

from jaxalign.methods.gtalign import GTAlignMethod, game, gtalign_features, make_gtalign_set
from jaxalign.methods.gtalign.coldstart import build_coldstart, coldstart_records, main

KEYS = ("DQ_AQ", "DQ_CQ", "DQ_DA", "VQ_AQ", "VQ_CQ", "VQ_DA")


@pytest.fixture(scope="module")
def records():
    return coldstart_records(0)


def numpy_welfare_choice(payoffs):
    """The format's pick, as the paper states it: the largest LLM + user; ties to the larger user payoff, then
    the larger LLM payoff."""
    llm = np.array([payoffs[k][0] for k in KEYS])
    user = np.array([payoffs[k][1] for k in KEYS])
    order = np.lexsort((-llm, -user, -np.round(llm + user, 6)))  # last key sorts first
    return KEYS[order[0]]


def numpy_frontier(payoffs):
    points = np.array([payoffs[k] for k in KEYS])
    beaten = [(np.all(points >= p, axis=1) & np.any(points > p, axis=1)).any() for p in points]
    return {k for k, b in zip(KEYS, beaten) if not b}


def response_kind(response):
    """DA: no question; CQ: one question and nothing else; AQ: a statement and then one question."""
    questions = re.findall(r"[^.!?]*\?", response)
    if not questions:
        return "DA"
    assert len(questions) == 1 and response.rstrip().endswith("?"), response
    return "CQ" if not response[: response.index(questions[0])].strip() else "AQ"


def test_size_and_determinism(records):
    assert len(records) >= 400
    chats = build_coldstart(0)
    assert chats == [{"messages": r["messages"]} for r in records] == build_coldstart(0)
    assert chats != build_coldstart(1)
    prompts = [r["example"]["prompt"] for r in records]
    assert len(set(prompts)) == len(prompts)


def test_the_user_turn_is_the_rl_time_prompt(records):
    method = GTAlignMethod({})
    for record in records:
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert messages[:2] == method.messages(record["example"])
        assert messages[1]["content"].endswith("Question: " + record["example"]["prompt"])


def test_every_reply_parses_and_names_the_welfare_choice_of_its_matrix(records):
    for record in records:
        text, example = record["messages"][2]["content"], record["example"]
        assert game.format_ok(text), text
        blocks = {tag: game.extract_tag(text, tag) for tag in game.TAGS}
        assert all(blocks.values()), text
        payoffs = game.parse_payoffs(blocks["payoff"])
        choice = numpy_welfare_choice(payoffs)
        key, action = game.chosen_strategy(blocks["analyze"])
        assert key == choice == record["choice"], blocks["analyze"]
        # The matrix fits the question: its choice is in the row of the question's type.
        assert choice.startswith("VQ" if example["ambiguous"] else "DQ")
        # The analysis lists the frontier (every key it names is a frontier key, and all of them are named).
        assert set(re.findall(r"\b[DV]Q_(?:DA|CQ|AQ)\b", blocks["analyze"])) == numpy_frontier(payoffs)
        # The response carries out the chosen action and never mentions payoffs.
        assert response_kind(blocks["response"]) == action
        assert "payoff" not in blocks["response"].lower() and not re.search(r"[DV]Q_", blocks["response"])
        # No numbers in the thinking; every payoff has at most one decimal and lies in [-5, 5].
        assert not re.search(r"\d", blocks["thinking"])
        values = np.array(list(payoffs.values()))
        assert np.all(np.abs(values) <= 5) and np.allclose(values, np.round(values, 1))
        # Every cell tells the sides apart (matrix quality P = 1, the paper's formula in NumPy).
        llm, user = values[:, 0], values[:, 1]
        gap = np.abs(user - llm) / np.maximum(np.maximum(np.abs(user), np.abs(llm)), 1e-8)
        assert (np.sum(llm != user) + np.sum(gap > 0.1)) / 12 == 1.0


def test_vague_questions_choose_asking_more_often(records):
    vague = [r for r in records if r["example"]["ambiguous"]]
    definite = [r for r in records if not r["example"]["ambiguous"]]
    assert len(vague) >= 150 and len(definite) >= 150
    asks = lambda rs: np.mean([r["choice"].split("_")[1] in ("CQ", "AQ") for r in rs])  # noqa: E731
    assert asks(vague) == 1.0 and asks(definite) < 0.3
    actions = {r["choice"] for r in records}
    assert actions == {"DQ_DA", "DQ_AQ", "VQ_CQ", "VQ_AQ"}  # every kind of response is taught
    sources = {r["example"]["data_source"] for r in records}
    assert sources == {"math", "ambiguity"}


def test_replies_earn_the_full_answer_term(records):
    # A sample of replies scored by the method's own features: the math answers are right, the ambiguity
    # replies ask exactly when the question is vague, and the analysis is welfare-consistent.
    for record in records[::7]:
        f = gtalign_features(record["messages"][2]["content"], record["example"])
        assert f["parse_ok"] == f["format"] == f["analyze_ok"] == 1.0
        assert f["answer_llm"] == f["answer_user"] == 1.0, record["messages"][2]["content"]
        assert f["pareto"] == f["welfare_consistent"] == f["quality"] == 1.0


@pytest.mark.parametrize("gtalign_seed", [0, 1, 7])
def test_held_out_gtalign_questions_never_appear(records, gtalign_seed):
    cold = {r["example"]["prompt"] for r in records + coldstart_records(1)}
    for num_train, num_eval in ((256, 64), (64, 32), (16, 200)):
        _, held_out = make_gtalign_set(gtalign_seed, num_train, num_eval)
        assert len(held_out) == num_eval and not cold & {e["prompt"] for e in held_out}


def test_the_demo_configs_eval_split_is_held_out(records):
    from jaxalign.config import load_config_file

    section = load_config_file("configs/gtalign_smollm2_demo.py").gtalign.to_dict()
    _, held_out = GTAlignMethod(section).load_data()
    user_turns = {r["messages"][1]["content"] for r in records}
    for example in held_out:
        assert not any(turn.endswith("Question: " + example["prompt"]) for turn in user_turns)


def test_registered_for_sft_and_written_by_the_module_cli(tmp_path, capsys):
    from jaxalign.data.chat import embedded_chat_names, load_conversations

    assert "gtalign_coldstart" in embedded_chat_names()
    assert load_conversations("embedded:gtalign_coldstart", seed=3) == [c["messages"] for c in build_coldstart(3)]
    out = tmp_path / "cold.jsonl"
    main(["--out", str(out), "--seed", "3", "--size", "20"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"messages": r["messages"]} for r in coldstart_records(3, 20)]
    assert "wrote 20 conversations" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--size", "0"])


def test_every_conversation_fits_the_demo_sft_length():
    # The demo pads SFT batches to sft.max_len and drops longer chats: none may be that long.
    from jaxalign.config import load_config_file
    from jaxalign.data.chat import encode_conversation
    from jaxalign.models.gguf import default_gguf_path
    from jaxalign.models.tokenizer import tokenizer_from_gguf

    max_len = load_config_file("configs/gtalign_smollm2_demo.py").sft.max_len
    tokenizer = tokenizer_from_gguf(default_gguf_path())
    for chat in build_coldstart(0)[::8]:
        ids, mask = encode_conversation(tokenizer, chat["messages"])
        assert len(ids) <= max_len
        # The trained tokens are the reply and its end-of-turn token.
        reply = tokenizer.decode([i for i, m in zip(ids, mask) if m])
        assert reply.strip() == chat["messages"][2]["content"]
