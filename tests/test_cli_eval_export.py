"""`jaxalign eval` and `jaxalign export` on a tiny run's work directory, and the tokenizer/model vocabulary
check that fails before any training. The export is loaded by `transformers` (torch) and its logits are
compared with the restored checkpoint's."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign import cli
from jaxalign.config import ConfigError, apply_overrides, from_config_dict, load_config_file
from jaxalign import runs
from jaxalign.runs import restored_agents, run_config
from jaxalign.train.agents import check_vocab


def _config(**overrides):
    overrides = {"logging.progress": False, "train.eval_every": 0, **overrides}
    cd = load_config_file("configs/tiny_test.py")
    return from_config_dict(apply_overrides(cd, {k: str(v) for k, v in overrides.items()}))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    return workdir, runs.train(_config(**{"train.steps": 6}), workdir)


def test_eval_of_the_run_directory_reproduces_the_final_eval(run, capsys):
    workdir, result = run
    assert cli.main(["eval", f"--workdir={workdir}"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == pytest.approx(result.eval_after)
    assert metrics["eval/target_fraction"] != result.eval_before["eval/target_fraction"]  # trained weights


def _logits_jax(model, tokens_bt):
    from jaxalign.models import causal_attention_mask, positions_from_mask

    valid = jnp.ones(tokens_bt.shape, bool)
    hidden, _ = model(jnp.asarray(tokens_bt), positions_from_mask(valid), causal_attention_mask(valid))
    return np.asarray(model.unembed(hidden))


def test_export_loads_in_transformers_with_the_checkpoint_logits(run, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    workdir, _ = run
    out = tmp_path / "hf"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 12))
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(tokens)).logits.numpy()

    agent = restored_agents(run_config(workdir), workdir)["policy"]
    trained = _logits_jax(nnx.merge(agent.graphdef, agent.state.params), tokens)
    np.testing.assert_allclose(hf_logits, trained, atol=2e-4, rtol=2e-4)
    # The export holds the trained weights, not the initial ones.
    from jaxalign.models import load_model

    initial, _ = load_model("random:tiny")
    assert np.abs(_logits_jax(initial, tokens) - hf_logits).max() > 1e-2


def _word_tokenizer(num_tokens):
    """A tiny word-level HF tokenizer: ids 0..num_tokens-1, '</s>' as eos, a minimal chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, num_tokens)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def test_tokenizer_larger_than_the_model_vocabulary_fails_before_training(tmp_path, capsys):
    from jaxalign.models import export_hf, load_model
    from jaxalign.models.tokenizer import Tokenizer

    model, _ = load_model("random:tiny")  # 256 embedding rows
    model_dir = tmp_path / "model"
    export_hf(model, Tokenizer(_word_tokenizer(300)), str(model_dir))
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match="300 tokens but the model's embedding has only 256 rows"):
        runs.train(_config(**{"model.spec": str(model_dir)}), workdir)
    assert not (workdir / "metrics.jsonl").exists() and not (workdir / "checkpoints").exists()
    code = cli.main(["train", "--config=configs/tiny_test.py", f"--config.model.spec={model_dir}",
                     f"--workdir={workdir}"])
    assert code == 2 and "300 tokens" in capsys.readouterr().err

    # The matching tokenizer passes the check.
    export_hf(model, Tokenizer(_word_tokenizer(256)), str(tmp_path / "ok"))
    loaded, tokenizer = load_model(str(tmp_path / "ok"))
    check_vocab(loaded.cfg, tokenizer, "ok")
    assert tokenizer.vocab_size == 256


def test_eval_and_export_of_a_shared_value_head_run(tmp_path, capsys):
    """With a value head on the policy's trunk the train state holds more than the policy; eval and export
    must restore the whole state and use the policy part alone."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    cd = load_config_file("configs/ppo_gae_tiny.py:shared")
    config = from_config_dict(apply_overrides(cd, {"logging.progress": "False", "train.steps": "2",
                                                   "train.eval_every": "0"}))
    workdir = tmp_path / "run"
    result = runs.train(config, workdir)
    capsys.readouterr()  # the run's own before/after table

    assert cli.main(["eval", f"--workdir={workdir}"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(result.eval_after)

    out = tmp_path / "hf"
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    agent = restored_agents(run_config(workdir), workdir)["policy"]
    assert set(agent.state.params) == {"policy", "value_head"}  # the head is in the state, not the export
    tokens = np.random.default_rng(1).integers(0, 256, size=(2, 10))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor(tokens)).logits.numpy()
    trained = _logits_jax(nnx.merge(agent.graphdef, agent.policy_params), tokens)
    np.testing.assert_allclose(hf_logits, trained, atol=2e-4, rtol=2e-4)
