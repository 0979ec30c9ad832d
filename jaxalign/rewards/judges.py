"""Model-based answer verification: a YES/NO equivalence judge run through the project's sampler.

RLEV's verifier is a large instruct model that reads the question, only the *final step* of the response,
and the reference answer, and says whether the final answer matches. `EquivalenceJudge` does the same with
any model the sampler can run (a generative verifier with staged weights in real runs, a tiny model or a
stub in tests). Anything other than a clear YES or NO is a failed verdict (`None`), which the caller counts
and treats like a verifier failure.

`rule_features` is the reward-pool feature function of the "rule_or_model" verifier: the rule-based
features plus `rule_decided`, which marks the samples the rules settle on their own; only the others are
sent to the judge.

The sampler is anything with `generate_text(prompts, sampling_params, key, chat=True) -> list[list[str]]`
(`jaxalign.rollout.Sampler`); `build_model_judge` loads a judge model with a sampler of its own and
`judge_correctness` turns verdicts into reward features. This module does not import jax (only
`build_judge_sampler` and `build_model_judge` do, when called), so the reward pool's workers stay light.

Generic pieces for other prompted judges (GTAlign's writing, safety and Pareto judges use them):
`judge_replies` sends chat prompts through a sampler (prompts over its limit are not sent),
`parse_tagged_value` reads a strict `<tag>value</tag>` verdict, `build_judge_sampler` loads a judge model
with a sampler of its own.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from jaxalign.rewards.verifiers import correctness_features, final_step, option_letter

JUDGE_SYSTEM_PROMPT = (
    "You check exam answers. You are given a question, the last step of a student's solution, and the "
    "reference answer. Decide whether the student's final answer means the same as the reference answer. "
    "Ignore the working and judge only the final answer. Equivalent forms count as a match: 0.5 and 1/2, "
    "an option letter and the text of that option, the same list in another order when order does not "
    "matter, the same answer in another language. Reply with exactly one word: YES if they match, NO if "
    "they do not."
)

_JUDGE_USER_TEMPLATE = (
    "Question:\n{question}\n\n"
    "Last step of the student's solution:\n{final_step}\n\n"
    "Reference answer:\n{reference}\n\n"
    "Does the student's final answer match the reference answer? Reply YES or NO."
)


JUDGE_DTYPES = ("bfloat16", "float16", "float32")
"""The parameter/compute/cache dtypes a judge model may run in."""


class TextSampler(Protocol):
    def generate_text(self, prompts: Sequence[Any], sp: Any, key: Any, *, chat: bool = True) -> list[list[str]]:
        ...



def check_judge_sampler(sampler: Any, batch_size: int | None) -> None:
    """A judge's arguments: a sampler with `generate_text` and a batch size of None or >= 1."""
    if not hasattr(sampler, "generate_text"):
        raise TypeError(f"sampler {type(sampler).__name__} has no generate_text method")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"judge batch_size must be >= 1, got {batch_size}")

def judge_messages(question: str, response: str, reference: str, *, max_final_chars: int = 400) -> list[dict]:
    """The chat messages asking the judge whether `response`'s final step matches `reference`."""
    step = final_step(response, max_chars=max_final_chars) or "(empty response)"
    user = _JUDGE_USER_TEMPLATE.format(question=question.strip(), final_step=step, reference=str(reference).strip())
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


# A label the reply may put before its verdict: "Answer:", "Final answer:", "Verdict -", "Final:", ...
_VERDICT_LABEL_RE = re.compile(
    r"^(?:(?:final\s+)?(?:answer|verdict|judge?ment|decision)|final)\s*[:\-]?\s*")
_MARKUP = " \t\r\n*_`\"'#>"


