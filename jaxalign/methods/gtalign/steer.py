"""GTAlign's inference-time steering: reprice the model's own payoff matrix mid-generation, then resume.

1. Generate the four-block reply up to the end of its payoff block (the stop string `</payoff>`, checked
   inside the decode loop).
2. Parse the matrix and reprice it for a pricing policy (`game.steer_payoffs`): under
   subscription pricing every extra turn costs the provider (`llm_shift` < 0), under per-token API
   pricing it costs the user (`user_shift` < 0).
3. Splice the edited matrix into the reply and let the model continue from `<analyze>`: it now reasons
   over, and acts on, the repriced game.

This is a true continuation of the model's own reasoning (the reference's first sketch); its later script
instead re-asks the bare question with a one-line instruction for the action it picked itself.

`add_steer_command` adds the `jaxalign steer` subcommand (GTAlign's `Method.add_commands`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Sequence

import jax

from jaxalign.commands import (EXIT_NO_RESULT, EXIT_OK, UsageError, add_generation_args, load_text_model, read_prompts,
                               sampling_params)
from jaxalign.methods.gtalign import game
from jaxalign.methods.gtalign.prompts import STEERED_ANALYZE, game_messages

if TYPE_CHECKING:
    from jaxalign.rollout import SamplingParams

PAYOFF_END = "</payoff>"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SteeredReply:
    """One steered reply.

    Attributes:
      question: the user's question.
      text: the whole reply (the model's blocks up to its payoff, the edited payoff, the continuation);
        when steering was impossible, the model's unsteered first part.
      payoffs, steered: the matrix the model wrote and the repriced one (None when it did not parse).
      choice_before, choice_after: the welfare choice (highest sum, then user, then LLM) of each matrix.
      chosen: the key the continued `<analyze>` block settles on (None if it names none).
      error: why the reply could not be steered (no payoff block, a malformed matrix), else None.
    """

    question: str
    text: str
    payoffs: dict | None = None
    steered: dict | None = None
    choice_before: str | None = None
    choice_after: str | None = None
    chosen: str | None = None
    error: str | None = None


def _prefix_with(first_part: str, steered: game.Payoffs) -> str:
    head = first_part[: first_part.find("<payoff>")]
    return f"{head}<payoff>{game.payoff_json(steered)}</payoff>\n<analyze>{STEERED_ANALYZE}"


def steer(sampler: Any, questions: Sequence[str], sp: SamplingParams, key: jax.Array, *, llm_shift: float = 0.0,
          user_shift: float = 0.0, system_prompt: str | None = None, batch_size: int = 16,
          progress: bool = False) -> list[SteeredReply]:
    """Steered replies to `questions` from a `Sampler` with a tokenizer (one reply per question).

    `sp` sets the sampling of both parts (its `n` must be 1; its stop strings apply to the continuation).
    """
    if sp.n != 1:
        raise ValueError(f"steer: one reply per question, so SamplingParams.n must be 1 (got {sp.n})")
    if not llm_shift and not user_shift:
        raise ValueError("steer: set llm_shift (subscription pricing) or user_shift (API pricing) to a non-zero value")
    chats = [game_messages(q, system_prompt=system_prompt) for q in questions]
    first_sp = dataclasses.replace(sp, stop_strings=(PAYOFF_END,))
    key_first, key_rest = jax.random.split(key)
    firsts = [texts[0] for texts in sampler.generate_text(chats, first_sp, key_first, progress=progress,
                                                          batch_size=batch_size)]
    replies: list[SteeredReply | None] = []
    to_continue: list[int] = []
    prefixes: list[str] = []
    for i, (question, first) in enumerate(zip(questions, firsts)):
        body = game.extract_tag(first, "payoff")
        if body is None:
            replies.append(SteeredReply(question, first, error="the reply has no complete <payoff> block"))
            continue
        try:
            payoffs = game.parse_payoffs(body)
        except game.PayoffError as err:
            replies.append(SteeredReply(question, first, error=str(err)))
            continue
        steered = game.steer_payoffs(payoffs, llm_shift=llm_shift, user_shift=user_shift)
        replies.append(SteeredReply(question, "", payoffs=payoffs, steered=steered,
                                    choice_before=game.welfare_choice(payoffs),
                                    choice_after=game.welfare_choice(steered)))
        to_continue.append(i)
        prefixes.append(_prefix_with(first, steered))
    if to_continue:
        rests = sampler.continue_text([chats[i] for i in to_continue], prefixes, sp, key_rest, progress=progress,
                                      batch_size=batch_size)
        for i, prefix, texts in zip(to_continue, prefixes, rests):
            text = prefix + texts[0]
            chosen = game.named_key(game.extract_tag(text, "analyze") or text.split("<analyze>", 1)[1])
            replies[i] = dataclasses.replace(replies[i], text=text, chosen=chosen)
    return replies


# The `jaxalign steer` command


def cmd_steer(args: argparse.Namespace, config_spec: Any = None, overrides: Any = None) -> int:
    """Steers `--prompt`/`--prompts-file` questions with `--model`; prints one JSON line per reply.

    The first question is a probe, answered on its own first: when its reply has no usable payoff block
    the model probably does not write GTAlign's format, and a warning says so before the rest is generated.
    Exits `EXIT_NO_RESULT` (3) when no reply could be steered.
    """
    from jaxalign.rollout import Sampler

    questions = read_prompts(args)
    if not questions:
        raise UsageError(f"--prompts-file {args.prompts_file} has no prompts")
    if not args.llm_shift and not args.user_shift:
        raise UsageError("set --llm-shift (subscription pricing) or --user-shift (per-token API pricing)")
    model, tokenizer = load_text_model(args, "steer needs text questions")
    sp = sampling_params(args)
    sampler = Sampler(model, tokenizer, max_prompt_len=args.max_prompt_len)
    key = jax.random.key(args.seed)
    kwargs = dict(llm_shift=args.llm_shift, user_shift=args.user_shift, batch_size=args.batch_size)
    replies = steer(sampler, questions[:1], sp, jax.random.fold_in(key, 0), **kwargs)
    if replies[0].error is not None:
        log.warning("probe: the reply to the first question could not be steered (%s); the model may not write "
                    "GTAlign's four-block format with a <payoff> matrix (a GTAlign-trained model does)",
                    replies[0].error)
    _print_replies(replies)
    if len(questions) > 1:
        rest = steer(sampler, questions[1:], sp, jax.random.fold_in(key, 1),
                     progress=len(questions) - 1 > args.batch_size, **kwargs)
        _print_replies(rest)
        replies += rest
    steered = sum(r.error is None for r in replies)
    if not steered:
        print(f"jaxalign steer: none of the {len(replies)} replies could be steered (see their \"error\")",
              file=sys.stderr)
        return EXIT_NO_RESULT
    if steered < len(replies):
        log.warning("%d of %d replies could not be steered (see their \"error\")", len(replies) - steered,
                    len(replies))
    return EXIT_OK


def _print_replies(replies: Sequence[SteeredReply]) -> None:
    for reply in replies:
        print(json.dumps(dataclasses.asdict(reply), ensure_ascii=False), flush=True)


def add_steer_command(subparsers: "argparse._SubParsersAction", parents: Sequence[argparse.ArgumentParser]) -> None:
    """Adds `steer` to the `jaxalign` subcommands."""
    p = subparsers.add_parser(
        "steer", parents=list(parents),
        help="GTAlign pricing steering: reprice the model's payoff matrix, then let it continue",
        description="Generates each reply up to its <payoff> matrix, reprices the matrix (--llm-shift for "
                    "subscription pricing, --user-shift for per-token API pricing) and lets the model continue "
                    "from the edited matrix. Prints one JSON line per reply (\"error\" says why a reply could "
                    "not be steered). The first question is a probe: a warning comes first when the model does "
                    "not write the payoff format. Exit code 3 when no reply could be steered.",
        epilog="example:\n  jaxalign steer --model runs/gtalign_hf --prompt \"Plan my trip\" --user-shift -2")
    add_generation_args(p, prompt_help="one question", file_help="", max_new_tokens=512)
    p.add_argument("--llm-shift", type=float, default=0.0, metavar="X",
                   help="added to every LLM payoff (subscription pricing: negative, turns cost the provider)")
    p.add_argument("--user-shift", type=float, default=0.0, metavar="X",
                   help="added to every user payoff (API pricing: negative, tokens cost the user)")
    p.add_argument("--max-prompt-len", type=int, default=2048, metavar="N", help="longest question in tokens")
    p.set_defaults(fn=cmd_steer)
