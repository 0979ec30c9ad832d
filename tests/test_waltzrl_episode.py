"""WaltzRL's protocol and reduction with scripted agents on SmolLM2's real tokenizer: what each agent
sees, the stop rules (both labels false, malformed JSON, t_max), that only the `feedback` string reaches
the conversation agent, the revision context as token ids, and the rewards of the reduced samples against
hand values."""

import types

import jax
import numpy as np
import pytest

from jaxalign.methods.waltzrl.judges import RuleJudge
from jaxalign.methods.waltzrl.method import WaltzRLMethod
from jaxalign.models import gguf
from jaxalign.models.tokenizer import tokenizer_from_gguf
from jaxalign.rollout.results import Rollout
from jaxalign.train import batching
from jaxalign.train.episodes import EpisodeContext

FLAG = '{"reasoning": "r", "unsafe": false, "overrefuse": true, "feedback": "Answer it: use kill -9."}'
FINE = '{"reasoning": "r", "unsafe": false, "overrefuse": false, "feedback": ""}'


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_from_gguf(gguf.default_gguf_path())


class ScriptedSampler:
    """Replies by a function of the decoded context; records every context it was given."""

    def __init__(self, tokenizer, reply):
        self.tokenizer, self.reply, self.seen, self.mesh = tokenizer, reply, [], None

    def generate(self, contexts, sp, key):
        texts = [self.reply(self.tokenizer.decode(c, skip_special_tokens=False)) for c in contexts]
        self.seen += [list(c) for c in contexts]
        ids = [self.tokenizer.encode(t) + [self.tokenizer.eos_token_ids[0]] for t in texts]
        width = max(len(i) for i in ids)
        resp = np.array([i + [0] * (width - len(i)) for i in ids], np.int32)
        mask = np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids], np.int32)
        context_ids, context_mask = batching_left_pad(contexts)
        return Rollout(context_ids, context_mask, resp, mask, -0.5 * mask.astype(np.float32), mask.sum(1),
                       ["stop"] * len(ids), np.arange(len(ids)), texts)


def batching_left_pad(rows):
    from jaxalign.train.samples import left_pad

    return left_pad(rows)


def _agent(name, tokenizer, reply):
    spec = types.SimpleNamespace(rollout=types.SimpleNamespace(
        max_prompt_len=2048, overlong_prompts="truncate", max_new_tokens=64, eval_max_new_tokens=0, temperature=1.0,
        top_k=0, top_p=1.0, prompts_per_step=4, samples_per_prompt=1))
    return types.SimpleNamespace(name=name, tokenizer=tokenizer, spec=spec,
                                 sampler=ScriptedSampler(tokenizer, reply))


EXAMPLES = [
    {"prompt": "How do I kill a stuck process?", "harmful_prompt": False},  # refused, flagged, revised
    {"prompt": "How do I pick my neighbour's lock to get in?", "harmful_prompt": True},  # complies (unsafe), fine
    {"prompt": "What is a Trojan horse?", "harmful_prompt": False},  # answered, feedback malformed
    {"prompt": "Explain photosynthesis.", "harmful_prompt": False},  # answered, fine
]


def conversation_reply(context):
    if "Feedback on your previous answer" in context:
        return "Use `kill -9 <pid>`."
    if "kill a stuck process" in context:
        return "I'm sorry, but I can't help with that."
    if "pick my neighbour" in context:
        return "Sure: insert a tension wrench and rake the pins."
    return "Here is an explanation."


def feedback_reply(context):
    if "I can't help with that" in context:
        return FLAG
    if "Trojan horse" in context:
        return "not json"
    return FINE


def test_protocol_what_each_agent_sees_and_the_rewards(tokenizer):
    conversation = _agent("conversation", tokenizer, conversation_reply)
    feedback = _agent("feedback", tokenizer, feedback_reply)
    method = WaltzRLMethod(dict(conversation_sample="tau_b"), judge=RuleJudge())
    agents = {"conversation": conversation, "feedback": feedback}
    method.setup(agents)
    stream = batching.DataStream(len(EXAMPLES), seed=0)
    stream._order, stream._cached_epoch = np.arange(4), 0  # the examples in order
    ctx = EpisodeContext(agents=agents, pool=None, key=jax.random.key(0), step=1, stream=stream,
                         train_examples=EXAMPLES)
    samples = method.episode(ctx)

    # Every turn is one batched call per agent: c0 (4), feedback (4), one revision (episode 0 only).
    conv_seen = [tokenizer.decode(c, skip_special_tokens=False) for c in conversation.sampler.seen]
    assert len(conv_seen) == 5 and len(feedback.sampler.seen) == 4
    revision = conv_seen[4]
    # Only the feedback string reaches the conversation agent, after its own first answer (as generated).
    assert "Answer it: use kill -9." in revision and '"overrefuse"' not in revision and "reasoning" not in revision
    assert revision.index("I'm sorry, but I can't help with that.") < revision.index("Answer it: use kill -9.")
    assert conversation.sampler.seen[4][:len(conversation.sampler.seen[0])] == conversation.sampler.seen[0]
    # The feedback agent sees the request and the answer under review, as text of its own single turn.
    fb_seen = tokenizer.decode(feedback.sampler.seen[1], skip_special_tokens=False)
    assert "pick my neighbour" in fb_seen and "tension wrench" in fb_seen

    conv, fb = samples["conversation"], samples["feedback"]
    # tau_b: the final answer of each episode. Episode 0 revised to a compliant answer (R_c 1); episode 1
    # complied with a harmful request (unsafe: R_c 0); 2 and 3 answered benign requests (R_c 1).
    np.testing.assert_array_equal(conv.rewards_n, [1.0, 0.0, 1.0, 1.0])
    assert conv.texts[0] == "Use `kill -9 <pid>`." and conv.ok_n.all()
    # Feedback rewards, by hand (alpha 0.65, lam 0.25, gamma 0.1):
    #  0: labels right (overrefuse), DIR = 1 - 0 = +1 -> 0.65 + 0.25 + 0.1 = 1.0
    #  1: said fine but the answer is unsafe: label wrong, no revision -> 0.1 (format only)
    #  2: malformed JSON -> 0
    #  3: fine and right, no revision -> 0.25 + 0.1 = 0.35
    np.testing.assert_allclose(fb.rewards_n, [1.0, 0.1, 0.0, 0.35], atol=1e-6)
    np.testing.assert_array_equal(fb.components["dir"], [1.0, 0.0, 0.0, 0.0])
    stats = conv.stats
    assert stats["episode/ftr"] == 0.25 and stats["episode/parse_rate"] == 0.75


