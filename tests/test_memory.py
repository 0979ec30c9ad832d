"""The per-device memory estimate (`jaxalign.memory`) against numbers worked out by hand, and the refusal of
a layout that cannot fit when the device's memory is known."""

import pytest

from jaxalign import memory
from jaxalign.config import ConfigError, apply_overrides, from_config_dict, load_config_file


def _tiny(**overrides):
    """configs/tiny_test.py (model random:tiny: vocab 256, hidden 64, MLP 128, 2 layers, 4 heads, 2 kv heads,
    head dim 16, tied embeddings, float32) on a mesh data=2 fsdp=2 tensor=2 of the 8 test devices."""
    values = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "rollout.prompts_per_step": 8,
              "rollout.samples_per_prompt": 4, "rollout.max_prompt_len": 8, "rollout.max_new_tokens": 8,
              **overrides}
    cd = apply_overrides(load_config_file("configs/tiny_test.py"), {k: str(v) for k, v in values.items()})
    return from_config_dict(cd, num_devices=8)


# Parameters per device, role "train" (embed over fsdp=2; heads, kv heads, mlp, vocab over tensor=2):
#   embedding (256, 64) vocab/2, embed/2        128*32       = 4096
#   final_norm (64,)                                         =   64
#   attn_norm, mlp_norm (2, 64) each                2*128    =  256
#   q_proj (2, 64, 4, 16) embed/2, heads/2      2*32*2*16    = 2048
#   k_proj, v_proj (2, 64, 2, 16) embed/2, kv/2 2*(2*32*1*16) = 2048
#   o_proj (2, 4, 16, 64) heads/2, embed/2      2*2*16*32    = 2048
#   gate, up (2, 64, 128), down (2, 128, 64)    3*(2*32*64)  = 12288
#   sum 22848 float32 values = 91392 bytes
TRAIN_PARAMS = 91392
# The sampler's copy, role "sample" (embed whole; tensor=2 as above):
#   embedding 128*64 = 8192, norms 64 + 256 = 320, q 2*64*2*16 = 4096, k + v 2*(2*64*1*16) = 4096,
#   o 2*2*16*64 = 4096, gate + up + down 3*(2*64*64) = 24576; sum 45376 float32 = 181504 bytes
SAMPLER = 181504
# KV cache: 8 prompts padded to 8 (a power of two, a multiple of data*fsdp = 4) x 4 samples = 32 rows, 8
# per device; slots = 8 prompt tokens rounded to 32 + 8 new tokens rounded to 32 = 64; kv heads 2/2 = 1;
#   2 (k, v) * 2 layers * 8 rows * 64 slots * 1 * 16 * 2 bytes (bfloat16) = 65536
KV_CACHE = 65536
# Activations: B = 32 samples / (1 mini * 1 micro * 2 data * 2 fsdp) = 8 rows of T = 8 + 8 = 16 tokens;
# float32 compute c = 4; per device H = 2, K = 1, F = 64, V = 128.
#   per token and layer: 4 * (4*64 + 3*(2 + 1)*16 + 3*64) + 2 * 16 * (4 + 4) = 4 * 592 + 256 = 2624
#   logits of the log-prob chunk (256 > T: 16 columns): 2 * 8 * 16 * 128 * 4 = 131072
#   remat off: 8 * 16 * 2 layers * 2624 + 131072 = 671744 + 131072 = 802816
#   remat on:  8 * 16 * (2 * 64 * 4 + 2624) + 131072 = 128 * 3136 + 131072 = 401408 + 131072 = 532480
ACTIVATIONS_FULL, ACTIVATIONS_REMAT = 802816, 532480


def test_single_agent_estimate_matches_hand_numbers():
    config = _tiny()  # grpo preset: KL in the loss, so a reference copy exists
    est = memory.estimate(config)
    assert est.mesh == (2, 2, 2)
    (agent,) = est.agents
    assert agent.name == "policy"
    assert agent.params == TRAIN_PARAMS
    assert agent.gradients == 2 * 91392  # accumulator + one micro-batch's gradient
    assert agent.optimizer == 2 * 91392  # AdamW's two moments in float32
    assert agent.reference == 91392
    assert agent.sampler == SAMPLER
    assert agent.kv_cache == KV_CACHE
    assert agent.activations_full == ACTIVATIONS_FULL
    assert agent.activations_remat == ACTIVATIONS_REMAT
    assert agent.critic == 0 and agent.frozen_base == 0
    # resident 91392 + 182784 + 91392 + 181504 = 547072; largest phase: gradients + activations (remat off)
    # 182784 + 802816 = 985600 > KV cache 65536; total 547072 + 985600 = 1532672
    assert est.total == 1532672


def test_remat_and_micro_batches_shrink_the_update_phase():
    # remat on: 547072 + 182784 + 532480 = 1262336
    assert memory.estimate(_tiny(**{"model.remat": True})).total == 1262336
    # micro_batches=2: B = 32 / (2 * 4) = 4 rows; remat off: 4 * 16 * 2 * 2624 + 2 * 4 * 16 * 128 * 4
    # = 335872 + 65536 = 401408; total 547072 + 182784 + 401408 = 1131264
    assert memory.estimate(_tiny(**{"algorithm.micro_batches": 2})).total == 1131264


