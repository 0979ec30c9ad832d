"""jaxalign: RL post-training for alignment (RLEV, GTAlign, WaltzRL) in JAX/Flax."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

# Tested on Python 3.11 (jax 0.10.2 / flax 0.12.8) and Python 3.12 (jax 0.11.2 / flax 0.12.10).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "numpy>=2.0",
    "ml-collections>=1.1.0",
    "transformers>=5.0",
    "tokenizers>=0.22",
    "safetensors>=0.6",
    "gguf>=0.19.0",
    "sentencepiece>=0.2",
    "protobuf>=5",
    "datasets>=4.0",
    "math-verify>=0.9.0",
    "tqdm>=4.66",
    "matplotlib>=3.9",
    "tensorboardX>=2.6",
]

EXTRAS = {
    # torch (CPU) is used by tests only, for parity checks against transformers.
    "test": ["pytest>=8", "pytest-xdist>=3.6", "torch==2.13.0"],
    "gpu": ["jax[cuda12]>=0.10.2,<0.12"],
    "tpu": ["jax[tpu]>=0.10.2,<0.12"],
    "tfds": ["tensorflow-datasets>=4.9"],
}

setup(
    name="jaxalign",
    version="0.1.0",
    description="RL post-training for alignment (RLEV, GTAlign, WaltzRL) on a sharded JAX/Flax core",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["jaxalign", "jaxalign.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["jaxalign=jaxalign.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
    ],
)
