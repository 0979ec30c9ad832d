"""The `jaxalign` command: train, eval, export, sample, steer, bench. Heavy modules load inside each subcommand.

    jaxalign train --config=configs/rlev_smollm2_demo.py[:arg] --config.rollout.max_new_tokens=32 --workdir=DIR
    jaxalign sft --config=configs/<x>.py --workdir=DIR    (supervised fine-tuning on the config's `sft` section)
    jaxalign eval --workdir=DIR       (the run's saved config; or --config=... --model SPEC for a plain model)
    jaxalign export --workdir DIR --out HF_DIR [--agent NAME] [--adapter]   (--adapter: PEFT LoRA adapters)
    jaxalign sample --model smollm2-135m-instruct --prompt "What is 12 + 7?" --max-new-tokens 32 --greedy
    jaxalign steer --model DIR --prompt "Plan my trip" --user-shift -2     (GTAlign pricing steering)
    jaxalign bench {rollout,train}
    jaxalign compare RUN [RUN ...]      (final evals of runs, seeds grouped: mean ± sd)

Every error in the input (options, config, model spec, paths) is one line on stderr and exit code 2; a
traceback means a bug. Exit codes: `jaxalign.commands.EXIT_*` (0 done, 1 unexpected error, 2 bad input,
3 no result, 75 stopped by SIGTERM after saving: rerun to resume).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from typing import Sequence

from jaxalign import __version__
from jaxalign.commands import (EXIT_OK, EXIT_STOPPED, EXIT_USAGE, UsageError, add_generation_args, load_text_model,
                               read_prompts, sampling_params)


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


def _validated(cd, kind: str | None = None):
    """The typed config of a ConfigDict, with the method's own section and every model spec checked too
    (nothing is loaded). `kind` "sft": the config of a `jaxalign sft` run."""
    from jaxalign.config import from_config_dict
    from jaxalign.methods.base import build_method

    config = from_config_dict(cd, kind=kind)
    build_method(config)
    _check_model_specs(config)
    return config


def _check_model_specs(config) -> None:
    """Every model a run will load exists: each agent's `model.spec` and the method section's judge models
    (fields named `judge_model`/`*_model`)."""
    from jaxalign.models.registry import check_model_spec

    named = list(config.agents) != ["policy"]
    for name, agent in config.agents.items():
        check_model_spec(agent.model.spec, what=f"agents.{name}.model.spec" if named else "model.spec")
    for key, value in dict(config.method_config).items():
        if (key == "judge_model" or key.endswith("_model")) and isinstance(value, str) and value:
            check_model_spec(value, what=f"{config.method}.{key}")
    from jaxalign.train.sft import check_init_from

    for name, agent in config.agents.items():
        if agent.model.init_from:
            check_init_from(agent.model.init_from,
                            f"agents.{name}.model.init_from" if named else "model.init_from")


def _load_experiment(config_spec: str | None, overrides: dict[str, str], kind: str | None = None):
    from jaxalign.config import apply_overrides, load_config_file

    if not config_spec:
        raise UsageError("--config=configs/<name>.py[:arg] is required")
    return _validated(apply_overrides(load_config_file(config_spec), overrides), kind)


def cmd_train(args, config_spec, overrides) -> int:
    from jaxalign.distributed import maybe_initialize_distributed
    from jaxalign.runs import check_workdir, train

    check_workdir(args.workdir)
    maybe_initialize_distributed()  # before anything (config validation included) starts a jax backend
    config = _load_experiment(config_spec, overrides)
    result = train(config, args.workdir, allow_config_change=args.allow_config_change)
    return EXIT_STOPPED if result.stopped_early else EXIT_OK


def cmd_sft(args, config_spec, overrides) -> int:
    from jaxalign.distributed import maybe_initialize_distributed
    from jaxalign.runs import check_workdir, sft

    check_workdir(args.workdir)
    maybe_initialize_distributed()
    config = _load_experiment(config_spec, overrides, kind="sft")
    result = sft(config, args.workdir, allow_config_change=args.allow_config_change)
    return EXIT_STOPPED if result.stopped_early else EXIT_OK


def cmd_eval(args, config_spec, overrides) -> int:
    from jaxalign.runs import check_workdir, evaluate_checkpoint

    if args.workdir:
        check_workdir(args.workdir)
        if config_spec is not None:  # the run's checkpoint with another config: it must have one
            from jaxalign.train.checkpoint import saved_steps

            if not saved_steps(args.workdir):
                raise UsageError(f"--workdir {args.workdir} has no checkpoint to evaluate")
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
    from jaxalign.runs import check_export_dir, export_checkpoint

    check_export_dir(args.out)
    agent = export_checkpoint(args.workdir, args.out, agent=args.agent, adapter=args.adapter)
    what = "the LoRA adapters of agent" if args.adapter else "agent"
    print(f"exported {what} {agent!r} of {args.workdir} to {args.out}")
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
                if rollout.finish_reasons[i] == "length":
                    text += f"\n{CUT_MARKER.format(n=args.max_new_tokens)}"
                print(text if args.n == 1 else f"--- sample {i + 1} ({rollout.finish_reasons[i]}) ---\n{text}")
            else:
                print(json.dumps({"prompt": prompt, "response": text, "finish": rollout.finish_reasons[i]},
                                 ensure_ascii=False))
    return 0


# The line after a plain-text reply that --max-new-tokens cut (JSONL output has "finish": "length").
CUT_MARKER = "[cut: --max-new-tokens={n} reached]"


def cmd_bench(args, config_spec, overrides) -> int:
    if args.which == "rollout":
        from jaxalign.bench.rollout import main as bench_main
    else:
        from jaxalign.bench.train import main as bench_main
    return int(bench_main(args.bench_args) or 0)


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions and epilogs wrapped by paragraph, with indented lines (examples) kept as written; each
    option's default appended to its help unless the help already states it (or it is a flag or has none)."""

    def _fill_text(self, text, width, indent):
        import textwrap

        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith("  ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == [] or default is argparse.SUPPRESS
                or not action.option_strings or "default" in text.lower()):
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (`<prog>: error: <what> (see <prog> --help)`, exit code 2) and the
    help formatter above; subcommand parsers (the methods' too) are of this class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _examples(*lines: str) -> str:
    return "example" + ("s" if len(lines) > 1 else "") + ":\n" + "\n".join(f"  {line}" for line in lines)


def _add_config_options(p: argparse.ArgumentParser, required: bool) -> None:
    """`--config` and its overrides, in the help only: `split_config_args` takes them out of argv first."""
    group = p.add_argument_group("config")
    group.add_argument("--config", metavar="FILE.py[:VARIANT]",
                       help=("required: " if required else "") + "the experiment config file (configs/*.py), "
                       "optionally with a variant after ':' (an unknown one lists the valid ones)")
    group.add_argument("--config.SECTION.FIELD", metavar="VALUE", dest="_config_override",
                       help="override one field of the config, e.g. --config.train.steps=20 or "
                       "--config.optim.learning_rate=1e-5 (repeatable; an unknown field lists the fields there)")


def build_parser() -> argparse.ArgumentParser:
    from jaxalign.runs import HISTORY_FILE, RESUMABLE_FIELDS

    common = ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, metavar="LEVEL",
                        help="DEBUG, INFO (default), WARNING or ERROR; DEBUG also shows checkpointing internals")
    parser = ArgumentParser(
        prog="jaxalign", description="RL post-training for alignment in JAX.", parents=[common],
        epilog="exit codes: 0 done, 1 unexpected error (a traceback: a bug), 2 bad input (one line on stderr), "
               "3 no result (steer: nothing steered), 75 train stopped by SIGTERM/SIGINT after saving a "
               "checkpoint (rerun the same command to resume)\n\n" + _examples(
                   "jaxalign train --config=configs/tiny_test.py --workdir=/tmp/tiny", "jaxalign train --help"))
    parser.add_argument("--version", action="version", version=f"jaxalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = functools.partial(sub.add_parser, parents=[common])
    resumable = ", ".join(f + "*" if f.endswith(".") else f for f in RESUMABLE_FIELDS)

    p = add_parser(
        "train", help="train (or resume) a run",
        description="Trains the experiment of --config in --workdir, or resumes the run there from its latest "
                    "checkpoint. A resume may change only " + resumable + "; any other change of the config "
                    "stops it before anything is loaded, listing the changed fields, unless "
                    "--allow-config-change accepts them (recorded in <workdir>/" + HISTORY_FILE + "). A "
                    "finished run is left as it is; raise --config.train.steps to continue it.",
        epilog=_examples("jaxalign train --config=configs/rlev_smollm2_demo.py --workdir=runs/rlev_demo",
                         "jaxalign train --config=configs/tiny_test.py:rloo --config.train.steps=4 "
                         "--workdir=/tmp/tiny"))
    _add_config_options(p, required=True)
    p.add_argument("--workdir", required=True, metavar="DIR",
                   help="required: the run directory (new, or a run's to resume): config.json, checkpoints, "
                        "metrics.jsonl, samples.jsonl, report.png; a local path or gs://bucket/dir")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though config fields other than the run's length and cadence changed; "
                        f"the changes are logged and recorded in <workdir>/{HISTORY_FILE}")
    p.set_defaults(fn=cmd_train)

    p = add_parser(
        "sft", help="supervised fine-tuning on chat conversations (the config's sft section)",
        description="Supervised fine-tuning of the config's model on the conversations of its sft section: "
                    "next-token loss on the assistant turns only, held-out eval loss, checkpoints, metrics.jsonl "
                    "and report.png in --workdir, resumed from its latest checkpoint like train (the free fields "
                    "are sft.steps, sft.epochs, sft.eval_every, checkpoint and logging, and the sections SFT does "
                    "not use). jaxalign export and jaxalign eval --workdir work on the run; an RL run starts "
                    "from it with --config.model.init_from=DIR.",
        epilog=_examples("jaxalign sft --config=configs/gtalign_smollm2_demo.py --workdir=runs/gtalign_sft",
                         "jaxalign sft --config=configs/gtalign_smollm2_demo.py --config.sft.data=chats.jsonl "
                         "--config.sft.epochs=2 --workdir=/tmp/sft"))
    _add_config_options(p, required=True)
    p.add_argument("--workdir", required=True, metavar="DIR",
                   help="required: the run directory (new, or an SFT run's to resume)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though fields that change the fine-tuning changed; the changes are logged "
                        f"and recorded in <workdir>/{HISTORY_FILE}")
    p.set_defaults(fn=cmd_sft)

    p = add_parser(
        "eval", help="greedy eval of a checkpoint or model with the method's metrics",
        description="Greedy evaluation with the method's metrics, printed as JSON: of a run's latest checkpoint "
                    "(--workdir, with the run's config unless --config is given) or of a model (--config and "
                    "--model).",
        epilog=_examples("jaxalign eval --workdir=runs/rlev_demo",
                         "jaxalign eval --config=configs/rlev_smollm2_demo.py --model smollm2-135m-instruct"))
    _add_config_options(p, required=False)
    p.add_argument("--workdir", metavar="DIR",
                   help="evaluate this run's latest checkpoint (with its saved config unless --config)")
    p.add_argument("--model", metavar="SPEC",
                   help="or evaluate this model (a HF directory, a .gguf file, smollm2-135m-instruct); needs --config")
    p.set_defaults(fn=cmd_eval)

    p = add_parser(
        "export", help="write an agent's policy of a run's latest checkpoint as an HF model",
        description="Writes one agent's policy of a run's latest checkpoint as a HF model directory "
                    "(config.json, model.safetensors, tokenizer files) that transformers loads; LoRA adapters "
                    "are merged into the weights. With --adapter: the LoRA adapters alone as a PEFT adapter "
                    "directory (adapter_config.json, adapter_model.safetensors) for the run's base model.",
        epilog=_examples("jaxalign export --workdir runs/rlev_demo --out runs/rlev_demo_hf",
                         "jaxalign export --workdir runs/rlev_lora --out runs/rlev_lora_adapter --adapter"))
    p.add_argument("--workdir", required=True, metavar="DIR", help="required: the run directory")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="required: the HF model directory to write (new or empty)")
    p.add_argument("--agent", metavar="NAME", help="the agent to export (default: the run's only agent)")
    p.add_argument("--adapter", action="store_true",
                   help="write the LoRA adapters as a PEFT adapter directory (runs with lora.rank > 0)")
    p.set_defaults(fn=cmd_export)

    p = add_parser(
        "sample", help="sample completions from a model",
        description="Samples replies to chat prompts. With --prompt: the reply as plain text (a reply cut by "
                    f"--max-new-tokens ends with the line {CUT_MARKER.format(n='N')!r}); with --prompts-file: "
                    "one JSON line per sample with its finish reason (\"stop\" or \"length\").",
        epilog=_examples('jaxalign sample --model smollm2-135m-instruct --prompt "What is 12 + 7?" --greedy',
                         "jaxalign sample --model runs/rlev_demo_hf --prompts-file prompts.jsonl --n 4"))
    add_generation_args(p, prompt_help="one prompt (the chat template is applied); prints the completion",
                        file_help="; prints one JSON line per sample", max_new_tokens=128)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="a stop string (repeatable); the response ends with the first one generated")
    p.set_defaults(fn=cmd_sample)

    p = add_parser("bench", help="rollout or train-step benchmarks",
                   description="Benchmarks of the sampler (rollout) or the train step (train); the options after "
                               "the name go to the benchmark (see jaxalign bench rollout --help).",
                   epilog=_examples("jaxalign bench rollout --help", "jaxalign bench train"))
    p.add_argument("which", choices=("rollout", "train"), help="which benchmark")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(fn=cmd_bench)

    from jaxalign.compare import add_compare_command  # final evals of runs side by side

    add_compare_command(sub, [common])

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
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", force=True)  # imports may have logged
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
    if any(a in ("-h", "--help") for a in rest):  # help never needs --config
        config_spec, overrides = None, {}
    args = parser.parse_args(rest)
    _setup_logging(getattr(args, "log_level", "INFO"), parser)
    if (config_spec or overrides) and args.command not in ("train", "sft", "eval"):
        parser.error(f"--config is not an option of '{args.command}'")
    if args.command == "eval" and not (args.workdir or args.model):
        parser.error("eval needs --workdir DIR or --model SPEC")
    try:
        return args.fn(args, config_spec, overrides)
    except (UsageError, ConfigError) as e:
        message = " ".join(str(e).split())  # one line, whatever the message holds
        print(f"jaxalign {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
