"""The `jaxalign` command: train, eval, export, sample, steer, bench. Heavy modules load inside each subcommand.

    jaxalign train --config=configs/rlev_smollm2_demo.py[:arg] --config.rollout.max_new_tokens=32 --workdir=DIR
    jaxalign eval --workdir=DIR       (the run's saved config; or --config=... --model SPEC for a plain model)
    jaxalign export --workdir DIR --out HF_DIR [--agent NAME]
    jaxalign sample --model smollm2-135m-instruct --prompt "What is 12 + 7?" --max-new-tokens 32 --greedy
    jaxalign steer --model DIR --prompt "Plan my trip" --user-shift -2     (GTAlign pricing steering)
    jaxalign bench {rollout,train}
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from typing import Sequence

from jaxalign.commands import UsageError, add_generation_args, load_text_model, read_prompts, sampling_params


def split_config_args(argv: Sequence[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """Pulls `--config=PATH[:arg]` and `--config.a.b=v` (or `--config.a.b v`) out of argv."""
    config, overrides, rest = None, {}, []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" or arg.startswith("--config=") or arg.startswith("--config."):
            name, eq, value = arg.partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value")
                value = argv[i + 1]
                i += 1
            if name == "--config":
                config = value
            else:
                overrides[name[len("--config."):]] = value
        else:
            rest.append(arg)
        i += 1
    return config, overrides, rest


def _validated(cd):
    """The typed config of a ConfigDict, with the method's own section checked too."""
    from jaxalign.config import from_config_dict
    from jaxalign.methods.base import build_method

    config = from_config_dict(cd)
    build_method(config)
    return config


def _load_experiment(config_spec: str | None, overrides: dict[str, str]):
    from jaxalign.config import apply_overrides, load_config_file

    if not config_spec:
        raise UsageError("--config=configs/<name>.py[:arg] is required")
    return _validated(apply_overrides(load_config_file(config_spec), overrides))


def cmd_train(args, config_spec, overrides) -> int:
    from jaxalign.distributed import maybe_initialize_distributed
    from jaxalign.runs import train

    maybe_initialize_distributed()  # before anything (config validation included) starts a jax backend
    config = _load_experiment(config_spec, overrides)
    result = train(config, args.workdir)
    return 0 if result.final_step >= 0 else 1


def cmd_eval(args, config_spec, overrides) -> int:
    from jaxalign.runs import evaluate_checkpoint

    if args.model:
        overrides = {**overrides, "model.spec": args.model}
    if config_spec is None and args.workdir:  # the run's own resolved config
        from jaxalign.config import apply_overrides
        from jaxalign.runs import run_config_dict

        config = _validated(apply_overrides(run_config_dict(args.workdir), overrides))
    else:
        config = _load_experiment(config_spec, overrides)
    metrics = evaluate_checkpoint(config, args.workdir)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def cmd_export(args, config_spec, overrides) -> int:
    from jaxalign.runs import export_checkpoint

    agent = export_checkpoint(args.workdir, args.out, agent=args.agent)
    print(f"exported agent {agent!r} of {args.workdir} to {args.out}")
    return 0


def cmd_sample(args, config_spec, overrides) -> int:
    import jax
    from tqdm.auto import tqdm

    from jaxalign.rollout import Sampler

    prompts = read_prompts(args)
    model, tokenizer = load_text_model(args, "sample needs text prompts")
    sp = sampling_params(args, n=args.n, stop_strings=tuple(args.stop))
    encoded = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
    sampler = Sampler(model, tokenizer, max_prompt_len=max(len(e) for e in encoded))
    key = jax.random.key(args.seed)
    for start in tqdm(range(0, len(encoded), args.batch_size), desc="sample", unit="batch",
                      disable=len(encoded) <= args.batch_size):
        chunk = encoded[start:start + args.batch_size]
        rollout = sampler.generate(chunk, sp, jax.random.fold_in(key, start))
        for i, text in enumerate(rollout.texts):
            prompt = prompts[start + i // args.n]
            if args.prompt is not None:  # one prompt on the command line: plain text for a person
                print(text if args.n == 1 else f"--- sample {i + 1} ({rollout.finish_reasons[i]}) ---\n{text}")
            else:
                print(json.dumps({"prompt": prompt, "response": text, "finish": rollout.finish_reasons[i]},
                                 ensure_ascii=False))
    return 0


def cmd_bench(args, config_spec, overrides) -> int:
    if args.which == "rollout":
        from jaxalign.bench.rollout import main as bench_main
    else:
        from jaxalign.bench.train import main as bench_main
    return int(bench_main(args.bench_args) or 0)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS,
                        help="DEBUG, INFO (default), WARNING or ERROR; DEBUG also shows checkpointing internals")
    parser = argparse.ArgumentParser(prog="jaxalign", description="RL post-training for alignment in JAX.",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "--config=configs/<name>.py[:arg] and --config.<section>.<field>=value overrides"
    add_parser = functools.partial(sub.add_parser, parents=[common])

    p = add_parser("train", help="train (or resume) a run", description=config_help)
    p.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics, report")
    p.set_defaults(fn=cmd_train)

    p = add_parser("eval", help="greedy eval of a checkpoint or model with the method's metrics",
                       description=config_help)
    p.add_argument("--workdir", help="evaluate this run's latest checkpoint (with its saved config unless --config)")
    p.add_argument("--model", help="or evaluate this model (HF dir, .gguf, smollm2-135m-instruct)")
    p.set_defaults(fn=cmd_eval)

    p = add_parser("export", help="write an agent's policy of a run's latest checkpoint as an HF model")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--agent", help="the agent to export (default: the run's only agent)")
    p.set_defaults(fn=cmd_export)

    p = add_parser("sample", help="sample completions from a model")
    add_generation_args(p, prompt_help="one prompt (the chat template is applied); prints the completion",
                         file_help="; prints one JSON line per sample", max_new_tokens=128)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="a stop string (repeatable); the response ends with the first one generated")
    p.set_defaults(fn=cmd_sample)

    p = add_parser("bench", help="rollout or train-step benchmarks")
    p.add_argument("which", choices=("rollout", "train"))
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)

    from jaxalign.methods import METHODS  # methods add their own subcommands (e.g. GTAlign's steer)

    for method_cls in METHODS.values():
        method_cls.add_commands(sub, [common])
    return parser


# Libraries whose INFO output (per-file checkpoint I/O, compiler notes) drowns the run's own messages.
_CHATTY_LOGGERS = ("absl", "orbax", "jax._src")


def _setup_logging(level_name: str, parser: argparse.ArgumentParser) -> None:
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        parser.error(f"--log-level {level_name!r}: use DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    if level > logging.DEBUG:
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    from jaxalign.config import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        config_spec, overrides, rest = split_config_args(argv)
    except UsageError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    _setup_logging(getattr(args, "log_level", "INFO"), parser)
    if (config_spec or overrides) and args.command not in ("train", "eval"):
        parser.error(f"--config is not an option of '{args.command}'")
    if args.command == "eval" and not (args.workdir or args.model):
        parser.error("eval needs --workdir DIR or --model SPEC")
    try:
        return args.fn(args, config_spec, overrides)
    except (UsageError, ConfigError) as e:
        print(f"jaxalign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
