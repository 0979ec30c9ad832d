"""GTAlign's SFT cold start, written for jaxalign and generated in code: chats whose assistant turn plays the
game in the four blocks, so a small model learns the format before RL (the paper starts RL from such an SFT).

Every conversation is `[system, user, assistant]`. The system and user turns are exactly what the policy sees
at RL time (`prompts.game_messages` on the question, as `GTAlignMethod.messages` builds them). The questions
are those of the embedded GTAlign set's training side (`data.TRAIN`: word problems, the same with a quantity
left out, vague requests) plus simple arithmetic and vague math requests, so no held-out GTAlign question
(`data.HELD_OUT`) can appear here. The assistant turn:

* `<thinking>`: the question type (DQ when everything needed is given, VQ otherwise) and what each action
  does to both sides, in words;
* `<payoff>`: a matrix that fits the question: for a definite question answering pays (DQ_DA, sometimes
  DQ_AQ), for a vague one asking pays (VQ_CQ or VQ_AQ); every cell tells the two sides apart (P = 1);
* `<analyze>`: the Pareto frontier of that matrix and its welfare choice (highest LLM + user, `game`);
* `<response>`: that choice carried out: a direct answer, one clarifying question, or a brief answer plus
  one follow-up question. Wording varies across a few templates per part.

`build_coldstart(seed)` returns the chats (`{"messages": [...]}`), registered as the embedded chat set
"gtalign_coldstart" for `jaxalign sft` (`data=embedded:gtalign_coldstart`); `coldstart_records` adds the
GTAlign example of each chat. `python -m jaxalign.methods.gtalign.coldstart --out FILE.jsonl` writes it.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

from jaxalign.methods.gtalign import game
from jaxalign.methods.gtalign.data import TRAIN, WordProblem, vague_request, word_problem
from jaxalign.methods.gtalign.prompts import game_messages

COLDSTART_NAME = "gtalign_coldstart"
DEFAULT_SIZE = 560

# ----------------------------------------------------------------------------------------------------------
# Questions

# Vague math requests (training side only), each with clarifying questions and a brief answer plus a question.
_VAGUE_MATH = {
    "Can you solve this equation for me?": (
        ("Could you write out the equation you want solved?", "Which equation do you mean, exactly?"),
        ("Yes: collect the unknown on one side and simplify. Which equation is it?",)),
    "What is the total?": (
        ("Which numbers should I add up?", "What are the amounts you want totalled?"),
        ("The total is the sum of all the amounts. Which amounts do you mean?",)),
    "How much is the tip?": (
        ("How large is the bill, and what share do you want to tip?",),
        ("A tip is usually a share of the bill, often between ten and twenty percent. How large is the bill?",)),
    "What is the average?": (
        ("Which numbers should I average?", "Could you list the values you want the average of?"),
        ("The average is the sum of the values divided by how many there are. Which values do you have?",)),
    "Can you work out the percentage?": (
        ("Which part and which whole should I compare?",),
        ("A percentage is the part divided by the whole, times a hundred. What are the part and the whole?",)),
    "How many are left?": (
        ("How many were there at the start, and how many were used?",),
        ("What is left is the start minus what was used. How many were there, and how many went?",)),
}

# The training side's vague requests: clarifying questions, and a brief answer plus a question.
_VAGUE_REPLIES = {
    "Can you help me fix it?": (
        ("What are you trying to fix, and what goes wrong when you use it?",
         "What is broken, and what happens when you try it?"),
        ("Gladly: most fixes start by finding the exact step that fails. What are you fixing, and what do you see "
         "when it fails?",)),
    "How long will it take?": (
        ("Which task do you mean, and how far along are you?", "What task are you asking about?"),
        ("That depends on the size of the task and your pace. Which task do you have in mind?",)),
    "Which one should I choose?": (
        ("Which options are you choosing between, and what matters most to you?",),
        ("Pick the option that best fits your main goal and your budget. Which options are you comparing?",)),
    "Is it worth it?": (
        ("What are you considering, and what would it cost you?",),
        ("It is worth it when the benefit clearly beats the cost in money and time. What are you thinking of "
         "doing?",)),
    "What is the best way to do this?": (
        ("What are you trying to do?", "Which task do you mean by this?"),
        ("Usually it helps to split the job into small steps and start with the hardest. What is the task?",)),
    "Can you make it shorter?": (
        ("Could you paste the text you want shortened and say how short it should be?",),
        ("Yes, I can cut it down. Could you paste the text and say how long it may be?",)),
    "How much should I bring?": (
        ("Bring to what: a trip, a party or a shared meal?", "What is the occasion, and for how many people?"),
        ("That depends on the event and the number of people. What is the occasion?",)),
    "What time should we leave?": (
        ("Where are you going, and when do you need to arrive?",),
        ("Leave early enough to arrive with some time to spare. Where are you going, and when must you be "
         "there?",)),
    "Is this the right size?": (
        ("What is the item, and what does it need to fit?",),
        ("It is the right size if it fits with a little room to spare. What is the item, and what should it "
         "fit?",)),
    "Can you check my numbers?": (
        ("Could you share the numbers and what they should add up to?",),
        ("Sure, I can check them. Could you paste the numbers and the total you expect?",)),
}
assert set(_VAGUE_REPLIES) == set(TRAIN.vague_requests), "every training vague request needs replies here"


def _arithmetic(rng: random.Random) -> tuple[str, int, str]:
    """(question, answer, worked answer) of one simple arithmetic question."""
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        question, answer, sign = rng.choice(("What is {a} + {b}?", "Add {a} and {b}.")).format(a=a, b=b), a + b, "+"
    elif kind == 1:
        b, answer = rng.randint(5, 60), rng.randint(3, 60)
        a = b + answer
        question, sign = rng.choice(("What is {a} - {b}?", "Subtract {b} from {a}.")).format(a=a, b=b), "-"
    elif kind == 2:
        a, b = rng.randint(3, 15), rng.randint(3, 12)
        question, answer, sign = rng.choice(("What is {a} times {b}?", "Multiply {a} by {b}.")).format(a=a, b=b), \
            a * b, "*"
    else:
        b, answer = rng.randint(2, 12), rng.randint(2, 15)
        a = b * answer
        question, sign = rng.choice(("What is {a} divided by {b}?", "Divide {a} by {b}.")).format(a=a, b=b), "/"
    return question, answer, f"{a} {sign} {b} = {answer}"


# ----------------------------------------------------------------------------------------------------------
# Payoff matrices that fit the question

# Mean (LLM, user) payoff of each cell, by the question's type and the action that should win. In the row of
# the question's type the runner-up action is better for one side (so the frontier often has two points) but
# worse in sum; the row of the other type says what each action would be worth had the question been of that
# type (lower: it is not).
_PROFILES = {
    ("DQ", "DA"): {"DQ_DA": (3.8, 3.7), "DQ_AQ": (2.5, 4.1), "DQ_CQ": (1.2, 0.3),
                   "VQ_DA": (0.9, 0.4), "VQ_CQ": (2.0, 1.5), "VQ_AQ": (1.9, 2.2)},
    ("DQ", "AQ"): {"DQ_AQ": (3.0, 4.3), "DQ_DA": (3.7, 3.0), "DQ_CQ": (1.0, 0.2),
                   "VQ_DA": (0.8, 0.3), "VQ_CQ": (2.0, 1.4), "VQ_AQ": (1.8, 2.1)},
    ("VQ", "CQ"): {"VQ_CQ": (3.1, 3.8), "VQ_AQ": (2.0, 4.0), "VQ_DA": (0.7, -0.6),
                   "DQ_DA": (2.2, 1.7), "DQ_AQ": (1.6, 2.0), "DQ_CQ": (1.1, 0.6)},
    ("VQ", "AQ"): {"VQ_AQ": (3.0, 4.1), "VQ_CQ": (3.5, 2.7), "VQ_DA": (0.5, -0.4),
                   "DQ_DA": (2.1, 1.6), "DQ_AQ": (1.7, 2.2), "DQ_CQ": (1.0, 0.5)},
}
_JITTER = 0.5
_MARGIN = 0.3  # the winner's LLM + user beats every other cell's by at least this much


def _cell_ok(llm: float, user: float) -> bool:
    return llm != user and abs(user - llm) / max(abs(user), abs(llm), 1e-8) > 0.1  # both halves of P


def fitting_payoffs(rng: random.Random, question_type: str, action: str) -> game.Payoffs:
    """A matrix whose welfare choice is `question_type`_`action`, by a margin, with P = 1."""
    target = f"{question_type}_{action}"
    while True:
        payoffs = {}
        for key, (llm_mean, user_mean) in _PROFILES[question_type, action].items():
            while True:
                llm = round(llm_mean + rng.uniform(-_JITTER, _JITTER), 1)
                user = round(user_mean + rng.uniform(-_JITTER, _JITTER), 1)
                if _cell_ok(llm, user):
                    break
            payoffs[key] = (llm, user)
        sums = {k: round(v[0] + v[1], 1) for k, v in payoffs.items()}
        runner_up = max(v for k, v in sums.items() if k != target)
        if sums[target] >= runner_up + _MARGIN and game.welfare_choice(payoffs) == target:
            return payoffs


# ----------------------------------------------------------------------------------------------------------
# The four blocks

_THINKING = {
    ("DQ", "DA"): (
        "The question is definite (DQ): everything the answer needs is given. A direct answer is safe and saves "
        "the user a turn. A clarifying question would cost them time for nothing, and a follow-up adds little.",
        "This is a DQ question, complete and unambiguous. Answering directly carries little risk of a wrong answer "
        "and spends few tokens. Asking first would annoy the user; answering and asking more is fine but longer.",
        "DQ: the user stated all the facts the answer depends on. A direct answer settles it at once with the "
        "least effort on both sides. A clarifying question lowers satisfaction, and an extra question mostly "
        "spends tokens.",
    ),
    ("DQ", "AQ"): (
        "The question is definite (DQ) and easy to answer. A short answer plus one follow-up offer keeps the "
        "user moving at little extra cost. A clarifying question would waste their time.",
        "This is a DQ question: nothing is missing. Answering directly is safe; adding one focused follow-up "
        "lets the user go further without a new request. Asking before answering would only delay them.",
    ),
    ("VQ", "CQ"): (
        "The question is vague (VQ): something the answer depends on is missing. A direct answer would be a "
        "guess and likely wrong, which costs both sides. One clarifying question fills the gap for a short "
        "extra turn.",
        "This is a VQ question; I cannot tell what the user needs yet. Guessing risks a wrong answer and a "
        "wasted reply. A single clarifying question resolves the ambiguity and makes success likely.",
        "VQ: the request leaves out the detail that decides the answer. Answering now would spend tokens on a "
        "guess the user may have to correct. Asking one question first is cheap for them and safer for me.",
    ),
    ("VQ", "AQ"): (
        "The question is vague (VQ): a detail the answer depends on is missing. A direct answer would be a "
        "guess. Giving what can be said already and asking one question helps now and still resolves the gap.",
        "This is a VQ question. Guessing risks a wrong answer, but asking alone gives the user nothing yet. A "
        "brief general answer plus one focused question balances both sides.",
    ),
}

_ANALYZE = (
    "Pareto frontier (LLM, user): {frontier}. Every other pair is dominated. {key} has the highest sum, "
    "{total}, so I choose {key}.",
    "Non-dominated pairs: {frontier}; the remaining cells are dominated. The largest LLM + user is {total} at "
    "{key}. Chosen key: {key}.",
    "The frontier holds {frontier}. {key} gives the most total welfare ({total}). I pick {key}.",
    "Pairs no other pair beats for both sides: {frontier}. Summing LLM and user, {key} leads with {total}. "
    "Choice: {key}.",
)

_FOLLOW_UPS = ("Would you like the steps?", "Do you want me to show the working?",
               "Should I explain how to check it?", "Want a quick way to verify it?")

_DIRECT = {
    "more": ("{name} has {ans} {thing} now.", "{a} + {b} = {ans}, so {name} has {ans} {thing}.", "{ans} {thing}."),
    "away": ("{ans} {thing} are left.", "{a} - {b} = {ans}, so {ans} {thing} are left.", "{ans} {thing}."),
    "boxes": ("That is {ans} {thing} in total.", "{b} boxes of {a} make {ans} {thing}.", "{ans} {thing}."),
}
_CLARIFY = {
    "more": ("How many {thing} did {name} have before getting {b} more?",
             "How many {thing} did {name} start with?"),
    "away": ("How many {thing} did {name} give away?", "How many of the {a} {thing} were given away?"),
    "boxes": ("How many boxes did {name} pack?", "How many boxes are there?"),
}
_PARTIAL = {
    "more": "{name} now has {b} more {thing} than at the start, so the total is the starting number plus {b}.",
    "away": "What is left is {a} minus the number given away.",
    "boxes": "The total is {a} times the number of boxes.",
}


def _frontier_text(payoffs: game.Payoffs) -> str:
    return ", ".join(f"{k} ({payoffs[k][0]:.1f}, {payoffs[k][1]:.1f})" for k in game.pareto_frontier(payoffs))


def assistant_turn(rng: random.Random, question_type: str, action: str, response: str) -> tuple[str, str]:
    """(the four-block reply, its chosen key) for a question of `question_type` answered by `action`."""
    payoffs = fitting_payoffs(rng, question_type, action)
    key = game.welfare_choice(payoffs)
    total = payoffs[key][0] + payoffs[key][1]
    analyze = rng.choice(_ANALYZE).format(frontier=_frontier_text(payoffs), key=key, total=f"{total:.1f}")
    thinking = rng.choice(_THINKING[question_type, action])
    text = (f"<thinking>{thinking}</thinking>\n<payoff>{game.payoff_json(payoffs)}</payoff>\n"
            f"<analyze>{analyze}</analyze>\n<response>{response}</response>")
    return text, key


# ----------------------------------------------------------------------------------------------------------
# The set


def _problem_reply(rng: random.Random, problem: WordProblem, action: str, complete: bool) -> str:
    fields = dict(name=problem.name, thing=problem.thing, a=problem.a, b=problem.b, ans=problem.answer)
    if complete:
        direct = rng.choice(_DIRECT[problem.kind]).format(**fields)
        return direct if action == "DA" else f"{direct} {rng.choice(_FOLLOW_UPS)}"
    question = rng.choice(_CLARIFY[problem.kind]).format(**fields)
    return question if action == "CQ" else f"{_PARTIAL[problem.kind].format(**fields)} {question}"


def _draw(rng: random.Random) -> tuple[dict[str, Any], str, str]:
    """(GTAlign example, question type, response) of one conversation."""
    roll = rng.random()
    if roll < 0.8:  # the embedded set's kinds of question (more of the vague ones than it has)
        kind = rng.random()
        problem = word_problem(rng, TRAIN)
        if kind < 0.45:  # complete: math or ambiguity source
            source = "math" if kind < 0.3 else "ambiguity"
            action = "AQ" if rng.random() < 0.2 else "DA"
            example = {"prompt": problem.definite, "data_source": source, "answer": str(problem.answer),
                       "ambiguous": False}
            return example, action, _problem_reply(rng, problem, action, complete=True)
        if kind < 0.75:  # one quantity left out
            action = "AQ" if rng.random() < 0.35 else "CQ"
            example = {"prompt": problem.incomplete, "data_source": "ambiguity", "answer": "", "ambiguous": True}
            return example, action, _problem_reply(rng, problem, action, complete=False)
        request = vague_request(rng, TRAIN)
        clarify, partial = _VAGUE_REPLIES[request.split("?", 1)[0] + "?"]
    elif roll < 0.92:  # simple arithmetic
        question, answer, worked = _arithmetic(rng)
        action = "AQ" if rng.random() < 0.2 else "DA"
        direct = rng.choice((f"{worked}.", f"It is {answer}.", f"The answer is {answer}."))
        example = {"prompt": question, "data_source": "math", "answer": str(answer), "ambiguous": False}
        return example, action, direct if action == "DA" else f"{direct} {rng.choice(_FOLLOW_UPS)}"
    else:  # a vague math request
        base = rng.choice(sorted(_VAGUE_MATH))
        request = base + rng.choice(("", " Please be quick.", " I need it today.", " Thanks!"))
        clarify, partial = _VAGUE_MATH[base]
    action = "AQ" if rng.random() < 0.25 else "CQ"
    example = {"prompt": request, "data_source": "ambiguity", "answer": "", "ambiguous": True}
    return example, action, rng.choice(clarify if action == "CQ" else partial)


def coldstart_records(seed: int = 0, size: int = DEFAULT_SIZE) -> list[dict[str, Any]]:
    """`size` conversations with distinct questions, deterministic in `seed`: each record holds `messages`,
    `example` (the GTAlign example of its question) and `choice` (the welfare choice its reply names)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"cold-start size must be an int >= 1, got {size!r}")
    rng = random.Random(f"gtalign-coldstart-{seed}")
    records, seen, attempts = [], set(), 0
    while len(records) < size:
        attempts += 1
        if attempts > 100 * size:
            raise ValueError(f"cannot draw {size} distinct cold-start questions; ask for fewer")
        example, action, response = _draw(rng)
        if example["prompt"] in seen:
            continue
        seen.add(example["prompt"])
        question_type = "VQ" if example["ambiguous"] else "DQ"
        reply, key = assistant_turn(rng, question_type, action, response)
        messages = game_messages(example["prompt"]) + [{"role": "assistant", "content": reply}]
        records.append({"messages": messages, "example": dict(example, source=COLDSTART_NAME, index=len(records)),
                        "choice": key})
    return records


def build_coldstart(seed: int = 0) -> list[dict[str, list[dict[str, str]]]]:
    """The cold-start chats, `{"messages": [system, user, assistant]}` each (`DEFAULT_SIZE` of them)."""
    return [{"messages": r["messages"]} for r in coldstart_records(seed)]


def _register() -> bool:
    """Registers the set as the embedded chat set "gtalign_coldstart" where `jaxalign.data.chat` exists."""
    try:
        from jaxalign.data.chat import register_embedded_chat
    except ImportError:
        return False
    register_embedded_chat(COLDSTART_NAME, build_coldstart)
    return True


_register()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxalign.methods.gtalign.coldstart",
                                     description="Write GTAlign's SFT cold-start chats as JSON lines.")
    parser.add_argument("--out", required=True, help="the .jsonl file to write ({\"messages\": [...]} per line)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"conversations (default {DEFAULT_SIZE})")
    args = parser.parse_args(argv)
    try:
        records = coldstart_records(args.seed, args.size)
    except ValueError as err:
        parser.error(str(err))
    with open(args.out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps({"messages": record["messages"]}) + "\n")
    print(f"wrote {len(records)} conversations to {args.out}")


if __name__ == "__main__":
    main()
