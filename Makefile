# Two entry points for a fresh machine (see README):
#   make demo   set up .venv and run the main job on built-in data
#   make test   set up .venv and run the linters, the type checker and the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LINT_DIRS := $(wildcard src tests benchmarks experiments examples)

.PHONY: demo test lint test-long

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/contextual-loss demo --force   # --force: a second `make demo` overwrites the first one's files

lint: $(BIN)/.installed
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# The property-based suite with 25 times the examples and random draws (minutes; not in CI).
test-long: $(BIN)/.installed
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest tests/property