def parse_yes_no(text: str) -> bool | None:
    """True for YES, False for NO, None when the reply does not give one clear verdict.

    The judge prompt asks for one word, YES or NO, so the verdict is the reply's first word (any case,
    wrapped in markdown or quotes, optionally after a label such as "Answer:", "Final answer:", "Verdict:"
    or "Final:"); what follows is an explanation and is not read for the verdict ("YES, no difference" is
    YES). The reply is ambiguous (None) when the opposite word also stands as a verdict later: followed by
    punctuation or by nothing ("Yes and no", "yes/no", "NO. Yes, 8 is wrong"). A reply that does not start
    with YES or NO ("The answer is YES", "Nope", "Yesterday", "") is None.
    """
    rest = _VERDICT_LABEL_RE.sub("", text.lower().strip(_MARKUP), count=1).lstrip(_MARKUP)
    match = re.match(r"(yes|no)\b", rest)
    if match is None:
        return None
    verdict = match.group(1) == "yes"
    opposite = "no" if verdict else "yes"
    if re.search(rf"\b{opposite}\b[\s*_`\"']*(?:[.,;:!?)/]|$)", rest[match.end():]):
        return None
    return verdict


_NUMERIC_REFERENCE_RE = re.compile(r"^[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?\s*%?$")
_LATEX_FRACTION_RE = re.compile(r"^[-+]?\\[dt]?frac\{\s*-?\d+\s*\}\{\s*\d+\s*\}$")


def rule_checkable(reference: str) -> bool:
    """Whether the rule-based verifier can judge answers to `reference` both ways: a number (integer,
    decimal, fraction, percentage, `\\frac{a}{b}`) or an option letter. Text, expressions, lists and
    anything else may have equivalent forms that only a model recognises."""
    ref = str(reference).strip()
    if ref.startswith("$") and ref.endswith("$") and len(ref) >= 2:
        ref = ref.strip("$").strip()
    if len(ref) <= 3 and option_letter(ref) is not None:
        return True
    return bool(_NUMERIC_REFERENCE_RE.match(ref) or _LATEX_FRACTION_RE.match(ref.replace(" ", "")))


def rule_decides(has_answer: bool, correct: bool, reference: str) -> bool:
    """Whether the rule verifier's verdict stands without a judge: it extracted an answer and either that
    answer matched (a match is sound whatever the reference) or the reference is `rule_checkable` (then a
    mismatch is a real one). No extracted answer, or a mismatch against a text reference, is undecided."""
    return bool(has_answer) and (bool(correct) or rule_checkable(str(reference)))


def rule_features(text: str, example: Mapping[str, Any]) -> dict[str, float]:
    """Pool feature function: `correctness_features` plus "rule_decided" (0/1, see `rule_decides`)."""
    features = correctness_features(text, example)
    features["rule_decided"] = float(rule_decides(features["has_answer"] == 1.0, features["correct"] == 1.0,
                                                  example["answer"]))
    return features


_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def parse_tagged_value(text: str, tag: str, allowed: Sequence[float]) -> float | None:
    """The value of a reply's one `<tag>value</tag>` verdict, or None when it is not exactly one of `allowed`.

    Strict: the reply holds exactly one opening and one closing tag (case-insensitive) around a plain
    non-negative decimal number ("1", "0.5", "1.0"; no sign, fraction, words or markup) equal to an allowed
    value. Text outside the tag (an explanation) is ignored. A missing, unclosed or repeated tag, another
    value, or an empty tag gives None.
    """
    opens = re.findall(rf"<\s*{tag}\s*>", text, re.IGNORECASE)
    closes = re.findall(rf"<\s*/\s*{tag}\s*>", text, re.IGNORECASE)
    blocks = re.findall(rf"<\s*{tag}\s*>(.*?)<\s*/\s*{tag}\s*>", text, re.IGNORECASE | re.DOTALL)
    if len(opens) != 1 or len(closes) != 1 or len(blocks) != 1:
        return None
    body = blocks[0].strip()
    if not _NUMBER_RE.fullmatch(body):
        return None
    value = float(body)
    for option in allowed:
        if abs(value - float(option)) < 1e-9:
            return float(option)
    return None


