"""The `jaxalign` command at its boundaries, run as a user runs it (child processes): a resume that would
change the experiment is refused with every changed field listed (and accepted, recorded, with
--allow-config-change); a finished run is left as it is; bad input is one line on stderr with exit code 2
and no traceback, before anything is loaded; `--version` and `--help`; plain-text `sample` marks a cut
reply; `steer` warns and exits 3 when nothing could be steered; exports are readable like other files; the
demo's install is the runtime alone (no torch)."""

import concurrent.futures
import json
import os
import pathlib
import re
import stat
import subprocess
import sys

import pytest

from jaxalign import __version__, runs
from jaxalign.commands import EXIT_NO_RESULT, EXIT_USAGE

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env(cache_dir=None):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    if cache_dir is not None:  # later runs load the first run's compiled programs
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _jaxalign(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "jaxalign.cli", *map(str, args)], cwd=ROOT, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(done, *fragments):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EXIT_USAGE, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert re.match(r"jaxalign( \w+)?: error: ", lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# -- resume: the config guard and a finished run -------------------------------------------------------------


def _train_args(workdir, steps, *extra):
    return ("train", "--config=configs/tiny_test.py", f"--workdir={workdir}", f"--config.train.steps={steps}",
            "--config.train.eval_every=0", "--config.checkpoint.every=0", "--config.logging.progress=false", *extra)


def _records(workdir, kind):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["step"] for row in rows if row["kind"] == kind]