def test_no_reference_without_kl_and_bfloat16_params():
    # reinforce_pp without KL (kl_coef 0): no reference. Parameters in bfloat16 halve params, gradients,
    # optimizer state and the sampler; compute in bfloat16 (c = 2):
    #   per token and layer 2 * 592 + 2 * 16 * (4 + 2) = 1184 + 192 = 1376
    #   remat off: 8 * 16 * 2 * 1376 + 131072 = 352256 + 131072 = 483328
    config = _tiny(**{"algorithm.advantage.kl_coef": 0.0, "algorithm.loss.kl_in": "none",
                      "model.param_dtype": "bfloat16", "model.dtype": "bfloat16"})
    (agent,) = memory.estimate(config).agents
    assert agent.reference == 0
    assert agent.params == 45696 and agent.optimizer == 91392 and agent.sampler == 90752
    assert agent.activations_full == 483328


def test_sampler_copy_in_the_compute_dtype_keeps_the_norms():
    # float32 parameters, bfloat16 compute: the sampler stores every weight but the norm scales in bfloat16.
    # Of SAMPLER's 45376 values the norms are 320 (float32); 45056 * 2 + 320 * 4 = 90112 + 1280 = 91392.
    (agent,) = memory.estimate(_tiny(**{"model.dtype": "bfloat16"})).agents
    assert agent.params == TRAIN_PARAMS and agent.reference == TRAIN_PARAMS
    assert agent.sampler == 91392


def test_two_agents_add_resident_memory_and_share_the_largest_phase():
    # Two identical agents: resident 2 * 547072 = 1094144, plus one largest phase 985600 = 2079744 (they
    # generate and update one after the other).
    cd = load_config_file("configs/tiny_test.py")
    values = {"mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2", "rollout.max_prompt_len": "8",
              "rollout.max_new_tokens": "8"}
    cd = apply_overrides(cd, values)
    with cd.unlocked():
        cd.agents = {"a": {}, "b": {"rollout": {"max_new_tokens": 40}}}
    est = memory.estimate(from_config_dict(cd, num_devices=8))
    a, b = est.agents
    assert (a.name, b.name) == ("a", "b")
    # b: 40 new tokens take 64 response slots, so 32 + 64 = 96 slots: 2 * 2 * 8 * 96 * 16 * 2 = 98304
    assert b.kv_cache == 98304
    assert est.total == 2 * 547072 + max(a.largest_phase, b.largest_phase)
    # b's T = 48: per token and layer 4 * 592 + 2 * 48 * 8 = 3136; 8 * 48 * 2 * 3136 + 2 * 8 * 48 * 128 * 4
    # = 2408448 + 393216 = 2801664
    assert b.activations_full == 2801664
    assert est.table().splitlines()[1].split() == ["a", "b"]  # one column per agent


def test_separate_critic_counts_its_parameters_and_moments():
    # ppo_gae_tiny: a separate ValueModel = the tiny backbone (tied, so nothing dropped) + a value head
    # (kernel [64] over fsdp = 32, scalar bias) = 22848 + 33 values; with two AdamW moments 3 * 22881 * 4
    cd = load_config_file("configs/ppo_gae_tiny.py")
    cd = apply_overrides(cd, {"mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2"})
    (agent,) = memory.estimate(from_config_dict(cd, num_devices=8)).agents
    assert agent.critic == 3 * 22881 * 4


def test_device_limit_is_read_from_memory_stats():
    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert memory.device_memory_limit(Device({"bytes_limit": 16 * 2**30, "bytes_in_use": 0})) == 16 * 2**30
    assert memory.device_memory_limit(Device(None)) is None  # a CPU


def test_a_layout_that_cannot_fit_is_refused_with_the_numbers(capsys):
    config = _tiny()
    with pytest.raises(ConfigError) as info:
        memory.check_memory(config, device_limit=1_000_000)
    message = str(info.value)
    assert "1.46 MiB per device" in message  # 1532672 bytes
    assert "0.95 MiB" in message  # the limit, 1000000 bytes
    assert "model.remat=true" in message and "algorithm.micro_batches" in message
    assert "--config.train.skip_memory_check=true" in message
    assert "total per device: 1.46 MiB" in capsys.readouterr().out  # the estimate was printed first
    # Enough memory, or the escape hatch: no error.
    assert memory.check_memory(config, device_limit=2_000_000).fits
    assert not memory.check_memory(config, device_limit=1_000_000, skip=True).fits


