# Spark pipeline. `make demo` runs the pipeline on the bundled sample; `make test` runs the tests.
# Both set everything up on a fresh machine (virtual environment, CPU torch, Universal Ctags).

VENV ?= .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export SPARK_STORAGE ?= $(CURDIR)/.spark_storage
export DAGSTER_MODULE_NAME ?= spark_pipeline.definitions
PYTEST_ARGS ?=
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000

.PHONY: setup demo sweep test lint bench ui clean

setup:
	@bash scripts/setup_env.sh
	@mkdir -p "$(DAGSTER_HOME)" "$(SPARK_STORAGE)"
	@cp -n dagster.yaml "$(DAGSTER_HOME)/dagster.yaml" 2>/dev/null || true

demo: setup
	$(PY) -m spark_pipeline demo

# The hyperparameter sweep on the active profile (the demo's 2 x 2 grid of tiny runs by default);
# SWEEP_CONFIG=my-sweep.yaml overlays configs/sweep.yaml.
sweep: setup
	$(PY) -m spark_pipeline sweep $(if $(SWEEP_CONFIG),--config $(SWEEP_CONFIG))

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check spark_pipeline spark_pipeline_tests benchmarks

# SpecMap's benchmark needs the labelled repositories checked out (see benchmarks/specmap_labels/):
# make bench SPECMAP_REPOS=DIR; without it the benchmark says what it needs and skips.
bench: setup
	$(PY) benchmarks/specmap_bench.py $(if $(SPECMAP_REPOS),--repos $(SPECMAP_REPOS))
	$(PY) benchmarks/corpus_bench.py
	$(PY) benchmarks/tokenize_bench.py
	$(PY) benchmarks/resume_bench.py
	$(PY) benchmarks/train_memory_bench.py
	$(PY) benchmarks/eval_memory_bench.py
	$(PY) benchmarks/outlier_noise_bench.py

# `dg dev` (webserver and daemon) finds the code location in pyproject.toml's [tool.dg]. DAGSTER_MODULE_NAME,
# exported above for the older `dagster` CLI, is left out: with it the webserver got two code targets and
# refused to start without a word. The port is a variable: make ui UI_PORT=3001
ui: setup
	@echo "Dagster UI on http://$(UI_HOST):$(UI_PORT) (Ctrl-C to stop)"
	env -u DAGSTER_MODULE_NAME $(VENV)/bin/dg dev -h $(UI_HOST) -p $(UI_PORT)

clean:
	rm -rf .spark_storage .dagster_home
