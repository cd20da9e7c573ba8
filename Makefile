# cowatch developer commands. Needs only python3 (>= 3.11) and make: `install` fetches uv, uv builds .venv.
#   make run     the whole stack locally (embedded PostgreSQL unless DATABASE_URL is set)
#   make test    the whole suite (DATABASE_URL / REDIS_URL name servers to use; unset, it starts its own)
#   make test-fast  unit + API tests, the inner loop (under a minute)
# Programs pip cannot bring (nginx, redis-server, kubectl, promtool) are installed by `make test`/`make bench` when run as root with
# apt-get; elsewhere the tests that need a missing one are skipped with one line saying what to install.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV ?= uv
PYTHON3 ?= python3
BIN := .venv/bin
PY := $(BIN)/python
ARGS ?=
SDK_PROTO := sdk/python/src/cowatch_client/_proto/

# Finds uv (on PATH, or pip-installed as `python3 -m uv`), installing it for this user if it is missing.
define find_uv
if command -v $(UV) >/dev/null 2>&1; then uv="$(UV)"; \
elif $(PYTHON3) -m uv --version >/dev/null 2>&1; then uv="$(PYTHON3) -m uv"; \
else \
  echo "uv not found: installing it with pip" >&2; \
  $(PYTHON3) -m pip install --user --quiet uv 2>/dev/null \
    || $(PYTHON3) -m pip install --user --quiet --break-system-packages uv 2>/dev/null \
    || $(PYTHON3) -m pip install --quiet uv \
    || { echo "could not install uv; see https://docs.astral.sh/uv/getting-started/installation/" >&2; exit 1; }; \
  uv="$(PYTHON3) -m uv"; \
fi
endef

.PHONY: help install tools gen gen-check lint test test-fast run bench profile chaos up clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: ## create/refresh .venv from uv.lock (installs uv first if needed)
	@$(find_uv); $$uv sync --frozen --quiet

gen: install ## regenerate gen/, protos/google, the Python SDK's stubs, the TypeScript SDK's src/gen and web/dist (the last two need Node)
	$(PY) protos/generate.py
	$(PY) -m services.dev.k8s_assets  # deploy/k8s/base's copies of the descriptor set and the gateway configs

gen-check: gen ## fail if the committed generated code differs from a fresh `make gen`
	@git diff --exit-code --stat -- gen/ protos/google/ $(SDK_PROTO) sdk/typescript/src/gen/ web/dist/ deploy/k8s/base/ \
	  || { echo "generated code is stale: run 'make gen' and commit the result" >&2; exit 1; }
	@untracked="$$(git ls-files --others --exclude-standard -- gen/ protos/google/ $(SDK_PROTO) sdk/typescript/src/gen/ web/dist/)"; \
	if [ -n "$$untracked" ]; then \
	  echo "generated files not committed:" >&2; echo "$$untracked" >&2; exit 1; \
	fi

lint: install ## ruff, mypy, import boundaries (lint-imports), buf lint, buf format
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code --path protos/cowatch

tools: install ## install nginx, redis-server, pgbouncer, psql, kubectl, promtool for the tests if missing (root + apt-get), else say what to install
	@$(PY) -m tests.support.tools install \
	  || echo "tools: not installed; the tests that need them will be skipped" >&2

test: tools ## the whole suite; make test ARGS="-k booking -x" passes pytest arguments
	$(BIN)/pytest $(ARGS)

test-fast: install ## unit + API tests not marked slow (no e2e, fault tests or benchmark smoke run), the inner loop
	$(BIN)/pytest tests/unit tests/api -m "not slow" $(ARGS)

run: install ## the whole stack: PostgreSQL, migrations, services, worker, notification stand-in, Envoy
	$(PY) -m services.dev.run

bench: tools ## benchmarks (make bench QUICK=1 for a smoke run of every scenario, 1–2 min)
	$(if $(QUICK),QUICK=$(QUICK) )$(PY) -m tests.bench

profile: tools ## profile one benchmark scenario: make profile BENCH=B3 (py-spy; docs/performance.md)
	@test -n "$(BENCH)" || { echo "usage: make profile BENCH=B3 [ARGS=--native]" >&2; exit 2; }
	$(PY) -m tests.bench.profile $(BENCH) $(ARGS)

chaos: install ## fault scenarios against a real multi-process stack, one table (make chaos QUICK=1: short run)
	$(if $(QUICK),QUICK=$(QUICK) )$(PY) -m tests.chaos

up: ## the production shape in docker compose
	docker compose up --build

clean: ## remove caches and benchmark results (keeps .venv and the make-run data in .dev/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache tests/bench/results tests/chaos/results
	find . -path ./.venv -prune -o -type d -name __pycache__ -print0 | xargs -0 rm -rf

distclean: clean ## also remove .venv and .dev/ (the make-run database)
	rm -rf .venv .dev
