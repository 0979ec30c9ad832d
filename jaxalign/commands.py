"""What the `jaxalign` subcommands share: the usage error, reading prompts, loading a text model and the
generation options. Methods that add their own subcommands (`Method.add_commands`) use these too."""

from __future__ import annotations

import argparse
import json
import pathlib


# Exit codes of the `jaxalign` command (also in the README's troubleshooting section).
EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error, with a traceback: a bug in jaxalign (or a crash below it)
EXIT_USAGE = 2  # bad input (options, config, model spec, paths): one line on stderr, nothing was changed
EXIT_NO_RESULT = 3  # the command ran but produced nothing usable (steer: no reply could be steered)
EXIT_STOPPED = 75  # train stopped by SIGTERM/SIGINT after saving a checkpoint: rerun the same command to resume
# (75 is EX_TEMPFAIL of sysexits.h, "try again later": what a preemption-aware scheduler should requeue)


class UsageError(ValueError):
    """Bad command-line input; printed without a traceback."""


def read_prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    path = pathlib.Path(args.prompts_file)
    if not path.is_file():
        raise UsageError(f"--prompts-file {path} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{number}: not JSON ({e})") from None
        if isinstance(row, str):
            prompts.append(row)
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
            prompts.append(row["prompt"])
        else:
            raise UsageError(f'{path}:{number}: expected a JSON string or {{"prompt": "..."}}')
    return prompts


def load_text_model(args, why: str):
    """`--model` with its tokenizer (loaded in the sampling layout); a usage error when it has none."""
    from jaxalign.models import load_model
    from jaxalign.models.registry import check_model_spec

    check_model_spec(args.model, what="--model")
    model, tokenizer = load_model(args.model, role="sample")
    if tokenizer is None:
        raise UsageError(f"model {args.model!r} has no tokenizer; {why}")
    return model, tokenizer


def sampling_params(args, **extra):
    """SamplingParams from the options `add_generation_args` defines, plus command-specific fields."""
    from jaxalign.rollout import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, greedy=args.greedy, **extra)


def add_generation_args(p: argparse.ArgumentParser, *, prompt_help: str, file_help: str, max_new_tokens: int) -> None:
    """The model, prompt source and sampling options shared by `sample` and `steer`."""
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="required: a local HF model directory, a .gguf file or smollm2-135m-instruct")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="(or --prompts-file) " + prompt_help)
    group.add_argument("--prompts-file", metavar="FILE",
                       help="(or --prompt) JSONL: one string or {\"prompt\": ...} per line" + file_help)
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                   help="longest reply in tokens; a longer one is cut")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (the sampling options are then unused)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: draw from the likeliest tokens up to this probability mass; 1 = all")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="draw from the k likeliest tokens; 0 = all")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="prompts generated together")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed of the sampling")
