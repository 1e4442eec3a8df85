# `make demo` and `make test` each work on a fresh clone: they build .venv, install the pinned
# dependencies and fetch what data they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The benchmarks' own environment: the same pins plus CompressAI (requirements-bench.txt), so that
# its entropy models are timed beside ours; the package and its tests never see it.
BENCH_VENV  := .venv-bench
BENCH_BIN   := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: demo test fuzz lint format bench wheel clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qlatent data fetch mnist
	$(BIN)/qlatent demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# The tests run in one process per core (pytest-xdist), each on one thread: two single-thread
# processes use two cores better than one two-thread process for these small models
# (`make test TEST_WORKERS=0` runs them in one process).
TEST_WORKERS ?= auto

# pytest exits 5 when it collected no tests: that is a broken setup, not a pass.
test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The property-based hardening tests with many more (and fresh) examples than `make test` runs.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m fuzz tests

$(BENCH_STAMP): pyproject.toml requirements.lock requirements-bench.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/pip install --quiet --upgrade pip
	$(BENCH_BIN)/pip install --quiet -r requirements.lock
	$(BENCH_BIN)/pip install --quiet --no-deps -r requirements-bench.txt
	$(BENCH_BIN)/pip install --quiet --no-deps -e .
	touch $(BENCH_STAMP)

# Throughput numbers for results/; run on an otherwise idle machine (two threads each).
bench: $(BENCH_STAMP)
	$(BENCH_BIN)/qlatent bench lattice
	$(BENCH_BIN)/qlatent bench quantizers
	$(BENCH_BIN)/qlatent bench coding

# A wheel of the package alone in dist/, built from a fresh build folder: setuptools reuses
# build/lib otherwise, and a module deleted or renamed since would still ship.
wheel: $(STAMP)
	rm -rf build dist
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
