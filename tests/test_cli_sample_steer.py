"""`jaxalign sample` and `jaxalign steer` end to end on the real SmolLM2 GGUF model."""

import json

from jaxalign import cli
from test_rollout_hf_parity import smollm2_gguf_path


def test_sample_with_a_stop_string_and_steer_without_a_payoff(tmp_path, capsys):
    path = smollm2_gguf_path()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps("Count from one to ten in words, separated by commas.") + "\n"
                       + json.dumps({"prompt": "Name three colours."}) + "\n")
    assert cli.main(["sample", "--model", path, "--prompts-file", str(prompts), "--greedy",
                     "--max-new-tokens", "24"]) == 0
    free = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["prompt"] for row in free] == ["Count from one to ten in words, separated by commas.",
                                               "Name three colours."]
    stop = free[0]["response"][5:9]  # four characters from inside the first response
    assert cli.main(["sample", "--model", path, "--prompts-file", str(prompts), "--greedy",
                     "--max-new-tokens", "24", "--stop", stop]) == 0
    stopped = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    end = free[0]["response"].find(stop) + len(stop)
    assert stopped[0]["response"] == free[0]["response"][:end] and stopped[0]["finish"] == "stop"
    if stop not in free[1]["response"]:
        assert stopped[1] == free[1]

    # A model without GTAlign's format: steer reports the missing payoff block instead of guessing, warns
    # after its first probe and exits 3 (nothing steered).
    assert cli.main(["steer", "--model", path, "--prompt", "How many legs does a spider have?", "--greedy",
                     "--max-new-tokens", "24", "--user-shift", "-2"]) == 3
    captured = capsys.readouterr()
    assert "payoff" in captured.err and "could be steered" in captured.err
    reply = json.loads(captured.out)
    assert reply["question"] == "How many legs does a spider have?"
    assert reply["error"] == "the reply has no complete <payoff> block" and reply["steered"] is None
    assert cli.main(["steer", "--model", path, "--prompt", "q"]) == 2  # no pricing shift given
    assert "--llm-shift" in capsys.readouterr().err