def test_resume_refuses_a_changed_experiment_and_a_finished_run_is_left_alone(tmp_path):
    workdir, env = tmp_path / "run", _env(tmp_path / "jax_cache")
    done = _jaxalign(*_train_args(workdir, 2), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _records(workdir, "train") == [1, 2] and _records(workdir, "eval") == [0, 2]
    metrics, config_json = (workdir / "metrics.jsonl").read_bytes(), (workdir / "config.json").read_bytes()

    # The same command again: nothing to do, no second final eval, exit 0.
    again = _jaxalign(*_train_args(workdir, 2), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished at step 2" in again.stderr
    assert (workdir / "metrics.jsonl").read_bytes() == metrics

    # Other settings: refused before anything is loaded, every changed field listed as old → new.
    changed = ("--config.optim.learning_rate=0.5", "--config.rollout.samples_per_prompt=2")
    refused = _jaxalign(*_train_args(workdir, 2, *changed), env=env)
    line = _assert_one_line_error(refused, "optim.learning_rate: 0.01 \u2192 0.5",
                                  "rollout.samples_per_prompt: 4 \u2192 2", "--allow-config-change", "new --workdir")
    assert "train.steps" not in line  # unchanged here; a changed length alone is allowed anyway
    assert "loading" not in refused.stdout + refused.stderr
    assert (workdir / "metrics.jsonl").read_bytes() == metrics and (workdir / "config.json").read_bytes() == config_json
    assert not (workdir / runs.HISTORY_FILE).exists()

    # Accepted explicitly, with one more step: recorded at the resume step, config.json is the config in force.
    accepted = _jaxalign(*_train_args(workdir, 3, *changed, "--allow-config-change"), env=env)
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "resumed from step 2" in accepted.stderr and "config change at step 2" in accepted.stderr
    assert _records(workdir, "train") == [1, 2, 3]
    history = [json.loads(line) for line in (workdir / runs.HISTORY_FILE).read_text().splitlines()]
    assert len(history) == 1 and history[0]["step"] == 2
    assert {c["field"]: (c["old"], c["new"]) for c in history[0]["changes"]} == {
        "optim.learning_rate": (0.01, 0.5), "rollout.samples_per_prompt": (4, 2), "train.steps": (2, 3)}
    in_force = runs.run_config(workdir)  # what `jaxalign eval/export --workdir` use
    assert in_force.optim.kwargs["learning_rate"] == 0.5 and in_force.rollout.samples_per_prompt == 2
    assert in_force.train.steps == 3


def _fake_run(tmp_path, raw, step, final_eval):
    """A run directory as the loop leaves it, without training: config.json, a checkpoint step, metrics."""
    workdir = tmp_path / "fake"
    (workdir / "checkpoints" / str(step)).mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(raw))
    rows = [{"step": 0, "kind": "eval", "eval/x": 0.0}] + [{"step": s, "kind": "train"} for s in range(1, step + 1)]
    if final_eval:
        rows.append({"step": step, "kind": "eval", "eval/x": 1.0})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return workdir


def _tiny(**overrides):
    from jaxalign.config import apply_overrides, from_config_dict, load_config_file

    cd = apply_overrides(load_config_file("configs/tiny_test.py"), {k: str(v) for k, v in overrides.items()})
    return from_config_dict(cd, num_devices=8)


def test_cadence_fields_may_change_on_resume_and_others_may_not(tmp_path):
    saved = _tiny(**{"train.steps": 4})
    workdir = _fake_run(tmp_path, dict(saved.raw), 4, final_eval=True)
    cadence = _tiny(**{"train.steps": 6, "train.eval_every": 2, "checkpoint.every": 1, "checkpoint.keep": 9,
                       "logging.progress": False, "logging.samples_every": 3})
    plan = runs.check_resume(cadence, workdir)
    assert plan.latest_step == 4 and not plan.finished
    assert {c.field for c in plan.changes} == {"train.steps", "train.eval_every", "checkpoint.every",
                                               "checkpoint.keep", "logging.progress", "logging.samples_every"}
    assert runs.check_resume(_tiny(**{"train.steps": 4}), workdir).finished
    assert runs.check_resume(_tiny(**{"train.steps": 3}), workdir).finished  # already past a lowered length
    for field, value in (("train.eval_examples", 4), ("seed", 1), ("rollout.temperature", 0.7),
                         ("model.spec", "random:smollm2-135m"), ("toy_token.target_below", 8)):
        with pytest.raises(runs.ConfigError, match=re.escape(field) + ": .* \u2192 "):
            runs.check_resume(_tiny(**{field: value}), workdir)
        assert runs.check_resume(_tiny(**{field: value}), workdir, allow_config_change=True).changes
    # A checkpoint at train.steps without the final eval (stopped between the two) is not finished yet.
    assert not runs.check_resume(saved, _fake_run(tmp_path / "b", dict(saved.raw), 4, final_eval=False)).finished
    # No checkpoint: nothing to resume, whatever config.json says.
    assert runs.check_resume(_tiny(seed=5), tmp_path / "new").latest_step is None


# -- bad input: one line, exit code 2, before anything is loaded ------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Every bad-input case run as its own `jaxalign` process (a few at a time)."""
    tmp = tmp_path_factory.mktemp("bad")
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a directory\n")
    full = tmp / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    cases = {
        "sample_model_path": ("sample", "--model", "no/such/model", "--prompt", "hi"),
        "train_model_spec": ("train", "--config=configs/tiny_test.py", "--config.model.spec=no/such/model",
                             f"--workdir={tmp / 'never'}"),
        "eval_model_alias": ("eval", "--config=configs/tiny_test.py", "--model", "smollm-9000"),
        "steer_model_gguf": ("steer", "--model", "no_such.gguf", "--prompt", "q", "--user-shift", "-1"),
        "judge_model": ("train", "--config=configs/rlev_smollm2_demo.py", "--config.rlev.verifier=model",
                        "--config.rlev.judge_model=no/such/judge", f"--workdir={tmp / 'never'}"),
        "variant": ("train", "--config=configs/rlev_smollm2_demo.py:nosuchvariant", f"--workdir={tmp / 'never'}"),
        "workdir_file": ("train", "--config=configs/tiny_test.py", f"--workdir={a_file}"),
        "eval_workdir_file": ("eval", f"--workdir={a_file}"),
        "export_out_file": ("export", "--workdir", str(tmp), "--out", str(a_file)),
        "export_out_full": ("export", "--workdir", str(tmp), "--out", str(full)),
        "override_key": ("train", "--config=configs/tiny_test.py", "--config.optim.learnin_rate=1",
                         f"--workdir={tmp / 'never'}"),
        "missing_option": ("train", "--config=configs/tiny_test.py"),
        "unknown_command": ("trian",),
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(cases, pool.map(lambda args: _jaxalign(*args, timeout=300), cases.values())))
    return tmp, results


@pytest.mark.parametrize("case, fragments", [
    ("sample_model_path", ("--model", "'no/such/model'", "the path does not exist", "accepted:",
                           "smollm2-135m-instruct", "random:<preset>")),
    ("train_model_spec", ("model.spec", "'no/such/model'", "the path does not exist", "accepted:")),
    ("eval_model_alias", ("'smollm-9000'", "no such path, alias or preset", "accepted:")),
    ("steer_model_gguf", ("--model", "no_such.gguf", "does not exist")),
    ("judge_model", ("rlev.judge_model", "'no/such/judge'", "does not exist")),
    ("variant", ("has no variant 'nosuchvariant'", "configs/rlev_smollm2_demo.py:rloo",
                 "configs/rlev_smollm2_demo.py:grpo", "configs/rlev_smollm2_demo.py:reinforce_pp")),
    ("workdir_file", ("a_file.txt is a file",)),
    ("eval_workdir_file", ("a_file.txt is a file",)),
    ("export_out_file", ("--out", "is a file")),
    ("export_out_full", ("--out", "non-empty directory")),
    ("override_key", ("unknown config key --config.optim.learnin_rate", "learning_rate")),
    ("missing_option", ("--workdir", "jaxalign train --help")),
    ("unknown_command", ("'trian'", "train")),
])
def test_bad_input_is_one_line_and_exit_code_2(bad_inputs, case, fragments):
    tmp, results = bad_inputs
    line = _assert_one_line_error(results[case], *fragments)
    if case == "variant":
        assert "_nokl" not in line  # the presets behind the variants are not what a user types
    assert not (tmp / "never").exists()  # nothing was created
    assert not results[case].stdout


def test_version_and_help():
    done = _jaxalign("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"jaxalign {__version__}"
    setup_version = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.strip().splitlines()[-1]
    assert setup_version == __version__
    for command, expected in (("train", ("--config FILE.py[:VARIANT]", "required", "--allow-config-change",
                                         "example")),
                              ("eval", ("--config", "--workdir", "example")),
                              ("sample", ("(default: 128)", "[cut: --max-new-tokens=N reached]", "example")),
                              ("export", ("--out", "example"))):
        done = _jaxalign(command, "--help")
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.split())
        for fragment in expected:
            assert fragment in text, (command, fragment)
    top = " ".join(_jaxalign("--help").stdout.split())
    assert "75" in top and "exit codes" in top


# -- sample's cut marker, steer's probe and exit code, export permissions ----------------------------------


def test_sample_marks_a_cut_reply_and_steer_exits_3_without_payoffs(tiny_chat_model_dir):
    done = _jaxalign("sample", "--model", tiny_chat_model_dir, "--prompt", "hi", "--max-new-tokens", "3",
                     "--greedy")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("[cut: --max-new-tokens=3 reached]")  # random weights: no early end

    steered = _jaxalign("steer", "--model", tiny_chat_model_dir, "--prompt", "Plan my trip", "--max-new-tokens",
                        "4", "--greedy", "--user-shift", "-2")
    assert steered.returncode == EXIT_NO_RESULT, steered.stderr[-3000:]
    assert "Traceback" not in steered.stderr
    assert "probe" in steered.stderr and "<payoff>" in steered.stderr  # the warning after the first reply
    reply = json.loads(steered.stdout)
    assert reply["error"] and reply["steered"] is None


def test_exported_files_are_readable_like_new_files(tiny_chat_model_dir):
    umask = os.umask(0)
    os.umask(umask)
    names = sorted(os.listdir(tiny_chat_model_dir))
    assert "model.safetensors" in names and "config.json" in names
    for name in names:
        mode = stat.S_IMODE(os.stat(os.path.join(tiny_chat_model_dir, name)).st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


# -- packaging: the demo installs the runtime only -----------------------------------------------------------


def _runtime_requirements() -> list[str]:
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "INSTALL_REQUIRES":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no INSTALL_REQUIRES list")


def _closure(requirements: list[str]) -> set[str]:
    """The distributions a runtime-only install brings: the requirements and, recursively, theirs (without
    extras, markers evaluated here), read from the installed packages' metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            pass  # not installed here (an optional platform dependency): it has no dependencies to follow
    return seen


def test_the_demo_install_is_the_runtime_without_torch():
    runtime = _closure(_runtime_requirements())
    assert {"jax", "flax", "transformers", "orbax-checkpoint"} <= runtime
    assert not runtime & {"torch", "pytest", "pytest-xdist"}, sorted(runtime & {"torch", "pytest", "pytest-xdist"})
    assert "torch" in _closure(_runtime_requirements() + ["torch"])  # the walk does see torch where it is required

    def make_dry_run(target):
        done = subprocess.run(["make", "-n", target, "VENV=/nonexistent/venv"], cwd=ROOT, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if "pip install" in line]

    demo = make_dry_run("demo")
    assert demo and not any("[test]" in line for line in demo), demo
    assert any(re.search(r"-e \.(\s|$)", line) for line in demo), demo
    assert any("'.[test]'" in line for line in make_dry_run("test"))
