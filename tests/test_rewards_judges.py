"""Model judge: prompt contents, robust YES/NO parsing, and the plumbing through a sampler-like object."""

import math
import re

import pytest

import numpy as np

from jaxalign.rewards.judges import (
    EquivalenceJudge,
    judge_correctness,
    judge_messages,
    judge_replies,
    parse_tagged_value,
    parse_yes_no,
    rule_checkable,
    rule_features,
)


class StubSampler:
    """Stands in for `jaxalign.rollout.Sampler`: answers from a scripted reply function, records calls."""

    def __init__(self, reply_fn):
        self.reply_fn = reply_fn
        self.calls = []

    def generate_text(self, prompts, sp, key, *, chat=True):
        self.calls.append((prompts, sp, key, chat))
        return [[self.reply_fn(messages)] for messages in prompts]


def oracle_reply(messages):
    """YES when the last number of the shown final step equals the reference; mimics a sound judge."""
    user = messages[-1]["content"]
    step = user.split("Last step of the student's solution:\n")[1].split("\n\nReference answer:")[0]
    reference = user.split("Reference answer:\n")[1].split("\n")[0]
    numbers = re.findall(r"-?\d+", step)
    return "YES" if numbers and numbers[-1] == reference else "NO"


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("YES", True),
        ("NO", False),
        (" yes.", True),
        ("**No**", False),
        ("'YES'", True),
        ("Answer: YES", True),
        ("Final answer: no", False),
        ("YES, the final answer 7 matches the reference.", True),
        ("NO - the student wrote 8", False),
        ("Final: YES", True),  # a label, then the verdict
        ("**Verdict:** no", False),
        ("Final verdict - Yes", True),
        ("YES ... no difference between 0.5 and 1/2", True),  # the explanation's "no" is not a verdict
        ("Yes, there is no error.", True),
        ("NO, no match.", False),  # the same verdict twice
        ("Yes and no", None),
        ("yes/no", None),
        ("YES or NO?", None),
        ("NO. Yes, 8 is right after all.", None),  # the opposite verdict stands later
        ("Maybe", None),
        ("", None),
        ("The answer is YES", None),  # the verdict must come first
        ("Final", None),
        ("Nope", None),
        ("Yesterday", None),
    ],
)
def test_parse_yes_no(reply, verdict):
    assert parse_yes_no(reply) is verdict


def test_judge_prompt_shows_question_final_step_and_reference_only():
    response = "First I add 2 and 3 to get 5.\nThen I double it.\nSo the final answer is 10."
    system, user = judge_messages("What is (2 + 3) * 2?", response, "10")
    assert system["role"] == "system" and "YES" in system["content"] and "NO" in system["content"]
    assert user["role"] == "user"
    assert "What is (2 + 3) * 2?" in user["content"]
    assert "So the final answer is 10." in user["content"]
    assert "add 2 and 3" not in user["content"]  # earlier steps are not shown
    assert user["content"].rstrip().endswith("Reply YES or NO.")
    assert "(empty response)" in judge_messages("q", "   ", "1")[1]["content"]


def test_judge_through_a_stub_sampler():
    sampler = StubSampler(oracle_reply)
    judge = EquivalenceJudge(sampler, sampling_params="greedy-4-tokens")
    questions = ["What is 2 + 2?", "What is 3 + 3?", "What is 1 + 1?"]
    responses = ["2 + 2 = 4\nAnswer: 4", "Answer: 7", "I think it is 2"]
    verdicts = judge.judge(questions, responses, ["4", "6", "2"], key="key-0")
    assert [v.correct for v in verdicts] == [True, False, True]
    assert [v.reply for v in verdicts] == ["YES", "NO", "YES"]
    (prompts, sp, key, chat), = sampler.calls
    assert len(prompts) == 3 and sp == "greedy-4-tokens" and key == "key-0" and chat is True
    assert judge.judge([], [], [], key=None) == []


def test_unparsable_replies_are_failed_verdicts():
    replies = iter(["YES", "I cannot tell", "no"])
    judge = EquivalenceJudge(StubSampler(lambda messages: next(replies)), sampling_params=None)
    features = judge.correctness_features(["q1", "q2", "q3"], ["a", "b", "c"], ["1", "2", "3"], key=None)
    assert features["correct"][0] == 1.0 and math.isnan(features["correct"][1]) and features["correct"][2] == 0.0
    assert features["judge_failed"] == [0.0, 1.0, 0.0]


