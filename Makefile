# Quick start: `make demo` runs the pipeline on the embedded demo dataset,
# `make test` runs the test suite. Both create the virtualenv on first use.

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# root installs system packages directly, anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-cluster lint bench clean browser slurm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --show-failed-logs

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
	$(BIN)/pytest

# the demo through profiles/slurm on a single-node Slurm cluster started on this machine
test-cluster: $(STAMP) slurm
	$(BIN)/pytest -m cluster

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint --directory $$(mktemp -d)

bench: $(STAMP)
	$(BIN)/python bench/bench_fmri.py
	$(BIN)/python bench/bench_frames.py
	$(BIN)/python bench/bench_caches.py
	$(BIN)/python bench/bench_reconstructors.py
	$(BIN)/python bench/bench_blurry.py --every 4
	$(BIN)/python bench/bench_videos.py
	$(BIN)/python bench/bench_evaluation.py
	$(BIN)/python bench/bench_dryrun.py

clean:
	rm -rf results logs benchmarks .snakemake resources/demo
