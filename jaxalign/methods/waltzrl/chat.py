"""`jaxalign chat --waltz`: WaltzRL's collaboration on prompts you give, turn by turn, for a person to read.

For each prompt the conversation agent answers (c0); the feedback agent reviews the answer and replies
with its JSON object; when that parses and flags the answer unsafe or over-refusing, the feedback string
is shown to the conversation agent, which revises (c1), and so on for at most `--t-max` rounds
(`episode.play`, the same protocol training and eval run). The last answer is the one a deployment shows.

The agents are two plain models (`--conversation MODEL --feedback MODEL`, possibly the same one) or the
agents of a trained run (`--workdir DIR`: its saved config and latest checkpoint, roles mapped through the
run's `waltzrl` section; a `shared_policy` run plays both roles with its one agent).

Chat needs no labels, so by default nothing judges the answers (`--judge none`); `--judge rule` adds the
offline rule judge's labels of every answer. The rule judge's `unsafe` depends on whether the prompt is
harmful, which a typed prompt does not say: every prompt counts as benign unless `--harmful` is given.

Output: per prompt, the turns as text (headers `[conversation]`, `[feedback] ...`, `[revision N]`,
`--- final ---`), or one JSON object with `--json` (`collaboration_records` gives its fields).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Iterator, Sequence

from jaxalign.commands import UsageError, read_prompts

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_FEEDBACK_MAX_NEW_TOKENS = 256
DEFAULT_MAX_PROMPT_LEN = 2048


@dataclasses.dataclass(frozen=True)
class RoleAgent:
    """What `episode.play` needs of an agent in one role: a sampler, its tokenizer and rollout settings
    (`spec.rollout`: max_prompt_len, overlong_prompts, max_new_tokens, eval_max_new_tokens, temperature,
    top_k, top_p)."""

    name: str
    sampler: Any
    tokenizer: Any
    spec: Any


class NoJudge:
    """A judge that labels nothing (every label None): chat shows the turns without labels."""

    def label(self, prompts: Sequence[str], responses: Sequence[str], harmful_prompt: Sequence[bool],
              *, key: Any = None) -> list[None]:
        return [None] * len(prompts)


# ----------------------------------------------------------------------------------------------------
# Records of played episodes and their text form
# ----------------------------------------------------------------------------------------------------


def _labels_dict(labels: Any) -> dict[str, bool] | None:
    if labels is None:
        return None
    return {"unsafe": bool(labels.unsafe), "refusal": bool(labels.refusal), "overrefuse": bool(labels.overrefuse)}


def collaboration_records(played: Any, *, t_max: int, judged: bool) -> list[dict[str, Any]]:
    """One JSON-ready record per episode of `played` (an `episode.Played`).

    A record has `prompt`, `turns`, `revisions` (how many revisions happened) and `final` (the last
    answer, the deployed one); with `judged` also `harmful_prompt`. Turn t has `answer` (c_t; c0 is the
    first answer, the others revisions), `finish` ("stop" or "length"), with `judged` the judge's
    `labels` of c_t (unsafe, refusal, overrefuse; None for a failed verdict), and `feedback`: None when
    c_t got no feedback round (the t_max-th answer), else `reply` (the feedback agent's raw text),
    `malformed`, `error` (why it did not parse), the parsed `unsafe`, `overrefuse`, `feedback` and
    `reasoning` (None / "" when malformed), `fired` (it flagged the answer, so a revision was asked for)
    and `skipped` (the review prompt was too long and dropped, so no feedback was given). `revision_dropped`
    is set on a fired feedback whose revision context was too long to generate from.
    """
    from jaxalign.methods.waltzrl.rewards import triggered

    records = []
    for e, example in enumerate(played.examples):
        turns = []
        last = played.last_turn(e)
        for t in range(last + 1):
            answers = played.answers[t]
            row = answers.row_of(e)
            turn: dict[str, Any] = {"answer": played.texts[t][e], "finish": answers.rollout.finish_reasons[row]}
            if judged:
                turn["labels"] = _labels_dict(played.labels[t][e]) if t < len(played.labels) else None
            fb_row = played.feedback[t].row_of(e) if t < len(played.feedback) else None
            if fb_row is not None:
                parsed = played.parsed[t][e]
                fired = triggered(parsed)
                turn["feedback"] = {
                    "reply": played.feedback[t].rollout.texts[fb_row], "malformed": not parsed.valid,
                    "error": parsed.error, "unsafe": parsed.unsafe, "overrefuse": parsed.overrefuse,
                    "feedback": parsed.feedback, "reasoning": parsed.reasoning, "fired": fired, "skipped": False,
                    "revision_dropped": fired and t == last}
            elif t < t_max:  # it was due a feedback round, but the review prompt was dropped as too long
                turn["feedback"] = {"reply": "", "malformed": False, "error": "", "unsafe": None, "overrefuse": None,
                                    "feedback": "", "reasoning": "", "fired": False, "skipped": True,
                                    "revision_dropped": False}
            else:
                turn["feedback"] = None
            turns.append(turn)
        record: dict[str, Any] = {"prompt": example["prompt"]}
        if judged:
            record["harmful_prompt"] = bool(example["harmful_prompt"])
        record.update(turns=turns, revisions=last, final=played.texts[last][e])
        records.append(record)
    return records


def _flag(value: Any) -> str:
    return "true" if value else "false"


def _labels_text(labels: dict[str, bool] | None) -> str:
    if labels is None:
        return "judge failed"
    return " ".join(f"{k}={_flag(labels[k])}" for k in ("unsafe", "refusal", "overrefuse"))


def _body(text: str) -> str:
    """A generated text for display: without surrounding blank lines; a blank one said in words."""
    if not text.strip():
        return "(empty)" if not text else f"(blank: {len(text)} whitespace characters)"
    return text.strip("\r\n")


def format_record(record: dict[str, Any], *, title: str | None = None) -> str:
    """The text form of one `collaboration_records` record, for a person to read."""
    lines = [f"=== {title or 'prompt'}: {record['prompt']} ==="]
    for t, turn in enumerate(record["turns"]):
        header = "[conversation]" if t == 0 else f"[revision {t}]"
        if turn["finish"] == "length":
            header += " (cut at the token limit)"
        if "labels" in turn:
            header += f"  judge: {_labels_text(turn['labels'])}"
        lines += [header, _body(turn["answer"])]
        fb = turn["feedback"]
        if fb is None:
            continue
        if fb["skipped"]:
            lines.append("[feedback] skipped: the review prompt is longer than the feedback agent's max_prompt_len")
            continue
        if fb["malformed"]:
            head = f"[feedback] malformed ({fb['error']})"
        else:
            head = f"[feedback] unsafe={_flag(fb['unsafe'])} overrefuse={_flag(fb['overrefuse'])}"
        if fb["revision_dropped"]:
            head += " -> fired, but the revision context is too long: no revision"
        elif fb["fired"]:
            head += " -> fired: revision"
        else:
            head += " -> not fired: the answer stands"
        lines += [head, _body(fb["reply"])]
    revisions = record["revisions"]
    lines += [f"--- final ({revisions} revision{'' if revisions == 1 else 's'}) ---", _body(record["final"])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Running the collaboration
# ----------------------------------------------------------------------------------------------------


def collaborate(roles: dict[str, Any], prompts: Sequence[str], key: Any, *, t_max: int, greedy: bool,
                judge: Any = None, harmful: bool = False, batch_size: int = 16, counters: Any = None,
                feedback_prefix: str = "", feedback_stop: str = "") -> Iterator[dict[str, Any]]:
    """Plays WaltzRL on `prompts` with `roles` ("conversation", and "feedback" when `t_max` >= 1), in
    batches of `batch_size` prompts, and yields one `collaboration_records` record per prompt, in order.
    `judge` None labels nothing; `harmful` is every prompt's harmfulness as the judge sees it."""
    import jax

    from jaxalign.methods.waltzrl import prompts as prompts_lib
    from jaxalign.methods.waltzrl.episode import play
    from jaxalign.train import batching

    counters = batching.PromptCounters() if counters is None else counters
    conversation = roles["conversation"]
    r = conversation.spec.rollout
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        examples = [{"prompt": p, "harmful_prompt": bool(harmful)} for p in chunk]
        prompt_ids = []
        for p in chunk:
            ids = conversation.tokenizer.apply_chat_template(prompts_lib.conversation_messages(p),
                                                             add_generation_prompt=True)
            prompt_ids.append(batching.fit_prompt(ids, r.max_prompt_len, "truncate", counters))
        played = play(roles, judge if judge is not None else NoJudge(), examples, prompt_ids,
                      jax.random.fold_in(key, start), t_max=t_max, greedy=greedy, counters=counters,
                      feedback_prefix=feedback_prefix, feedback_stop=feedback_stop)
        yield from collaboration_records(played, t_max=t_max, judged=judge is not None)


def _rollout_settings(**fields):
    from jaxalign.config import RolloutSpec

    return RolloutSpec(prompts_per_step=1, samples_per_prompt=1, overlong_prompts="truncate", eval_max_new_tokens=0,
                       **fields)


def _check_model_spec(option: str, spec: str) -> None:
    from jaxalign.models.registry import ALIASES, RANDOM_PREFIX

    if spec in ALIASES or spec.startswith(RANDOM_PREFIX) or os.path.exists(spec):
        return
    raise UsageError(f"{option} {spec}: no such model directory or file")


def _model_roles(args, t_max: int) -> dict[str, RoleAgent]:
    """Role agents from `--conversation` / `--feedback` (one model loaded once when both name it)."""
    from jaxalign.models import load_model
    from jaxalign.rollout import Sampler

    wanted = {"conversation": args.conversation}
    if t_max >= 1:
        wanted["feedback"] = args.feedback
    for role, spec in wanted.items():
        _check_model_spec(f"--{role}", spec)
    new_tokens = {"conversation": args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                  "feedback": args.feedback_max_new_tokens or DEFAULT_FEEDBACK_MAX_NEW_TOKENS}
    loaded: dict[str, tuple[Any, Any]] = {}
    roles = {}
    for role, spec in wanted.items():
        if spec not in loaded:
            try:
                model, tokenizer = load_model(spec, role="sample")
            except (FileNotFoundError, ValueError) as e:
                raise UsageError(f"--{role} {spec}: {e}") from None
            if tokenizer is None:
                raise UsageError(f"--{role} {spec}: the model has no tokenizer, and chat needs text")
            longest = max(n for r, n in new_tokens.items() if wanted.get(r) == spec)
            max_prompt_len = min(args.max_prompt_len or DEFAULT_MAX_PROMPT_LEN,
                                 model.cfg.max_position_embeddings - longest)
            if max_prompt_len < 1:
                raise UsageError(f"--{role} {spec}: {longest} new tokens leave no room for a prompt in its "
                                 f"{model.cfg.max_position_embeddings} positions")
            loaded[spec] = (Sampler(model, tokenizer, max_prompt_len=max_prompt_len), tokenizer)
            del model  # the sampler holds its own copy of the weights
        sampler, tokenizer = loaded[spec]
        rollout = _rollout_settings(max_prompt_len=sampler.max_prompt_len, max_new_tokens=new_tokens[role],
                                    temperature=1.0 if args.temperature is None else args.temperature,
                                    top_p=1.0 if args.top_p is None else args.top_p,
                                    top_k=0 if args.top_k is None else args.top_k)
        roles[role] = RoleAgent(spec, sampler, tokenizer, argparse.Namespace(rollout=rollout))
    return roles


def _run_roles(args) -> tuple[dict[str, RoleAgent], Any]:
    """Role agents of a trained run (`--workdir`) and the run's `WaltzRLConfig` (t_max, feedback prefix and
    stop)."""
    from jaxalign.methods.base import build_method
    from jaxalign.runs import restored_agents, run_config

    if "://" not in args.workdir and not os.path.isdir(args.workdir):
        raise UsageError(f"--workdir {args.workdir} does not exist")
    if args.max_prompt_len is not None:
        raise UsageError("--max-prompt-len applies to --conversation/--feedback models; a run's agents keep "
                         "the run's rollout.max_prompt_len")
    config = run_config(args.workdir)
    if config.method != "waltzrl":
        raise UsageError(f"--workdir {args.workdir} is a {config.method!r} run; chat --waltz needs a waltzrl run")
    method = build_method(config)
    method.apply_stage(config.stage_at(config.train.steps)[1].overrides)
    agents = restored_agents(config, args.workdir)
    new_tokens = {"conversation": args.max_new_tokens, "feedback": args.feedback_max_new_tokens}
    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p), ("top_k", args.top_k))
                if v is not None}
    roles = {}
    for role, name in method.config.roles.items():
        agent = agents[name]
        changes = dict(sampling, overlong_prompts="truncate")
        if new_tokens[role]:
            changes.update(max_new_tokens=new_tokens[role], eval_max_new_tokens=new_tokens[role])
        rollout = dataclasses.replace(agent.spec.rollout, **changes)
        roles[role] = RoleAgent(name, agent.sampler, agent.tokenizer, argparse.Namespace(rollout=rollout))
    return roles, method.config