def test_judge_input_errors():
    with pytest.raises(TypeError, match="generate_text"):
        EquivalenceJudge(object(), sampling_params=None)
    judge = EquivalenceJudge(StubSampler(oracle_reply), sampling_params=None)
    with pytest.raises(ValueError, match="as many questions"):
        judge.judge(["q"], ["a", "b"], ["1"], key=None)


@pytest.mark.parametrize("reply, tag, allowed, value", [
    ("<score>3</score>", "score", (0, 1, 2, 3, 4), 3.0),
    ("The reply is clear and complete. <score> 4 </score>", "score", (0, 1, 2, 3, 4), 4.0),  # text around is ignored
    ("<SCORE>1.0</SCORE>", "score", (0, 0.5, 1), 1.0),
    ("<po>0.5</po>", "po", (0, 0.5, 1), 0.5),
    ("<score>2.5</score>", "score", (0, 1, 2, 3, 4), None),  # not an allowed value
    ("<score>0.5</score>", "score", (0, 1), None),
    ("<score>-1</score>", "score", (0, 1, 2, 3, 4), None),
    ("<score>3/4</score>", "score", (0, 1, 2, 3, 4), None),
    ("<score>three</score>", "score", (0, 1, 2, 3, 4), None),
    ("<score>**3**</score>", "score", (0, 1, 2, 3, 4), None),
    ("<score></score>", "score", (0, 1, 2, 3, 4), None),
    ("<score>3", "score", (0, 1, 2, 3, 4), None),  # unclosed
    ("3", "score", (0, 1, 2, 3, 4), None),  # no tag
    ("<score>3</score> or maybe <score>3</score>", "score", (0, 1, 2, 3, 4), None),  # repeated
    ("<score>3</score></score>", "score", (0, 1, 2, 3, 4), None),
    ("<po>1</po>", "score", (0, 1, 2, 3, 4), None),  # another tag
])
def test_parse_tagged_value(reply, tag, allowed, value):
    assert parse_tagged_value(reply, tag, allowed) == value


def test_judge_replies_send_what_fits_and_keep_the_order():
    sampler = SizedStubSampler(lambda messages: "reply to " + messages[-1]["content"][:6])
    prompts = [[{"role": "user", "content": "first prompt"}], [{"role": "user", "content": "word " * 200}],
               [{"role": "user", "content": "third prompt"}]]
    assert judge_replies(sampler, prompts, "sp", "key", batch_size=2) == ["reply to first ", None, "reply to third "]
    (sent, sp, key, chat), = sampler.calls
    assert [p[0]["content"] for p in sent] == ["first prompt", "third prompt"] and sampler.batch_size == 2
    assert (sp, key, chat) == ("sp", "key", True)
    assert judge_replies(StubSampler(lambda m: "x"), [], "sp", "key") == []


@pytest.mark.parametrize("reference, checkable", [
    ("42", True), ("-3.5", True), ("1,000", True), ("3/4", True), ("12.5%", True), ("\\frac{1}{2}", True),
    ("$\\dfrac{3}{4}$", True), ("B", True), ("(c)", True),
    ("Paris", False), ("x^2 + 1", False), ("[1, 2]", False), ("ABC", False), ("5 cm", False), ("", False),
])
def test_rule_checkable_references(reference, checkable):
    assert rule_checkable(reference) is checkable


def test_rule_features_mark_what_the_rules_decide():
    assert rule_features("Answer: 5", {"answer": "5"}) == {"correct": 1.0, "has_answer": 1.0, "rule_decided": 1.0}
    assert rule_features("Answer: 6", {"answer": "5"})["rule_decided"] == 1.0  # a numeric mismatch is final
    assert rule_features("no idea", {"answer": "5"})["rule_decided"] == 0.0  # nothing extracted
    assert rule_features("Answer: Paris", {"answer": "Paris"})["rule_decided"] == 1.0  # an exact match
    assert rule_features("Answer: the French capital", {"answer": "Paris"})["rule_decided"] == 0.0