def judge_replies(sampler: TextSampler, prompts: Sequence[Any], sampling_params: Any, key: Any, *,
                  batch_size: int | None = None, chat: bool = True) -> list[str | None]:
    """The judge model's first reply to each prompt, in one `generate_text` call; None for a prompt that was
    not sent because it is longer than the sampler's `max_prompt_len` (when the sampler has that and
    `encode_prompt`, as `jaxalign.rollout.Sampler` does)."""
    limit = getattr(sampler, "max_prompt_len", None)
    encode = getattr(sampler, "encode_prompt", None)
    if limit is None or not callable(encode):
        sent = list(range(len(prompts)))
    else:
        sent = [i for i, prompt in enumerate(prompts) if len(encode(prompt, chat=chat)) <= limit]
    replies: list[Any] = []
    if sent:
        kwargs = {} if batch_size is None else {"batch_size": batch_size}
        replies = sampler.generate_text([prompts[i] for i in sent], sampling_params, key, chat=chat, **kwargs)
    if len(replies) != len(sent):
        raise RuntimeError(f"sampler returned {len(replies)} reply lists for {len(sent)} prompts")
    out: list[str | None] = [None] * len(prompts)
    for i, reply_list in zip(sent, replies):
        out[i] = reply_list[0] if reply_list else ""
    return out


@dataclasses.dataclass(frozen=True)
class JudgeVerdict:
    """One judged response: `correct` is None when the judge's reply could not be parsed, or when the judge
    prompt was longer than the judge sampler accepts (`too_long`; then nothing was generated)."""

    correct: bool | None
    reply: str
    too_long: bool = False


class EquivalenceJudge:
    """Judges whether responses' final answers match reference answers, with a model through a sampler.

    Args:
      sampler: an object with `generate_text` (see module docstring).
      sampling_params: the sampler's parameters; a short greedy generation (`max_new_tokens` of 4-8) is
        enough for a YES/NO reply.
      max_final_chars: how much of the response's last line is shown to the judge.
      batch_size: prompts per `generate_text` chunk (passed on when given).

    When the sampler has `encode_prompt` and `max_prompt_len` (as `jaxalign.rollout.Sampler` does),
    prompts longer than that are not sent; they get a failed verdict with `too_long=True`.
    """

    def __init__(self, sampler: TextSampler, sampling_params: Any, *, max_final_chars: int = 400,
                 batch_size: int | None = None):
        check_judge_sampler(sampler, batch_size)
        self.sampler = sampler
        self.sampling_params = sampling_params
        self.max_final_chars = max_final_chars
        self.batch_size = batch_size

    def judge(
        self, questions: Sequence[str], responses: Sequence[str], references: Sequence[str], key: Any
    ) -> list[JudgeVerdict]:
        """One verdict per (question, response, reference); `key` is the sampler's PRNG key."""
        if not len(questions) == len(responses) == len(references):
            raise ValueError(
                f"judge needs as many questions ({len(questions)}), responses ({len(responses)}) and "
                f"references ({len(references)})"
            )
        if not questions:
            return []
        prompts = [
            judge_messages(q, r, ref, max_final_chars=self.max_final_chars)
            for q, r, ref in zip(questions, responses, references)
        ]
        replies = judge_replies(self.sampler, prompts, self.sampling_params, key, batch_size=self.batch_size)
        return [JudgeVerdict(None, "", too_long=True) if reply is None else JudgeVerdict(parse_yes_no(reply), reply)
                for reply in replies]

    def correctness_features(
        self, questions: Sequence[str], responses: Sequence[str], references: Sequence[str], key: Any
    ) -> dict[str, "list[float]"]:
        """Verdicts as reward features: {"correct": 1/0/NaN, "judge_failed": 0/1} lists, like the pool's."""
        verdicts = self.judge(questions, responses, references, key)
        return {
            "correct": [float("nan") if v.correct is None else float(v.correct) for v in verdicts],
            "judge_failed": [float(v.correct is None) for v in verdicts],
        }


