# Two commands set everything up on a fresh Debian machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imgpipe-installed
export PATH := $(PATH):/usr/sbin:/sbin

.PHONY: deps venv lint test test-fast demo bench fuzz clean

deps:
	@scripts/ensure-system-deps

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: deps $(STAMP)

lint: venv
	$(PY) -m ruff check imgpipe && $(PY) -m mypy imgpipe

test: venv lint
	$(PY) -m pytest -q -m "not bench"

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not bench"

demo: venv
	$(PY) -m imgpipe_dev.demo

# BENCH_ARGS: e.g. "--only startup" (start-up alone, a few seconds) or "--quick".
bench: venv
	$(PY) -m imgpipe_dev.bench $(BENCH_ARGS)
	$(PY) -m pytest -q -s -m bench

# FUZZ_CASES (200), FUZZ_SEED (0), FUZZ_CASE (one case, to reproduce), FUZZ_TARGETS (e.g. ext,xfs).
# Failing disks are kept in .fuzz/. At most 2 cases run at once.
fuzz: venv
	PYTHONPATH=tests/support $(PY) -m imgpipe_dev.fuzz

clean:
	-$(PY) -m imgpipe_dev.localcloud stop --state-dir .demo/cloud 2>/dev/null
	-$(PY) -m imgpipe_dev.localcloud stop --state-dir .demo/signed-cloud 2>/dev/null
	rm -rf .demo .bench .fuzz .pytest_cache
