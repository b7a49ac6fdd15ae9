# Every target does its own set-up: a .venv is created if missing and the package installed
# with the extras that target needs, so `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
CORE_STAMP := $(VENV)/.installed-core
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install test test-slow demo demo-docs bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@ $(CORE_STAMP)

# The demo needs only the core dependencies (matplotlib included), not the test extra's torch,
# scikit-learn and statsmodels (a fresh install took 44 s instead of 66 s, on a loaded machine).
$(CORE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $@

# The docs tools only read the source (griffe parses it, nothing is imported), so the docs
# extra does not need the dev extra.
$(DOCS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

install: $(STAMP)

# Two pytest processes by default (TEST_WORKERS=1 for one), each test file whole in one of them
# (--dist loadfile: a file's module fixtures are built once).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=25

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile

demo: $(CORE_STAMP)
	$(PY) experiments/vanishing_gradients.py

# The demo again, and its report and figures copied over docs/vanishing_gradients.md and
# docs/figures/: the one explicit way to refresh that page (`make demo` writes into results/ only).
demo-docs: $(CORE_STAMP)
	$(PY) experiments/vanishing_gradients.py --docs-dir docs

bench: $(BENCH_STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/modern.py
	$(PY) benchmarks/practitioner.py
	$(PY) benchmarks/long.py
	$(PY) benchmarks/inference.py

# The API reference site, into site/. Strict: a broken link, a missing page or an unresolved
# reference fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) results .pytest_cache site

# The GPU tests and benchmark in one process (at most 8 minutes on one H100), with the GPU
# machine's own python (jax with CUDA, flax, optax, chex, torch) and memcell from the working
# tree, no install. ARGS=--cpu-smoke checks the script on a CPU at tiny sizes (Pallas interpret
# mode; GPU_PYTHON=.venv/bin/python here), writing to /tmp instead of docs/benchmarks.md.
GPU_PYTHON ?= python
.PHONY: bench-gpu
bench-gpu:
	PYTHONPATH=. $(GPU_PYTHON) benchmarks/gpu.py $(ARGS)
