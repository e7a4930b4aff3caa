# capinfer developer entry points. `make test` is the one command CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help setup binaries lint test unit demo cluster-up cluster-down image image-check image-lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# One distribution per process (docs/design.md, "Distributions"); the dev environment has
# them all, editable, in one resolve, so they find each other here, not on the index.
DISTRIBUTIONS := core operator sidecar node cli
EDITABLES := -e ./core -e ./operator -e ./sidecar -e ./node -e './cli[bench,triton]'

$(VENV)/.installed: pyproject.toml $(DISTRIBUTIONS:%=%/pyproject.toml) | $(BIN)/python
	$(BIN)/pip install --quiet $(EDITABLES) --group test
	touch $@

setup: $(VENV)/.installed ## create .venv with every capinfer distribution, editable, and the test tools

binaries: ## build the local control plane's binaries from source (cached)
	bash cli/capinfer/localcluster/build-cluster-binaries.sh

lint: setup ## ruff, ruff format, mypy --strict, import-linter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: setup ## the fast tests only (no cluster, no tritonserver)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test: lint binaries ## everything: lint, unit, integration against a real cluster and tritonserver
	$(BIN)/pytest $(PYTEST_ARGS)

demo: binaries ## capinfer end to end on this machine: cluster, operator, Triton, sidecar, plot
	$(BIN)/capinfer demo --out demo-output

cluster-up: binaries ## start the local cluster (prints the kubeconfig path)
	$(BIN)/capinfer cluster up

cluster-down: setup ## stop the local cluster
	$(BIN)/capinfer cluster down

image: ## build the image with buildah, on a stand-in base (root; image/build.sh)
	bash image/build.sh

image-lock: setup ## regenerate image/requirements.lock (pip-compile, hashes) after a dependency change
	bash image/lock.sh $(LOCK_ARGS)

image-check: setup binaries ## run the built image read-only as UID 65532: sidecar --help, operator on the local cluster
	$(BIN)/python image/check.py

clean: ## remove the virtualenv and caches in the repo (not the binary cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
