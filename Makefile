# fusion-model: `make demo` and `make test` work on a fresh machine; both set up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
# Folder holding the local CPU torch wheel (torch==2.13.0+cpu); override where it lives
# elsewhere, or set UV_EXTRA_INDEX_URL to a PyTorch CPU wheel index.
TORCH_FIND_LINKS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(TORCH_FIND_LINKS)),--find-links $(TORCH_FIND_LINKS),)
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_PRODUCTS ?= 2000
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-e2e test-production bench lint lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install the pinned lock file (no-op when up to date)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --python $(PY) $(FIND_LINKS) --compile-bytecode requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) --no-deps --compile-bytecode -e .
	@touch $(STAMP)

# openvino-telemetry (an openvino dependency) reports usage to Google Analytics from every
# process that imports openvino; left out, OpenVINO's converter uses its no-op stub.
NO_EMIT := --no-emit-package openvino-telemetry
lock: ## re-resolve requirements.lock (and infra/requirements.lock and infra/mlflow.lock, the images' subsets) from pyproject.toml
	@test -x $(VENV)/bin/uv || $(MAKE) setup
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra deploy --python-version 3.11 \
		$(FIND_LINKS) $(NO_EMIT) -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra deploy --python-version 3.11 \
		$(FIND_LINKS) $(NO_EMIT) -c requirements.lock -o infra/requirements.lock
	$(VENV)/bin/uv pip compile infra/mlflow.in --python-version 3.11 -c requirements.lock \
		-o infra/mlflow.lock

demo: setup ## the whole platform end to end on embedded defaults (catalog, DAG, gate, ablation, search)
	DEMO_DIR=$(DEMO_DIR) DEMO_PRODUCTS=$(DEMO_PRODUCTS) bash scripts/demo.sh

test: setup ## run the default test suite (unit + integration on local backends)
	$(PY) -m pytest $(PYTEST_ARGS)

test-e2e: setup ## whole-platform runs: DAGs, airflow standalone, lifecycle, CLI, DDP, bad inputs, review page in Chromium
	bash infra/local/install-services.sh chromium
	$(PY) -m pytest -m e2e tests/integration tests/dags $(PYTEST_ARGS)

BENCH_DIR ?= runs/bench
bench: setup ## tests marked slow, throughput benchmark + ablation table (see benchmarks/RESULTS.md)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)
	$(VENV)/bin/fusion-model catalog synthetic --products 3000 --out $(BENCH_DIR)/synthetic
	$(PY) benchmarks/throughput.py --catalog $(BENCH_DIR)/synthetic
	$(PY) benchmarks/index_bench.py --products 100000 --lite-uri $(BENCH_DIR)/milvus.db
	$(VENV)/bin/fusion-model benchmark --catalog $(BENCH_DIR)/synthetic \
		--output $(BENCH_DIR)/synthetic.json --work-dir $(BENCH_DIR)/work \
		--models core,concat_no_ft,fusion_no_ft \
		train.cache_dir=$(BENCH_DIR)/cache

lint: setup ## ruff
	$(VENV)/bin/ruff check fusion_model tests benchmarks dags plugins

clean: ## remove the venv and generated demo data
	rm -rf $(VENV) $(DEMO_DIR)

test-production: setup ## production-mode tests: PostgreSQL, Redis + Celery workers, mlflow server, S3, Milvus standalone
	bash infra/local/install-services.sh postgres redis
	$(PY) -m pytest -m production tests/production $(PYTEST_ARGS)
