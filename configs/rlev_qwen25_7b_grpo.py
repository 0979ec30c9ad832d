"""RLEV paper setting with GRPO without group-std division (Qwen2.5-7B base, sarosavo/RLEV, TPU slice).

    jaxalign train --config=configs/rlev_qwen25_7b_grpo.py --config.model.spec=/path/to/Qwen2.5-7B \
        --config.rlev.judge_model=/path/to/judge --workdir=gs://bucket/runs/rlev_qwen25_7b_grpo

Dividing by the group std would cancel RLEV's per-prompt scale s(x) exactly (it is constant within a group),
so this preset subtracts the group mean only. Otherwise identical to configs/rlev_qwen25_7b_tpu.py: the same
RL setup (`RL_SETUP` there: KL k3 in the loss, token-mean aggregation, PPO clip 0.2), model verifier and data.
"""

import rlev_qwen25_7b_tpu


def get_config(arg=None):
    del arg
    return rlev_qwen25_7b_tpu.get_config("grpo")
