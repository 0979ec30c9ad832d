"""Model judge: prompt contents, robust YES/NO parsing, and the plumbing through a sampler-like object."""

import math
import re

import pytest

from jaxalign.rewards.judges import EquivalenceJudge, judge_messages, parse_yes_no


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
        ("Yes and no", None),
        ("Maybe", None),
        ("", None),
        ("The answer is YES", None),  # the verdict must come first
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


class ByteTokenizer:
    """Bytes 1..254 as tokens, 255 as EOS, 0 as padding; a plain-text chat template."""

    eos_token_ids = (255,)
    pad_id = 0
    vocab_size = 256

    def encode(self, text):
        return [min(max(b, 1), 254) for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(int(i) for i in ids if 0 < int(i) < 255).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return self.encode(text + ("<assistant>" if add_generation_prompt else ""))


def test_judge_runs_through_the_real_sampler_on_a_tiny_random_model():
    jax = pytest.importorskip("jax")
    from flax import nnx

    from jaxalign.models import Transformer, get_preset
    from jaxalign.rollout import Sampler, SamplingParams

    model = Transformer(get_preset("tiny", max_position_embeddings=2048), rngs=nnx.Rngs(0))
    sampler = Sampler(model, ByteTokenizer(), max_prompt_len=1024)  # one token per byte
    judge = EquivalenceJudge(sampler, SamplingParams(max_new_tokens=4, greedy=True, n=1))
    verdicts = judge.judge(["What is 2 + 2?", "What is 1 + 1?"], ["Answer: 4", "Answer: 3"], ["4", "2"],
                           key=jax.random.key(0))
    assert len(verdicts) == 2
    for verdict in verdicts:  # random weights: the reply is noise, but it went through parse_yes_no
        assert isinstance(verdict.reply, str)
        assert verdict.correct is parse_yes_no(verdict.reply)
