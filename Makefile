# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, run the cpu_default study, fit + plot + report
#   make test   create .venv, install, run the test suite (with a real local SLURM)
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROOT ?= $(CURDIR)/results/cpu_default
# CPU wheel pinned: a plain `torch` pulls a multi-GB CUDA build. GPU users: install your torch
# first (make install TORCH_SPEC=torch), the project's range accepts it.
TORCH_SPEC ?= torch==2.13.0
# Runs at once in the demo sweep (each with cpus/JOBS torch threads). 1 on a 2-core laptop: two
# 1-thread runs side by side were slower than one 2-thread run (benchmarks/README.md).
JOBS ?= 1
# Extra sweep overrides and analysis options, e.g. pass@k in the demo's report:
#   make demo DEMO_ARGS="'eval.pass_k=[1,5]'" ANALYZE_ARGS="--metric test_pass@5"
DEMO_ARGS ?=
ANALYZE_ARGS ?=

.PHONY: help install demo test test-fast test-slurm lint clean gpu-wheels

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create the virtual environment and install eightfold

demo: install  ## run the default study end to end: sweep, results table, fits, plots, report
	$(BIN)/eightfold-sweep sweeps/cpu_default.yaml --root $(ROOT) --jobs $(JOBS) $(DEMO_ARGS)
	$(BIN)/eightfold-analyze all $(ROOT) --out $(ROOT)/analysis $(ANALYZE_ARGS)
	@echo "results: $(ROOT)/runs  report: $(ROOT)/analysis/report.md"

test: install  ## the whole suite: lint, unit, end to end, and SLURM tests against a real local SLURM
	$(MAKE) lint
	$(BIN)/pytest -m "not slurm" -q
	$(MAKE) test-slurm

test-fast: install  ## everything but the SLURM tests
	$(BIN)/pytest -m "not slurm" -q

test-slurm: install  ## start a real single-node SLURM, run the tests marked slurm, stop it
	@partition=$$(bash scripts/start-slurm.sh) || { bash scripts/stop-slurm.sh; exit 1; }; \
	source "$${SLURM_CI_DIR:-/tmp/eightfold-slurm}/env"; \
	EIGHTFOLD_REQUIRE_SLURM=1 EIGHTFOLD_SLURM_PARTITION=$$partition timeout 1800 $(BIN)/pytest -m slurm -q; rc=$$?; \
	bash scripts/stop-slurm.sh; exit $$rc

gpu-wheels:  ## wheels the lent GPU image lacks, into .whl/ (benchmarks/gpu_check.sh; Python 3.12, x86-64)
	mkdir -p .whl && grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	    hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 hydra-submitit-launcher==1.2.0 cloudpickle PyYAML
	$(PY) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only: build the pure-Python wheel

lint: install  ## ruff: the lint rules and one code style (ruff format)
	$(BIN)/ruff check src analysis tests benchmarks scripts
	$(BIN)/ruff format --check src analysis tests benchmarks scripts

clean:  ## remove the environment and outputs
	rm -rf $(VENV) outputs multirun results .pytest_cache
