"""Model-based answer verification: a YES/NO equivalence judge run through the project's sampler.

RLEV's verifier is a large instruct model that reads the question, only the *final step* of the response,
and the reference answer, and says whether the final answer matches. `EquivalenceJudge` does the same with
any model the sampler can run (a generative verifier with staged weights in real runs, a tiny model or a
stub in tests). Anything other than a clear YES or NO is a failed verdict (`None`), which the caller counts
and treats like a verifier failure.

The sampler is anything with `generate_text(prompts, sampling_params, key, chat=True) -> list[list[str]]`
(`jaxalign.rollout.Sampler`). This module does not import jax, so the reward pool's workers stay light.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Protocol, Sequence

from jaxalign.rewards.verifiers import final_step

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


class TextSampler(Protocol):
    def generate_text(self, prompts: Sequence[Any], sp: Any, key: Any, *, chat: bool = True) -> list[list[str]]:
        ...


def judge_messages(question: str, response: str, reference: str, *, max_final_chars: int = 400) -> list[dict]:
    """The chat messages asking the judge whether `response`'s final step matches `reference`."""
    step = final_step(response, max_chars=max_final_chars) or "(empty response)"
    user = _JUDGE_USER_TEMPLATE.format(question=question.strip(), final_step=step, reference=str(reference).strip())
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


_VERDICT_RE = re.compile(r"[a-z]+")


def parse_yes_no(text: str) -> bool | None:
    """True for YES, False for NO, None when the reply is neither (or both).

    Accepts the verdict as the first word, in any case, wrapped in markdown or quotes, optionally after
    "Answer:"/"Verdict:" and followed by an explanation that does not contain the opposite word.
    """
    words = _VERDICT_RE.findall(text.lower())
    if words[:1] in (["answer"], ["verdict"], ["final"]):
        words = words[1:] if words[:1] != ["final"] else words[2:]
    if not words or words[0] not in ("yes", "no"):
        return None
    verdict = words[0] == "yes"
    opposite = "no" if verdict else "yes"
    if opposite in words[1:]:
        return None
    return verdict


@dataclasses.dataclass(frozen=True)
class JudgeVerdict:
    """One judged response: `correct` is None when the judge's reply could not be parsed."""

    correct: bool | None
    reply: str


class EquivalenceJudge:
    """Judges whether responses' final answers match reference answers, with a model through a sampler.

    Args:
      sampler: an object with `generate_text` (see module docstring).
      sampling_params: the sampler's parameters; a short greedy generation (`max_new_tokens` of 4-8) is
        enough for a YES/NO reply.
      max_final_chars: how much of the response's last line is shown to the judge.
    """

    def __init__(self, sampler: TextSampler, sampling_params: Any, *, max_final_chars: int = 400):
        if not hasattr(sampler, "generate_text"):
            raise TypeError(f"sampler {type(sampler).__name__} has no generate_text method")
        self.sampler = sampler
        self.sampling_params = sampling_params
        self.max_final_chars = max_final_chars

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
        replies = self.sampler.generate_text(prompts, self.sampling_params, key, chat=True)
        if len(replies) != len(prompts):
            raise RuntimeError(f"sampler returned {len(replies)} reply lists for {len(prompts)} prompts")
        verdicts = []
        for reply_list in replies:
            reply = reply_list[0] if reply_list else ""
            verdicts.append(JudgeVerdict(parse_yes_no(reply), reply))
        return verdicts

    def correctness_features(
        self, questions: Sequence[str], responses: Sequence[str], references: Sequence[str], key: Any
    ) -> dict[str, "list[float]"]:
        """Verdicts as reward features: {"correct": 1/0/NaN, "judge_failed": 0/1} lists, like the pool's."""
        verdicts = self.judge(questions, responses, references, key)
        return {
            "correct": [float("nan") if v.correct is None else float(v.correct) for v in verdicts],
            "judge_failed": [float(v.correct is None) for v in verdicts],
        }