def test_train_refuses_before_loading_anything(tmp_path, monkeypatch, capsys):
    from jaxalign.cli import main

    monkeypatch.setattr(memory, "device_memory_limit", lambda device=None: 100_000)
    workdir = tmp_path / "run"
    args = ["train", "--config=configs/tiny_test.py", f"--workdir={workdir}", "--config.train.steps=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "per device but the device has 0.10 MiB" in err and "skip_memory_check" in err
    assert not workdir.exists() or not any(workdir.iterdir())  # nothing loaded, nothing written

    # The escape hatch: the run starts (the loop, stubbed here, is reached with the flag set).
    import types

    from jaxalign.train import loop

    started = []
    monkeypatch.setattr(loop, "train", lambda config, workdir, method: started.append(config)
                        or types.SimpleNamespace(stopped_early=False))
    assert main(args + ["--config.train.skip_memory_check=true"]) == 0
    assert [c.train.skip_memory_check for c in started] == [True]


# LoRA rank 4 on every projection of the tiny model, adapters float32, per device (role "train"; the rank
# axis is replicated):
#   q: A [2, 64, 4] embed/2 -> 2*32*4 = 256,  B [2, 4, 4, 16] heads/2 -> 2*4*2*16 = 256     512
#   k, v: A 256 each, B [2, 4, 2, 16] kv/2 -> 2*4*1*16 = 128 each                            768
#   o: A [2, 4, 16, 4] heads/2 -> 2*2*16*4 = 256,  B [2, 4, 64] embed/2 -> 2*4*32 = 256      512
#   gate, up: A 256 each, B [2, 4, 128] mlp/2 -> 2*4*64 = 512 each                          1536
#   down: A [2, 128, 4] mlp/2 -> 2*64*4 = 512,  B [2, 4, 64] embed/2 -> 256                  768
#   sum 4096 values = 16384 bytes
LORA_ADAPTERS = 16384
# The sampler's copy of the adapters (role "sample", embed whole): q 512 + 256, k and v 512 + 128 each,
# o 256 + 512, gate and up 512 + 512 each, down 512 + 512 = 5888 values = 23552 bytes
LORA_SAMPLER = 23552


def _lora(**overrides):
    return _tiny(**{"lora.rank": 4, "lora.base_dtype": "bfloat16", "lora.sampler": "adapters", **overrides})


def test_lora_trains_adapters_on_a_frozen_base_without_a_reference_copy():
    (agent,) = memory.estimate(_lora()).agents
    assert agent.params == LORA_ADAPTERS
    assert agent.gradients == 2 * 16384 and agent.optimizer == 2 * 16384  # adapters only
    assert agent.frozen_base == 22848 * 2  # the base's 22848 values per device in bfloat16
    assert agent.reference == 0  # the base with the adapters off
    assert agent.sampler == LORA_SAMPLER  # "adapters": applied in the forward on the shared base
    # resident 16384 + 45696 + 32768 + 0 + 23552 = 118400; + gradients 32768 + activations 802816
    assert memory.estimate(_lora()).total == 118400 + 32768 + 802816
    # A merged sampler holds its own copy of the weights in the compute dtype (float32): 45376 values * 4
    (merged,) = memory.estimate(_lora(**{"lora.sampler": "merged"})).agents
    assert merged.sampler == 181504


def test_two_lora_agents_hold_one_base():
    def two_agents(lora_rank):
        cd = load_config_file("configs/tiny_test.py")
        values = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "rollout.max_prompt_len": 8,
                  "rollout.max_new_tokens": 8, "lora.rank": lora_rank, "lora.base_dtype": "bfloat16",
                  "lora.sampler": "adapters"}
        cd = apply_overrides(cd, {k: str(v) for k, v in values.items()})
        with cd.unlocked():
            cd.agents = {"conversation": {}, "feedback": {}}
        return memory.estimate(from_config_dict(cd, num_devices=8))

    est = two_agents(4)
    first, second = est.agents
    assert first.frozen_base == 45696 and second.frozen_base == 0  # the second agent shares the first's base
    # resident 118400 + (118400 - 45696) = 191104; + the largest phase 32768 + 802816 = 835584
    assert est.total == 191104 + 835584
    # Full fine-tuning of the same two agents: 2 * 547072 + 985600
    assert two_agents(0).total == 2 * 547072 + 985600


def test_sft_run_has_no_kv_cache_and_trains_on_its_own_batches():
    cd = load_config_file("configs/tiny_test.py")
    cd = apply_overrides(cd, {"mesh.data": "2", "mesh.fsdp": "2", "mesh.tensor": "2"})
    with cd.unlocked():
        cd.sft = {"data": "embedded:gtalign_coldstart", "batch_size": 8, "max_len": 64, "optim": {}}
    (agent,) = memory.estimate(from_config_dict(cd, num_devices=8, kind="sft")).agents
    assert agent.kv_cache == 0 and agent.sampler == 0 and agent.reference == 0  # no generation, no KL term
    # B = 8 conversations / (1 micro-batch * 2 data * 2 fsdp) = 2 rows of T = 64 tokens:
    #   per token and layer 4 * 592 + 2 * 64 * (4 + 4) = 3392; logits 2 * 2 * 64 * 128 * 4 = 131072
    #   remat off: 2 * 64 * 2 * 3392 + 131072 = 868352 + 131072 = 999424
    assert agent.activations_full == 999424
