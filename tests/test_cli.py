"""CLI parsing: config flags, overrides, and errors for bad input (no model is loaded here)."""

import json

import pytest

from jaxalign import cli
from jaxalign.commands import read_prompts


def test_split_config_args():
    config, overrides, rest = cli.split_config_args(
        ["train", "--config=configs/tiny_test.py:rloo", "--config.rollout.max_new_tokens", "4",
         "--config.seed=3", "--workdir=/tmp/x"])
    assert config == "configs/tiny_test.py:rloo"
    assert overrides == {"rollout.max_new_tokens": "4", "seed": "3"}
    assert rest == ["train", "--workdir=/tmp/x"]


def test_unknown_override_key_is_reported(capsys, tmp_path):
    code = cli.main(["train", "--config=configs/tiny_test.py", "--config.rollout.max_new_token=4",
                     f"--workdir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key --config.rollout.max_new_token" in err and "max_new_tokens" in err


def test_invalid_config_is_reported_before_loading_anything(capsys, tmp_path):
    code = cli.main(["train", "--config=configs/tiny_test.py", "--config.algorithm.estimator=ppo9",
                     f"--workdir={tmp_path}"])
    assert code == 2 and "known estimators" in capsys.readouterr().err


def test_missing_config_and_wrong_places(capsys, tmp_path):
    assert cli.main(["train", f"--workdir={tmp_path}"]) == 2
    assert "--config=configs/<name>.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", "--config=configs/tiny_test.py", "--workdir", "a", "--out", "b"])
    with pytest.raises(SystemExit):
        cli.main(["sample", "--model", "x"])  # needs --prompt or --prompts-file
    with pytest.raises(SystemExit):
        cli.main(["eval", "--config=configs/tiny_test.py"])  # needs --workdir or --model


def test_prompts_file_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"plain"\n{"prompt": "dict"}\n\n')
    args = cli.build_parser().parse_args(["sample", "--model", "m", "--prompts-file", str(path)])
    assert read_prompts(args) == ["plain", "dict"]
    path.write_text('{"text": 1}\n')
    with pytest.raises(cli.UsageError, match=":1: expected"):
        read_prompts(args)
    path.write_text("not json\n")
    with pytest.raises(cli.UsageError, match="not JSON"):
        read_prompts(args)
    json.dumps({})
