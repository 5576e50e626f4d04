# dynanoise: `make serve` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
SERVE_STAMP := $(VENV)/.stamp-serve
DEV_STAMP   := $(VENV)/.stamp-dev

.PHONY: serve test lint fuzz load bench audit clean help

help:
	@echo "make serve   create .venv, install the serving dependencies, start on :8000"
	@echo "make test    install serving + audit + dev dependencies, run the test suite"
	@echo "make lint    ruff, mypy, hadolint, compose config, pip-audit"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[audit,dev]'
	touch $@ $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/dynanoise serve --host $${DYNANOISE_HOST:-0.0.0.0} --port $${DYNANOISE_PORT:-8000}

test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check service tests
	$(BIN)/ruff format --check service tests
	$(BIN)/mypy
	bash scripts/lint_deploy.sh

audit: $(DEV_STAMP)
	$(BIN)/dynanoise audit --dataset digits --out reports/digits

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
