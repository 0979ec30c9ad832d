"""LoRA adapters (`jaxalign.models.lora`): the forward pass against a NumPy merge of the weights and against
peft on tiny random Llama and Qwen2 checkpoints (PEFT adapter export and merged HF export), a train step
that moves only the adapters (with the chain-rule gradient of the full model), the sampler in both modes,
two agents on one shared base (device bytes counted), checkpoints of adapters only with an exact resume,
and config errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from flax import nnx

from test_models_hf import hf_logits, our_logits, save_random_hf_model
from test_train_step import CFG, make_batch, make_model

from jaxalign import runs
from jaxalign.algorithms.losses import LossConfig
from jaxalign.config import ConfigError, apply_overrides, from_config_dict, load_config_file
from jaxalign.models import get_preset, hf
from jaxalign.models import lora as lora_lib
from jaxalign.models.transformer import Transformer
from jaxalign.rollout import Sampler, SamplingParams
from jaxalign.train.batching import split_micro_batches
from jaxalign.train.checkpoint import StopSignal
from jaxalign.train.metrics import read_metrics
from jaxalign.train.state import init_train_state
from jaxalign.train.step import make_train_step

def with_random_adapters(model, seed=3, std=0.05):
    """The LoRA model with every adapter (B included) set to random values, so that B != 0 matters."""
    graphdef, adapters, base = lora_lib.split_lora(model)
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), base)


def numpy_merged(model):
    """A plain Transformer with W + (alpha / r) A B computed in NumPy, layer by layer, in our layout."""
    lora = lora_lib.lora_config_of(model)
    graphdef, state = nnx.split(lora_lib.merged_model(model))  # only for the tree; every weight is replaced
    adapters = model.layers.lora
    flat = dict(nnx.to_flat_state(state))
    for path, variable in flat.items():
        name = str(path[-1])
        owner = model.layers if path[0] == "layers" else model
        value = np.array(getattr(owner, name)[...])  # the LoRA model's own base weight (a copy)
        if path[0] == "layers" and name in lora.targets:
            a, b = np.asarray(getattr(adapters, f"{name}_a")[...]), np.asarray(getattr(adapters, f"{name}_b")[...])
            for layer in range(value.shape[0]):
                a_l = a[layer].reshape(-1, lora.rank)  # [in, r]
                b_l = b[layer].reshape(lora.rank, -1)  # [r, out]
                value[layer] = value[layer] + (lora.alpha / lora.rank) * (a_l @ b_l).reshape(value[layer].shape)
        flat[path] = variable.replace(jnp.asarray(value))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _batch(vocab, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(2, 12))
    valid = np.ones((2, 12), dtype=np.int64)
    valid[1, :3] = 0
    return tokens, valid


# ----------------------------------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------------------------------


def test_zero_b_first_forward_equals_base_and_adapters_equal_numpy_merge():
    cfg = get_preset("tiny", arch="qwen2", qkv_bias=True, num_layers=2)
    base = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens, valid = _batch(cfg.vocab_size)
    model = lora_lib.add_lora(base, lora_lib.LoraConfig(rank=4, alpha=8.0))
    # B = 0 at the start: the LoRA model is the base, exactly.
    np.testing.assert_array_equal(our_logits(model, tokens, valid), our_logits(base, tokens, valid))
    assert all(float(jnp.abs(b).max()) == 0 for _, b in model.layers.lora.stacked_weights().values())

    trained = with_random_adapters(model)
    adapter_logits = our_logits(trained, tokens, valid)
    assert np.abs(adapter_logits - our_logits(base, tokens, valid)).max() > 1e-2  # the adapters matter
    np.testing.assert_allclose(adapter_logits, our_logits(numpy_merged(trained), tokens, valid), atol=2e-5, rtol=1e-5)
    # The library's merge (used by the "merged" sampler and the HF export) gives the same weights.
    ours = dict(nnx.to_flat_state(nnx.state(lora_lib.merged_model(trained))))
    for path, variable in nnx.to_flat_state(nnx.state(numpy_merged(trained))):
        np.testing.assert_allclose(np.asarray(ours[path].get_value()), np.asarray(variable.get_value()), atol=1e-6)


def test_reference_is_the_base_graph_on_the_shared_base_state():
    model = with_random_adapters(lora_lib.add_lora(make_model(), lora_lib.LoraConfig(rank=2)))
    graphdef, adapters, base = lora_lib.split_lora(model)
    reference = nnx.merge(lora_lib.base_graphdef(model.cfg), base)
    tokens, valid = _batch(CFG.vocab_size)
    np.testing.assert_array_equal(our_logits(reference, tokens, valid), our_logits(make_model(), tokens, valid))
    assert reference.layers.q_proj[...] is model.layers.q_proj[...]  # the same buffer, not a copy


def test_dropout_only_in_the_adapter_path_and_deterministic_per_key():
    model = with_random_adapters(lora_lib.add_lora(make_model(), lora_lib.LoraConfig(rank=2, dropout=0.5)))
    tokens, valid = (jnp.asarray(x) for x in _batch(CFG.vocab_size))
    plain = model.hidden_states(tokens, valid)
    drop1 = model.hidden_states(tokens, valid, lora_dropout_key=jax.random.key(1))
    assert float(jnp.abs(drop1 - plain).max()) > 1e-4
    np.testing.assert_array_equal(drop1, model.hidden_states(tokens, valid, lora_dropout_key=jax.random.key(1)))
    # With B = 0 the adapters add nothing, dropped or not.
    fresh = lora_lib.add_lora(make_model(), lora_lib.LoraConfig(rank=2, dropout=0.5))
    np.testing.assert_array_equal(fresh.hidden_states(tokens, valid, lora_dropout_key=jax.random.key(1)),
                                  make_model().hidden_states(tokens, valid))


# ----------------------------------------------------------------------------------------------------
# Export: PEFT adapters and the merged HF model, against transformers + peft
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, targets, alpha", [
    ("llama", lora_lib.TARGETS, 16.0),
    ("qwen2", ("q_proj", "v_proj", "o_proj", "down_proj"), 6.0),  # qkv biases, tied embeddings
])
def test_peft_export_loads_in_peft_with_the_same_logits(arch, targets, alpha, tmp_path):
    from peft import PeftModel

    save_random_hf_model(arch, tmp_path / "base")
    base = hf.load_hf(str(tmp_path / "base"))
    model = with_random_adapters(lora_lib.add_lora(base, lora_lib.LoraConfig(rank=4, alpha=alpha, targets=targets)),
                                 std=0.1)
    hf.export_peft(model, str(tmp_path / "adapter"), base_model=str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, alpha, sorted(targets))

    tokens, valid = _batch(base.cfg.vocab_size)
    mask = valid.astype(bool)  # padding positions' logits are arbitrary in either library
    ours = our_logits(model, tokens, valid)[mask]
    torch_base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(torch_base, str(tmp_path / "adapter")).eval()
    assert np.abs(ours - our_logits(base, tokens, valid)[mask]).max() > 1e-2  # the adapters change the logits
    np.testing.assert_allclose(ours, hf_logits(peft_model, tokens, valid)[mask], atol=2e-4, rtol=0)

    hf.export_hf(model, None, str(tmp_path / "merged"))  # the whole model, adapters merged
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
    np.testing.assert_allclose(ours, hf_logits(merged, tokens, valid)[mask], atol=2e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Train step
# ----------------------------------------------------------------------------------------------------


def _sgd_step(graphdef, params, batch, frozen=None):
    step = make_train_step(graphdef, optax.sgd(1.0), LossConfig(aggregation="token_mean"))
    state = init_train_state(params, optax.sgd(1.0))
    new_state, _ = step(state, split_micro_batches(batch, 2), frozen=frozen)
    return new_state


def test_lora_step_changes_only_adapters_by_the_chain_rule_gradient():
    base_model = make_model()
    model = lora_lib.add_lora(base_model, lora_lib.LoraConfig(rank=2, alpha=4.0))
    graphdef, adapters, base = lora_lib.split_lora(model)
    base_before = jax.tree.map(np.asarray, base)
    adapters_before = jax.tree.map(np.asarray, adapters)
    batch = make_batch(base_model, "token_mean")

    state = _sgd_step(graphdef, adapters, batch, frozen=base)
    # Only adapters are trained and hold optimizer state; the base is untouched.
    variables = jax.tree.leaves(state.params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert variables and all(isinstance(v, nnx.LoRAParam) for v in variables)
    jax.tree.map(np.testing.assert_array_equal, base_before, jax.tree.map(np.asarray, base))

    # SGD with lr 1: update = -grad. With B = 0, dL/dB = scale * A^T dL/dW and dL/dA = 0, where dL/dW is
    # the full model's gradient at the same point (a plain, fully trained step of the base).
    full = _sgd_step(nnx.split(base_model)[0], nnx.split(base_model)[1], batch)
    scale = 4.0 / 2
    for target in lora_lib.TARGETS:
        w_grad = np.asarray(base_before["layers"][target][...]) - np.asarray(full.params["layers"][target][...])
        a = adapters_before["layers"]["lora"][f"{target}_a"][...]
        b_grad = adapters_before["layers"]["lora"][f"{target}_b"][...] - np.asarray(
            state.params["layers"]["lora"][f"{target}_b"][...])
        for layer in range(CFG.num_layers):
            a_l = a[layer].reshape(-1, 2)
            expected = scale * a_l.T @ w_grad[layer].reshape(a_l.shape[0], -1)
            np.testing.assert_allclose(b_grad[layer].reshape(2, -1), expected, atol=1e-5, rtol=1e-4)
        assert np.abs(b_grad).max() > 0
        np.testing.assert_array_equal(np.asarray(state.params["layers"]["lora"][f"{target}_a"][...]), a)


# ----------------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["adapters", "merged"])
def test_sampler_modes_sample_the_adapted_policy(mode):
    model = with_random_adapters(lora_lib.add_lora(make_model(), lora_lib.LoraConfig(rank=2)), std=0.3)
    sp = SamplingParams(max_new_tokens=6, greedy=True, stop_token_ids=(), include_eos=False)
    prompts = [[1, 2, 3], [4, 5]]
    sampler = Sampler(make_model(), max_prompt_len=8, cache_dtype=jnp.float32, lora_mode=mode)
    reference = Sampler(numpy_merged(model), max_prompt_len=8, cache_dtype=jnp.float32)
    expected = reference.generate(prompts, sp, jax.random.key(0))
    lora_sampler = Sampler(lora_lib.add_lora(make_model(), lora_lib.LoraConfig(rank=2)), max_prompt_len=8,
                           cache_dtype=jnp.float32, lora_mode=mode)
    before = lora_sampler.generate(prompts, sp, jax.random.key(0))
    plain = sampler.generate(prompts, sp, jax.random.key(0))
    np.testing.assert_array_equal(before.response_ids_np, plain.response_ids_np)  # B = 0: the base
    lora_sampler.update_params(nnx.state(model))
    got = lora_sampler.generate(prompts, sp, jax.random.key(0))
    np.testing.assert_array_equal(got.response_ids_np, expected.response_ids_np)
    np.testing.assert_allclose(got.logprobs_np, expected.logprobs_np, atol=1e-5)
    assert not np.array_equal(got.response_ids_np, before.response_ids_np)
    base_leaves = jax.tree.leaves(lora_lib.split_lora(model)[2])
    sampler_leaves = jax.tree.leaves(lora_sampler.params)
    shared = sum(any(x is y for y in sampler_leaves) for x in base_leaves)
    # "adapters" reads the base in place; "merged" holds its own copy of every weight.
    assert shared == (len(base_leaves) if mode == "adapters" else 0)


# ----------------------------------------------------------------------------------------------------
# Agents, checkpoints, config
# ----------------------------------------------------------------------------------------------------


def _two_agent_config(**overrides):
    cd = load_config_file("configs/two_agent_toy.py")
    overrides = {"logging.progress": False, "lora.rank": 4, **overrides}
    return from_config_dict(apply_overrides(cd, {k: str(v) for k, v in overrides.items()}))


def _device_bytes(tree, device) -> int:
    """Bytes of the distinct buffers `tree` holds on `device`."""
    seen, total = set(), 0
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", []):
            if shard.device == device and shard.data.unsafe_buffer_pointer() not in seen:
                seen.add(shard.data.unsafe_buffer_pointer())
                total += shard.data.nbytes
    return total


def _adapter_bytes(cfg, rank, targets):
    total = 0
    for target in targets:
        in_shape, _, out_shape, _ = lora_lib.target_dims(cfg, target)
        total += cfg.num_layers * rank * (int(np.prod(in_shape)) + int(np.prod(out_shape))) * 4
    return total


@pytest.mark.parametrize("mode", ["adapters", "merged"])
def test_two_lora_agents_hold_one_base(mode):
    from jaxalign.sharding import make_mesh
    from jaxalign.train.agents import build_agents

    config = _two_agent_config(**{"lora.sampler": mode, "lora.rank": 2, "lora.targets": "q_proj,v_proj"})
    agents = build_agents(config, make_mesh(data=-1))
    same = lambda x, y: all(p is q for p, q in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True))  # noqa: E731
    assert same(agents["a"].base_params, agents["b"].base_params)
    assert same(agents["a"].ref_params, agents["a"].base_params)  # the reference is the base (GRPO with KL)
    everything = [(a.state, a.base_params, a.ref_params, a.sampler.params) for a in agents.values()]
    device = jax.devices()[0]
    cfg = get_preset("tiny")
    base = cfg.num_params() * 4  # float32, every weight replicated on each data-parallel device
    adapters = _adapter_bytes(cfg, 2, ("q_proj", "v_proj"))
    # Per agent: adapters, two Adam moments and the sampler's copy of the adapters (+ a few scalars); in
    # "merged" the sampler holds a merged copy of the weights instead.
    per_agent = 4 * adapters if mode == "adapters" else 3 * adapters + base
    expected = base + 2 * per_agent
    total = _device_bytes(everything, device)
    assert expected <= total < expected + 256, (total, expected)
    if mode == "adapters":
        assert total < 1.1 * base  # two agents: about one base, not two (full fine-tuning: 10 bases)


def test_bfloat16_base_with_float32_adapters_and_a_float32_merged_sampler():
    from jaxalign.sharding import make_mesh
    from jaxalign.train.agents import build_agents

    cd = load_config_file("configs/tiny_test.py")
    config = from_config_dict(apply_overrides(cd, {"lora.rank": "2", "lora.base_dtype": "bfloat16"}))
    agent = build_agents(config, make_mesh(data=-1))["policy"]
    assert {x.dtype for x in jax.tree.leaves(agent.base_params)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(agent.state.params)} == {jnp.dtype(jnp.float32)}
    # The merged sampler keeps W + scale A B in float32: an update far below bfloat16's resolution survives.
    adapters = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), agent.state.params)
    agent.sampler.update_params(nnx.merge_state(agent.base_params, adapters))
    merged = agent.sampler.params["layers"]["q_proj"][...]
    base = agent.base_params["layers"]["q_proj"][...].astype(jnp.float32)
    assert merged.dtype == jnp.float32
    delta = np.asarray(merged - base)
    np.testing.assert_allclose(delta, 8.0 * 2 * 1e-6, rtol=1e-3)  # scale 16/2 times a rank-2 sum of 1e-3 * 1e-3


def _saved(workdir, step):
    return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")["agents"]


def test_checkpoints_hold_adapters_only_and_resume_is_exact(tmp_path, monkeypatch):
    overrides = {"train.steps": 3, "checkpoint.every": 1, "checkpoint.keep": 10, "train.eval_examples": 4,
                 "lora.dropout": 0.1}
    full = tmp_path / "full"
    runs.train(_two_agent_config(**overrides), full)
    saved = _saved(full, 3)
    cfg = get_preset("tiny")
    for name in ("a", "b"):
        params = saved[name]["params"]  # orbax keeps each variable as {"value": array}
        assert set(params) == {"layers"} and set(params["layers"]) == {"lora"}
        sizes = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(params))
        assert sizes == _adapter_bytes(cfg, 4, lora_lib.TARGETS)
        moved = max(float(np.abs(x["value"]).max()) for k, x in params["layers"]["lora"].items() if k.endswith("_b"))
        assert moved > 0  # B left zero: the adapters trained

    split, checks = tmp_path / "split", []
    monkeypatch.setattr(StopSignal, "should_stop", lambda self: checks.append(1) or len(checks) == 2)
    assert runs.train(_two_agent_config(**overrides), split).stopped_early
    monkeypatch.setattr(StopSignal, "should_stop", lambda self: False)
    runs.train(_two_agent_config(**overrides), split)

    def records(workdir):
        return [{k: v for k, v in r.items() if "time/" not in k and "perf/" not in k}
                for r in read_metrics(workdir) if r["kind"] == "train"]

    assert records(split) == records(full)
    jax.tree.map(np.testing.assert_array_equal, _saved(full, 3), _saved(split, 3))

    adapter_dir = tmp_path / "adapter"
    runs.export_checkpoint(full, adapter_dir, agent="b", adapter=True)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == "random:tiny"


@pytest.mark.parametrize("overrides, message", [
    ({"lora.rank": "-1"}, r"lora.rank must be an integer >= 0"),
    ({"lora.targets": "q_proj,qkv"}, r"lora.targets: unknown projection\(s\) \['qkv'\]; known: q_proj"),
    ({"lora.targets": ""}, r"lora.targets is empty"),
    ({"lora.alpha": "0"}, r"lora.alpha must be a number > 0"),
    ({"lora.dropout": "1.0"}, r"lora.dropout must be in \[0, 1\)"),
    ({"lora.base_dtype": "int8"}, r"lora.base_dtype='int8'; known: float32"),
    ({"lora.sampler": "fast"}, r"lora.sampler='fast'; known: merged, adapters"),
])
def test_config_errors_name_the_field(overrides, message):
    cd = load_config_file("configs/tiny_test.py")
    with pytest.raises(ConfigError, match=message):
        from_config_dict(apply_overrides(cd, {"lora.rank": "4", **overrides}))


def test_per_agent_lora_section_and_its_errors():
    cd = load_config_file("configs/two_agent_toy.py")
    with cd.unlocked():
        cd.agents.b.lora = {"rank": 8, "targets": ["q_proj", "v_proj"]}
    config = from_config_dict(cd)
    assert not config.agents["a"].uses_lora  # the top-level lora section: rank 0
    assert config.agents["b"].lora.rank == 8 and config.agents["b"].lora.targets == ("q_proj", "v_proj")
    assert config.agents["b"].lora.alpha == 16.0  # the rest from the top level
    with cd.unlocked():
        cd.agents.b.lora = {"rank": -2}
    with pytest.raises(ConfigError, match=r"agent 'b': lora.rank must be an integer >= 0"):
        from_config_dict(cd)
    with cd.unlocked():
        cd.agents.b.lora = {"rnk": 4}
    with pytest.raises(ConfigError, match=r"agents.b.lora: unknown field\(s\) \['rnk'\]"):
        from_config_dict(cd)


def test_export_adapter_of_a_full_fine_tuning_run_is_an_error(tmp_path):
    cd = load_config_file("configs/tiny_test.py")
    (tmp_path / "config.json").write_text(from_config_dict(cd).to_json())
    with pytest.raises(ConfigError, match=r"--adapter: agent 'policy' .* fully fine-tuned \(lora.rank=0\)"):
        runs.export_checkpoint(tmp_path, tmp_path / "out", adapter=True)
