"""RLEV paper setting with the RLOO estimator (Qwen2.5-7B base, sarosavo/RLEV, TPU slice).

    jaxalign train --config=configs/rlev_qwen25_7b_rloo.py --config.model.spec=/path/to/Qwen2.5-7B \
        --config.rlev.judge_model=/path/to/judge --workdir=gs://bucket/runs/rlev_qwen25_7b_rloo

Identical to configs/rlev_qwen25_7b_tpu.py except for the estimator: the same RL setup (`RL_SETUP` there: KL
k3 in the loss, token-mean aggregation, PPO clip 0.2), model verifier and data.
"""

import rlev_qwen25_7b_tpu


def get_config(arg=None):
    del arg
    return rlev_qwen25_7b_tpu.get_config("rloo")