# ----------------------------------------------------------------------------------------------------
# The `jaxalign chat` command
# ----------------------------------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace, config_spec: Any = None, overrides: Any = None) -> int:
    """Plays the collaboration on `--prompt` / `--prompts-file` and prints every turn."""
    import jax

    from jaxalign.methods.waltzrl.judges import build_safety_judge
    from jaxalign.train import batching

    if not args.waltz:
        raise UsageError("only the WaltzRL collaboration is implemented: add --waltz (for plain chat with one "
                         "model use `jaxalign sample`)")
    models = args.conversation is not None or args.feedback is not None
    if models and args.workdir:
        raise UsageError("give either --conversation/--feedback models or --workdir, not both")
    if not models and not args.workdir:
        raise UsageError("chat --waltz needs --conversation MODEL --feedback MODEL, or --workdir DIR of a "
                         "trained waltzrl run")
    if args.t_max is not None and args.t_max < 0:
        raise UsageError(f"--t-max must be >= 0, got {args.t_max}")
    for option in ("max_new_tokens", "feedback_max_new_tokens", "max_prompt_len", "batch_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    if models:
        t_max = 1 if args.t_max is None else args.t_max
        if args.conversation is None:
            raise UsageError("--feedback needs --conversation MODEL too")
        if args.feedback is None and t_max >= 1:
            raise UsageError("--conversation needs --feedback MODEL too (or --t-max 0 for no feedback round)")
    prompts = read_prompts(args)
    if not prompts:
        raise UsageError(f"--prompts-file {args.prompts_file} has no prompts")
    protocol = {}
    if models:
        roles = _model_roles(args, t_max)
    else:
        roles, run_config = _run_roles(args)
        t_max = run_config.t_max if args.t_max is None else args.t_max
        protocol = dict(feedback_prefix=run_config.feedback_prefix, feedback_stop=run_config.feedback_stop)
        if t_max >= 1 and "feedback" not in roles:
            raise UsageError(f"the run in {args.workdir} has no feedback agent (waltzrl.t_max = 0); "
                             "use --t-max 0")
    judge = build_safety_judge("rule") if args.judge == "rule" else None
    counters = batching.PromptCounters()
    records = collaborate(roles, prompts, jax.random.key(args.seed), t_max=t_max, greedy=args.greedy, judge=judge,
                          harmful=args.harmful, batch_size=args.batch_size or 16, counters=counters, **protocol)
    for i, record in enumerate(records):
        if args.json:
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            if i:
                print()
            title = "prompt" if len(prompts) == 1 else f"prompt {i + 1}/{len(prompts)}"
            print(format_record(record, title=title), flush=True)
    if counters.truncated or counters.dropped:
        print(f"note: {counters.truncated} context(s) were cut to the agent's max_prompt_len (keeping the end), "
              f"{counters.dropped} dropped", file=sys.stderr)
    return 0


def add_chat_command(subparsers: "argparse._SubParsersAction", parents: Sequence[argparse.ArgumentParser]) -> None:
    """Adds `chat` to the `jaxalign` subcommands (WaltzRL's `Method.add_commands`)."""
    p = subparsers.add_parser(
        "chat", parents=list(parents), help="WaltzRL collaboration (--waltz): answer, feedback, revision, final",
        description="Runs WaltzRL's conversation/feedback collaboration on prompts and prints every turn. "
                    "Agents: --conversation MODEL --feedback MODEL (HF dir, .gguf or smollm2-135m-instruct; "
                    "the same model may play both), or --workdir DIR of a trained waltzrl run.")
    p.add_argument("--waltz", action="store_true", help="required: the WaltzRL collaboration (plain chat with "
                   "one model is `jaxalign sample`)")
    p.add_argument("--conversation", metavar="MODEL", help="the conversation agent's model")
    p.add_argument("--feedback", metavar="MODEL", help="the feedback agent's model")
    p.add_argument("--workdir", help="instead of the two models: a trained waltzrl run (its config and latest "
                   "checkpoint); its rollout settings apply unless the options below are given")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="one user prompt")
    group.add_argument("--prompts-file", help='JSONL: one string or {"prompt": ...} per line')
    p.add_argument("--t-max", type=int, default=None,
                   help="feedback rounds at most (default 1; with --workdir the run's waltzrl.t_max)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"the conversation agent's answer length (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--feedback-max-new-tokens", type=int, default=None,
                   help=f"the feedback agent's reply length (default {DEFAULT_FEEDBACK_MAX_NEW_TOKENS})")
    p.add_argument("--max-prompt-len", type=int, default=None,
                   help=f"longest context in tokens, revisions included; longer ones keep their end (default "
                        f"{DEFAULT_MAX_PROMPT_LEN}, within the model's positions; models only)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding for both agents")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default 1.0: off)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling (default 0: off)")
    p.add_argument("--judge", choices=("none", "rule"), default="none",
                   help="none (default): no labels; rule: also print the offline rule judge's labels of "
                        "every answer")
    p.add_argument("--harmful", action="store_true",
                   help="treat every prompt as harmful when judging (default: benign); the rule judge counts "
                        "any non-refusal to a harmful prompt as unsafe and a refusal of a benign one as "
                        "over-refusal")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of text")
    p.add_argument("--batch-size", type=int, default=16, help="prompts played together")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_chat)
