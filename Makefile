# The README's two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
WORKDIR ?= workdirs/demo

.PHONY: setup demo demo-docs test test-fast bench-setup clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

# The paper reproduced on the embedded default (mnist5k): MTT experts, 5 distillation
# methods + the random-real baseline, every analysis, and $(WORKDIR)/report.md with the
# computed claim table. <= 30 min on 2 CPU cores; re-running resumes where it stopped.
demo: setup
	$(PY) -m launch.reproduce --config=configs/reproduce.py:dataset=mnist5k,size=demo --workdir=$(WORKDIR)

# Copies a finished demo's report, figures and JSON (no caches, no checkpoints) to
# docs/demo/, the copy README.md shows.
demo-docs:
	test -f $(WORKDIR)/report.md || { echo "no $(WORKDIR)/report.md: run make demo first"; exit 1; }
	rm -rf docs/demo && mkdir -p docs/demo/analysis
	cp $(WORKDIR)/report.md $(WORKDIR)/claims.json $(WORKDIR)/timings.json $(WORKDIR)/config.json docs/demo/
	cp $(WORKDIR)/analysis/*.png $(WORKDIR)/analysis/*.json docs/demo/analysis/
	for d in $(WORKDIR)/distill/*/; do m=$$(basename $$d); mkdir -p docs/demo/distill/$$m; \
	  cp $$d/synthetic.png $$d/results.json docs/demo/distill/$$m/ 2>/dev/null || true; done

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
