# Both targets do all their own set-up on a fresh machine: create .venv, install, run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/audioguard demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check schemas consumers services dlq tests
	$(BIN)/mypy

schemas: setup
	$(BIN)/audioguard schemas export

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