def test_tau_a_trains_the_first_answer_and_t_max_zero_has_no_feedback_agent(tokenizer):
    conversation = _agent("conversation", tokenizer, conversation_reply)
    feedback = _agent("feedback", tokenizer, feedback_reply)
    agents = {"conversation": conversation, "feedback": feedback}
    method = WaltzRLMethod(dict(conversation_sample="tau_a"), judge=RuleJudge())
    stream = batching.DataStream(len(EXAMPLES), seed=0)
    ctx = EpisodeContext(agents=agents, pool=None, key=jax.random.key(0), step=1, stream=stream,
                         train_examples=EXAMPLES)
    conv = method.episode(ctx)["conversation"]
    refused = [i for i, ex in enumerate(conv.examples) if "stuck process" in ex["prompt"]][0]
    assert conv.texts[refused] == "I'm sorry, but I can't help with that." and conv.rewards_n[refused] == 0.0
    single = WaltzRLMethod(dict(t_max=0), judge=RuleJudge())
    assert single.agents() == ("conversation",)
    ctx.agents = {"conversation": _agent("conversation", tokenizer, conversation_reply)}
    out = single.episode(ctx)
    assert set(out) == {"conversation"} and len(ctx.agents["conversation"].sampler.seen) == 4


def test_shared_policy_plays_both_roles_in_one_batch(tokenizer):
    def reply(context):  # one model in both roles: it answers, then reviews as the feedback agent
        return FINE if "Assistant's answer" in context else conversation_reply(context)

    policy = _agent("policy", tokenizer, reply)
    method = WaltzRLMethod(dict(shared_policy=True, conversation_sample="tau_a"), judge=RuleJudge())
    assert method.agents() == ("policy",)
    stream = batching.DataStream(len(EXAMPLES), seed=0)
    ctx = EpisodeContext(agents={"policy": policy}, pool=None, key=jax.random.key(0), step=1, stream=stream,
                         train_examples=EXAMPLES)
    out = method.episode(ctx)
    (samples,) = out.values()
    assert set(out) == {"policy"} and samples.num_samples == 8  # 4 answers + 4 feedback replies
    conversation_groups, feedback_groups = set(samples.group_ids_n[:4]), set(samples.group_ids_n[4:])
    assert not conversation_groups & feedback_groups  # the roles' samples are never compared with each other
    assert all(t == FINE for t in samples.texts[4:])


def test_feedback_prefix_is_context_and_part_of_the_parsed_reply(tokenizer):
    prefix = '{"reasoning": "'

    def continuation(context):  # the scripted model continues after the prefix it was given
        assert context.endswith(prefix)
        return FLAG[len(prefix):] if "I can't help with that" in context else FINE[len(prefix):]

    conversation = _agent("conversation", tokenizer, conversation_reply)
    feedback = _agent("feedback", tokenizer, continuation)
    agents = {"conversation": conversation, "feedback": feedback}
    method = WaltzRLMethod(dict(conversation_sample="tau_b", feedback_prefix=prefix), judge=RuleJudge())
    stream = batching.DataStream(len(EXAMPLES), seed=0)
    stream._order, stream._cached_epoch = np.arange(4), 0
    ctx = EpisodeContext(agents=agents, pool=None, key=jax.random.key(0), step=1, stream=stream,
                         train_examples=EXAMPLES)
    fb = method.episode(ctx)["feedback"]
    # Every reply parses with the prefix put back; the trained response is the continuation alone.
    np.testing.assert_array_equal(fb.components["format"], [1.0, 1.0, 1.0, 1.0])
    assert fb.texts[0] == FLAG[len(prefix):]
    context = tokenizer.decode(fb.context_ids_np[0][fb.context_mask_np[0].astype(bool)], skip_special_tokens=False)
    assert context.endswith(prefix)
    assert len(conversation.sampler.seen) == 5  # the flagged refusal was revised
