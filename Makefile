# The README's two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
WORKDIR ?= workdirs/demo

.PHONY: setup demo test test-fast bench-setup clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default (mnist5k).
demo: setup
	$(PY) -m launch.train --config=configs/train.py --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest tests -q -n 2 --durations=15

test-fast: setup
	$(PY) -m pytest tests -q -x -m "not slow"

# Optional PyTorch references for the benchmarks (CPU torch, separate venv).
bench-setup:
	test -x .bench-venv/bin/python || $(PYTHON) -m venv .bench-venv
	.bench-venv/bin/python -m pip install -r requirements-bench.txt

clean:
	rm -rf workdirs .pytest_cache
