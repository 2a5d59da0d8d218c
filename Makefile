# hypermeta — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The offline data mirror beside the project, when there is one (HYPERMETA_DATA_MIRROR wins).
export HYPERMETA_DATA_MIRROR ?= $(wildcard $(abspath ../shared/data))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help install browser quick paper paper-check test test-fast lint format bench ui clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install pinned dependencies (once)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

quick: install ## run the whole pipeline on the quick profile (minutes, CPU)
	snakemake --cores all --config profile=quick

paper: install ## run the whole pipeline on the paper profile (one GPU, hours)
	snakemake --cores all --config profile=paper

# The experiments whose published scale fits a 2-core CPU (issue: about 90 min each).
PAPER_ON_CPU ?= cnn hypercnn maml_sine metasgd_sine hnet_split finetune_split ewc_split \
  si_split multitask_split hnet_permuted finetune_permuted ewc_permuted si_permuted \
  multitask_permuted

paper-check: install ## paper-scale runs that fit this CPU, kept under results/ (PAPER_ON_CPU=...)
	hypermeta paper-check $(PAPER_ON_CPU)

# Two pytest workers, one test file each at a time (a file's tests share its fixtures and
# run in order): the unit files run beside the integration ones, whose re-runs after an
# edit are DVC's, one stage at a time on one core.
PYTEST_WORKERS ?= 2
test: install browser ## run the test suite (unit + integration with real snakemake/dvc/mlflow)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

test-fast: install browser ## unit tests that train no model and run no pipeline (under a minute)
	$(PY) -m pytest -m "not integration and not slow"

# The report test opens reports/index.html in headless Chromium: installed here when
# missing and this is root (as on CI); otherwise one sentence says how.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  { echo "make: chromium is missing; install it: sudo apt-get install chromium"; exit 1; }

lint: install ## ruff lint and format check
	ruff check . && ruff format --check .

format: install ## ruff format and safe fixes
	ruff check --fix . && ruff format .

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed ## speed benchmarks (installs `higher` to compare against): tables, JSON in benchmarks/results/
	@set -e; for bench in benchmarks/bench_*.py; do echo "== $$bench"; $(PY) $$bench; done

ui: install ## MLflow UI on http://127.0.0.1:5000 for this project's runs
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000

clean: ## delete pipeline outputs (data, models, metrics, plots, reports, MLflow store)
	rm -rf data models metrics plots reports mlflow.db mlartifacts .snakemake
