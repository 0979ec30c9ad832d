"""RLEV paper setting with the RLOO estimator (Qwen2.5-7B base, sarosavo/RLEV, TPU slice).

    jaxalign train --config=configs/rlev_qwen25_7b_rloo.py --config.model.spec=/path/to/Qwen2.5-7B \
        --workdir=gs://bucket/runs/rlev_qwen25_7b_rloo

Identical to configs/rlev_qwen25_7b_tpu.py except for the estimator.
"""

import rlev_qwen25_7b_tpu


def get_config(arg=None):
    del arg
    return rlev_qwen25_7b_tpu.get_config("rloo")
