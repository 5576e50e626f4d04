# dynanoise: `make serve` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
SERVE_STAMP := $(VENV)/.stamp-serve
DEV_STAMP   := $(VENV)/.stamp-dev

.PHONY: serve test test-fast lint fuzz load bench bench-venv bench-venvs audit container-smoke compose-e2e clean help

help:
	@echo "make serve   create .venv, install the serving dependencies, start on :8000"
	@echo "make test    install serving + audit + dev dependencies, run the test suite"
	@echo "make test-fast  the suite without the tests marked slow (under 2 minutes)"
	@echo "make lint    ruff, mypy, hadolint, compose config, pip-audit"
	@echo "make fuzz    schemathesis against the OpenAPI schema (200 examples per operation)"
	@echo "make load    60 s load test, 64 clients, several keyed tenants"
	@echo "make audit   privacy audit of the digits model (report in reports/digits)"
	@echo "make bench   benchmarks: python -m bench, results in reports/bench-<UTC time> (BENCH_ARGS=--out bench:"
	@echo "             the committed bench/README.md; --quick: reports/bench-quick)"
	@echo "make bench-venvs  the peers' venvs (KServe, MLServer, LitServe, BentoML) in bench/.venvs/"
	@echo "make container-smoke  build the image (local base image if none can be pulled), run and check it"
	@echo "make compose-e2e  compose stack (stand-ins from Debian packages) through nginx: failover, scrape, dashboard"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml setup.py $(wildcard service/defense/*.c) | $(BIN)/python
	$(PIP) install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml setup.py $(wildcard service/defense/*.c) | $(BIN)/python
	$(PIP) install --quiet -e '.[audit,dev]'
	touch $@ $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/dynanoise serve --host $${DYNANOISE_HOST:-0.0.0.0} --port $${DYNANOISE_PORT:-8000}

test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/mypy
	bash scripts/lint_deploy.sh
	$(BIN)/python scripts/audit_deps.py || [ $$? -eq 2 ]  # 2: pip-audit could not run (no network): not a finding

fuzz: $(DEV_STAMP)
	DYNANOISE_FUZZ_EXAMPLES=$${DYNANOISE_FUZZ_EXAMPLES:-200} DYNANOISE_FUZZ_REPORT=fuzz-report.json $(BIN)/python -m pytest tests/reliability/test_fuzz.py

load: $(DEV_STAMP)
	$(BIN)/python -m tests.load.loadtest --duration 60 --clients 64 --out load-report.json

audit: $(DEV_STAMP)
	$(BIN)/dynanoise audit --dataset digits --out reports/digits

bench: $(DEV_STAMP)  # the harness lives in bench/harness, outside the wheel
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-venvs:  # each peer of the comparison in its own environment (pinned versions: bench/harness/venvs.py)
	$(PYTHON) bench/harness/venvs.py $(PEERS)

bench-venv: bench-venvs  # its former name

container-smoke:  # needs root on Debian, or a running Docker engine
	bash scripts/container_smoke.sh

compose-e2e:  # needs root on Debian, or a running Docker engine, and Compose v2
	bash scripts/compose_e2e.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
