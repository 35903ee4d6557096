# Quick start: `make demo` runs the pipeline on the embedded demo dataset,
# `make test` runs the test suite. Both create the virtualenv on first use,
# with the versions of requirements.lock (`make lock` regenerates it).

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
# the newest versions pyproject allows, for make test-latest
LATEST := .venv-latest
# root installs system packages directly, anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-latest test-cluster lint lock bench gpu-check clean browser slurm

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[test]'
	touch $(STAMP)

# requirements.lock: what pyproject's ranges resolve to today for Python 3.11 on Linux x86_64
# (uv pip compile, every version the newest allowed), then the conda env files pinned from it
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet uv==$(UV_VERSION)
	.venv-lock/bin/uv pip compile pyproject.toml --extra test --extra keyframes --upgrade \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --annotation-style line --custom-compile-command "make lock" --output-file $(LOCK)
	$(PYTHON) -m pipeline sync-envs

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

# Debian's chromium, for the test that opens the HTML report headless
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "chromium could not be installed: the report's browser test will be skipped"; \
	fi

# Debian's Slurm and MUNGE, for the tests that run the demo on a single-node cluster
slurm:
	@if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; } || \
	  echo "slurm-wlm could not be installed: the Slurm tests will be skipped"; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pipeline versions --check
	$(BIN)/pytest

# the suite against the newest versions pyproject allows, in a virtualenv of its own: drift shows
# here before a new lock (or a user without one) meets it
test-latest: browser
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	$(LATEST)/bin/python -m pipeline versions
	$(LATEST)/bin/pytest

# the demo through profiles/slurm on a single-node Slurm cluster started on this machine
test-cluster: $(STAMP) slurm
	$(BIN)/pytest -m cluster

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --directory $$(mktemp -d)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

bench: $(STAMP)
	$(BIN)/python bench/bench_fmri.py
	$(BIN)/python bench/bench_frames.py
	$(BIN)/python bench/bench_caches.py
	$(BIN)/python bench/bench_reconstructors.py
	$(BIN)/python bench/bench_blurry.py --every 4
	$(BIN)/python bench/bench_videos.py
	$(BIN)/python bench/bench_evaluation.py
	$(BIN)/python bench/bench_dryrun.py

# every model stage at paper size with random weights on one CUDA GPU (skips without one)
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

clean:
	rm -rf results logs benchmarks .snakemake resources/demo
