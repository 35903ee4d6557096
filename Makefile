# Quick start: `make demo` runs the pipeline on the embedded demo dataset,
# `make test` runs the test suite. Both create the virtualenv on first use.

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --show-failed-logs

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench
	$(BIN)/snakefmt --check Snakefile rules

bench: $(STAMP)
	$(BIN)/python bench/bench_fmri.py
	$(BIN)/python bench/bench_frames.py
	$(BIN)/python bench/bench_caches.py
	$(BIN)/python bench/bench_reconstructors.py
	$(BIN)/python bench/bench_blurry.py --every 4
	$(BIN)/python bench/bench_videos.py

clean:
	rm -rf results logs benchmarks .snakemake resources/demo
