"""jaxalign: RL post-training for alignment (RLEV, GTAlign, WaltzRL) in JAX/Flax."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
# The version lives in one place: jaxalign/__init__.py (`jaxalign --version` prints it).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "jaxalign" / "__init__.py").read_text(), re.M).group(1)

# Supported = tested: Python 3.11 with jax 0.10.2 and flax 0.12.8, the set pinned in constraints.txt that the
# test suite runs on. The ranges below admit newer patch and minor releases of the same series; they are
# expected to work but are not tested (Python 3.12 and jax 0.11 have not been run).
# The runtime needs only these; `make demo` installs nothing else. Test-only packages are in EXTRAS["test"].
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
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
    "scipy>=1.14",  # `jaxalign compare`'s t distribution (jax requires it too)
    "tensorboardX>=2.6",
]

EXTRAS = {
    # torch (CPU) is used by tests only, for parity checks against transformers; `make test` installs it.
    # peft: the tests load jaxalign's exported LoRA adapters with it (the library never imports it).
    # nbclient and ipykernel: CI executes every notebook in colabs/ top to bottom in a real kernel.
    "test": ["pytest>=8", "pytest-xdist>=3.6", "torch==2.13.0", "peft==0.21.2", "nbclient>=0.11", "ipykernel>=7.4"],
    "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "tfds": ["tensorflow-datasets>=4.9"],
}

setup(
    name="jaxalign",
    version=VERSION,
    description="RL post-training for alignment (RLEV, GTAlign, WaltzRL) on a sharded JAX/Flax core",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # tested on 3.11 (see above)
    packages=find_packages(include=["jaxalign", "jaxalign.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["jaxalign=jaxalign.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
    ],
)
