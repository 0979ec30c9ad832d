"""Multi-turn contexts as token ids (`rollout.prompts.turn_context`) on SmolLM2's real chat template: the
ids each agent generated stay in the context exactly, and the whole conversation decodes to the template's
own rendering of it (turn separators included)."""

import pytest

from jaxalign.models import gguf
from jaxalign.models.tokenizer import tokenizer_from_gguf
from jaxalign.rollout.prompts import turn_context


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_from_gguf(gguf.default_gguf_path())


def _generated(tokenizer, text, *, eos=True):
    """Ids as a sampler would return them: the text's tokens, then the end-of-turn token when it stopped."""
    return tokenizer.encode(text) + ([tokenizer.eos_token_ids[0]] if eos else [])


def test_three_turns_keep_generated_ids_and_match_the_template(tokenizer):
    user = [{"role": "user", "content": "How do I kill a stuck process?"}]
    c0 = "Use `kill -9 <pid>`, or find it first with `ps aux | grep name`."
    f0 = '{"unsafe": false, "overrefuse": false, "feedback": "Mention SIGTERM first."}'
    c1 = "Try `kill <pid>` (SIGTERM) first; if it hangs, `kill -9 <pid>`."
    context0 = tokenizer.apply_chat_template(user)
    r0 = _generated(tokenizer, c0)
    turn1 = [{"role": "user", "content": f"Feedback: {f0}"}]
    context1 = turn_context(tokenizer, context0, r0, [*user, {"role": "assistant", "content": c0}], turn1)
    r1 = _generated(tokenizer, c1, eos=False)  # a response cut at the length limit: no end-of-turn token
    turn2 = [{"role": "user", "content": "Thanks. And on Windows?"}]
    conversation = [*user, {"role": "assistant", "content": c0}, *turn1, {"role": "assistant", "content": c1}]
    context2 = turn_context(tokenizer, context1, r1, conversation, turn2)

    # The generated ids are contiguous slices of the later contexts, untouched.
    assert context1[: len(context0) + len(r0)] == context0 + r0
    assert context2[: len(context1) + len(r1)] == context1 + r1
    # The whole thing is the template's rendering of the conversation, separators included.
    expected = tokenizer.hf.apply_chat_template([*conversation, *turn2], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(context2, skip_special_tokens=False) == expected
    # After a generated end-of-turn token the template's own is not added again.
    first_two = tokenizer.hf.apply_chat_template([*user, {"role": "assistant", "content": c0}, *turn1],
                                                 add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(context1, skip_special_tokens=False) == first_two
    assert context1.count(tokenizer.eos_token_ids[0]) == first_two.count("<|im_end|>")


def test_turn_context_needs_the_assistant_message_last(tokenizer):
    with pytest.raises(ValueError, match="must end with the assistant message"):
        turn_context(tokenizer, [1], [2], [{"role": "user", "content": "hi"}], [{"role": "user", "content": "x"}])