class SizedStubSampler(StubSampler):
    """A stub with the real sampler's prompt limit: one token per word of the judge prompt."""

    max_prompt_len = 150

    def encode_prompt(self, prompt, *, chat=True):
        return " ".join(m["content"] for m in prompt).split()

    def generate_text(self, prompts, sp, key, *, chat=True, batch_size=64):
        self.batch_size = batch_size
        return super().generate_text(prompts, sp, key, chat=chat)


def test_over_long_prompts_are_not_sent_and_fail():
    sampler = SizedStubSampler(oracle_reply)
    judge = EquivalenceJudge(sampler, sampling_params=None, batch_size=3)
    long_question = "How many? " * 40
    verdicts = judge.judge(["What is 2 + 2?", long_question, "What is 1 + 1?"], ["Answer: 4", "Answer: 4", "Answer: 5"],
                           ["4", "4", "2"], key=None)
    assert [v.correct for v in verdicts] == [True, None, False]
    assert [v.too_long for v in verdicts] == [False, True, False]
    (prompts, _, _, _), = sampler.calls
    assert len(prompts) == 2 and sampler.batch_size == 3


def test_judge_correctness_routes_and_fails_samples():
    sampler = StubSampler(lambda messages: "YES" if "Answer: 4" in messages[-1]["content"] else "unsure")
    judge = EquivalenceJudge(sampler, sampling_params=None)
    features = {"correct": np.array([0.0, 1.0, 0.0, np.nan]), "has_answer": np.array([1.0, 1.0, 1.0, np.nan])}
    before = {k: v.copy() for k, v in features.items()}
    out = judge_correctness(judge, ["Answer: 4", "Answer: 9", "Answer: 5", "x"], ["q"] * 4, ["4"] * 4, features,
                            np.array([True, False, True, False]), key=None)
    np.testing.assert_array_equal(out["correct"], [1.0, 1.0, np.nan, np.nan])
    np.testing.assert_array_equal(out["has_answer"], [1.0, 1.0, np.nan, np.nan])
    np.testing.assert_array_equal(out["judged"], [1.0, 0.0, np.nan, 0.0])
    for name in before:  # the inputs are untouched
        np.testing.assert_array_equal(features[name], before[name])
    assert len(sampler.calls[0][0]) == 2
    with pytest.raises(ValueError, match="one question, reference and routing flag"):
        judge_correctness(judge, ["a"], ["q", "q"], ["1"], {}, [True], key=None)


class WordTokenizer:
    """Id 0 is the word `word`, ids 1..254 are bytes, 255 is EOS and 1 pads; a plain-text chat template.
    A model whose logits are all equal always emits id 0 greedily, so its reply is `word` repeated."""

    eos_token_ids = (255,)
    pad_id = 1
    vocab_size = 256

    def __init__(self, word):
        self.word = word

    def encode(self, text):
        return [min(max(b, 2), 254) for b in text.encode("utf-8")]

    def decode(self, ids):
        parts = [f" {self.word} " if int(i) == 0 else chr(int(i)) for i in ids if int(i) != 1 and int(i) < 255]
        return " ".join("".join(parts).split())

    def apply_chat_template(self, messages, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return self.encode(text + ("<assistant>" if add_generation_prompt else ""))


@pytest.mark.parametrize("word, reply, verdict", [
    ("YES", "YES YES YES", True),
    ("no", "no no no", False),
    ("Maybe", "Maybe Maybe Maybe", None),
])
def test_judge_runs_through_the_real_sampler_on_a_tiny_model(word, reply, verdict):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from flax import nnx

    from jaxalign.models import Transformer, get_preset
    from jaxalign.rollout import Sampler, SamplingParams

    model = Transformer(get_preset("tiny", max_position_embeddings=2048), rngs=nnx.Rngs(0))
    model.final_norm.value = jnp.zeros_like(model.final_norm.value)  # every logit 0: greedy emits id 0
    sampler = Sampler(model, WordTokenizer(word), max_prompt_len=1024, cache_dtype="float32")
    judge = EquivalenceJudge(sampler, SamplingParams(max_new_tokens=3, greedy=True, n=1))
    verdicts = judge.judge(["What is 2 + 2?", "What is 1 + 1?"], ["Answer: 4", "Answer: 3"], ["4", "2"],
                           key=jax.random.key(0))
    assert [v.reply for v in verdicts] == [reply, reply]
    assert [v.correct for v in verdicts] == [verdict, verdict]
    assert not any(v.too_long for v in verdicts)