def judge_correctness(
    judge: EquivalenceJudge,
    texts: Sequence[str],
    questions: Sequence[str],
    references: Sequence[str],
    features: Mapping[str, Any],
    ask_n: Any,
    key: Any,
) -> dict[str, np.ndarray]:
    """Reward features with the judge's verdicts for the samples `ask_n` marks (bool [n]).

    Returns new float arrays (the inputs are not modified): "correct" is the verdict (1/0) where the judge
    was asked and the input's value elsewhere (NaN when missing); "judged" is 1 where it was asked. A failed
    verdict (unparsable reply, prompt too long) sets every feature of that sample to NaN: a failed sample.
    """
    n = len(texts)
    if not n == len(questions) == len(references) == len(ask_n):
        raise ValueError(f"judge_correctness needs one question, reference and routing flag per text ({n}); got "
                         f"{len(questions)}, {len(references)}, {len(ask_n)}")
    out = {name: np.array(values, np.float64).reshape(n) for name, values in features.items()}
    out.setdefault("correct", np.full(n, np.nan))
    asked = np.flatnonzero(np.asarray(ask_n, bool))
    out["judged"] = np.zeros(n)
    out["judged"][asked] = 1.0
    if len(asked) == 0:
        return out
    verdicts = judge.judge([questions[i] for i in asked], [texts[i] for i in asked],
                           [references[i] for i in asked], key)
    for i, verdict in zip(asked, verdicts):
        if verdict.correct is None:
            for values in out.values():
                values[i] = np.nan
        else:
            out["correct"][i] = float(verdict.correct)
    return out


def build_judge_sampler(
    spec: str,
    *,
    mesh: Any = None,
    max_new_tokens: int = 8,
    greedy: bool = True,
    temperature: float = 1.0,
    max_prompt_len: int = 1024,
    dtype: str = "bfloat16",
) -> tuple[Any, Any]:
    """(sampler, sampling_params) of a judge model: `load_model(spec, mesh=mesh, role="sample")` (an HF
    directory, a .gguf file or a named alias) run by its own `jaxalign.rollout.Sampler` on `mesh`, one reply
    per prompt.

    `dtype` is the judge's parameter, compute and KV cache dtype. The prompt limit is cut to what the
    model's positions allow after `max_new_tokens`. jax is imported here, not at module import.
    """
    from jaxalign.models import load_model
    from jaxalign.rollout import Sampler, SamplingParams

    if dtype not in JUDGE_DTYPES:
        raise ValueError(f"judge dtype must be one of {', '.join(JUDGE_DTYPES)}, got {dtype!r}")
    model, tokenizer = load_model(spec, mesh=mesh, role="sample", param_dtype=dtype, dtype=dtype)
    if tokenizer is None:
        raise ValueError(f"judge model {spec!r} has no tokenizer, and a judge reads text: use an HF model "
                         "directory with tokenizer files, a .gguf file or smollm2-135m-instruct")
    max_prompt_len = min(max_prompt_len, model.cfg.max_position_embeddings - max_new_tokens)
    sampler = Sampler(model, tokenizer, mesh=mesh, max_prompt_len=max_prompt_len, cache_dtype=dtype)
    del model  # the sampler holds its own copy of the weights
    sampling_params = SamplingParams(max_new_tokens=max_new_tokens, greedy=greedy,
                                     temperature=1.0 if greedy else temperature, n=1)
    return sampler, sampling_params


def build_model_judge(
    spec: str,
    *,
    mesh: Any = None,
    max_new_tokens: int = 8,
    greedy: bool = True,
    temperature: float = 1.0,
    max_prompt_len: int = 1024,
    batch_size: int = 64,
    dtype: str = "bfloat16",
) -> EquivalenceJudge:
    """An `EquivalenceJudge` over a model of its own (see `build_judge_sampler`)."""
    sampler, sampling_params = build_judge_sampler(spec, mesh=mesh, max_new_tokens=max_new_tokens, greedy=greedy,
                                                   temperature=temperature, max_prompt_len=max_prompt_len,
                                                   dtype=dtype)
    return EquivalenceJudge(sampler, sampling_params, batch_size=batch_size)
