# The README's two commands for a fresh machine: `make demo` and `make test`.
#
# ddjax needs Python >= 3.12 (jax >= 0.12). PYTHON, if not given, is the first of
# python3.12, python3.13, python3 and pyenv's 3.12+ that is new enough.
PYTHON ?= $(shell for p in python3.12 python3.13 python3 $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3; do \
  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null \
  && { echo $$p; break; }; done)
NO_PYTHON := ddjax needs Python >= 3.12 (jax >= 0.12): install one ('pyenv install 3.12', or your OS's python3.12 package) or pass PYTHON=/path/to/python3.12
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock | cksum | cut -d' ' -f1)
# The legacy stack (jax 0.5.3 + neural-tangents 0.6.5): only the `legacy_nt` kernel checks.
LEGACY_VENV ?= .venv-legacy
LEGACY_PY := $(LEGACY_VENV)/bin/python
LEGACY_STAMP := $(LEGACY_VENV)/.installed-$(shell cat requirements-legacy.lock | cksum | cut -d' ' -f1)
WORKDIR ?= workdirs/demo

.PHONY: setup setup-legacy lock demo demo-docs test test-default test-legacy test-fast bench-setup clean

# A venv of the pinned stack (requirements.lock, which installs ddjax itself editable).
# A venv left with an older Python is rebuilt.
$(STAMP): requirements.lock
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)"; exit 1; }
	@if test -x $(PY) && ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then \
	  echo "$(VENV) has Python < 3.12: rebuilding it"; rm -rf $(VENV); fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -r requirements.lock
	touch $(STAMP)

setup: $(STAMP)

$(LEGACY_STAMP): requirements-legacy.lock
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)"; exit 1; }
	test -x $(LEGACY_PY) || $(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_PY) -m pip install -q --upgrade pip
	$(LEGACY_PY) -m pip install -r requirements-legacy.lock
	# ddjax itself, without its default-stack requirements (jax >= 0.12).
	$(LEGACY_PY) -m pip install --no-deps -e .
	touch $(LEGACY_STAMP)

setup-legacy: $(LEGACY_STAMP)

# Both lock files from their ranges (requirements.txt + pyproject.toml, and
# requirements-legacy.txt), for Linux x86_64 and Python 3.12, with uv.
lock: setup
	$(PY) -m pip install -q uv
	$(PY) -m uv pip compile requirements.txt --python-version 3.12 -o requirements.lock
	$(PY) -m uv pip compile requirements-legacy.txt --python-version 3.12 -o requirements-legacy.lock

# The paper reproduced on the embedded default (mnist5k): MTT experts, 5 distillation
# methods + the random-real baseline, every analysis, and $(WORKDIR)/report.md with the
# computed claim table. <= 30 min on 2 CPU cores; re-running resumes where it stopped.
demo: setup
	$(PY) -m launch.reproduce --config=configs/reproduce.py:dataset=mnist5k,size=demo --workdir=$(WORKDIR)

# Copies a finished demo's report, figures and JSON (no caches, no checkpoints) to
# $(DOCS) (docs/demo/, the copy README.md shows; the Fashion-MNIST demo's is
# `make demo-docs WORKDIR=workdirs/demo_fashion DOCS=docs/demo_fashion`).
DOCS ?= docs/demo
demo-docs:
	test -f $(WORKDIR)/report.md || { echo "no $(WORKDIR)/report.md: run make demo first"; exit 1; }
	rm -rf $(DOCS) && mkdir -p $(DOCS)/analysis
	cp $(WORKDIR)/report.md $(WORKDIR)/claims.json $(WORKDIR)/timings.json $(WORKDIR)/config.json $(DOCS)/
	cp $(WORKDIR)/analysis/*.png $(WORKDIR)/analysis/*.json $(DOCS)/analysis/
	for d in $(WORKDIR)/distill/*/; do m=$$(basename $$d); mkdir -p $(DOCS)/distill/$$m; \
	  cp $$d/synthetic.png $$d/results.json $(DOCS)/distill/$$m/ 2>/dev/null || true; done

# Every test: the whole suite on the default stack, then the neural-tangents comparisons
# on the legacy stack (CI runs exactly this).
test: test-default test-legacy

test-default: setup
	$(PY) -m pytest tests -q -n 2 -m "not legacy_nt" --durations=30

test-legacy: setup-legacy
	$(LEGACY_PY) -m pytest tests/test_ntk.py tests/test_kip.py -q -n 2

test-fast: setup
	$(PY) -m pytest tests -q -x -m "not slow and not legacy_nt"

# Fashion-MNIST's four idx files (60,000 train / 10,000 test) from Debian's
# dataset-fashion-mnist, into /usr/share/datasets/fashion-mnist/, where ddjax looks first.
# Elsewhere: TFDS downloads it when online, or pass --config.data_dir=DIR (or
# DATA_DIR=DIR below) pointing at a directory that holds the four files.
FASHION_DIR := /usr/share/datasets/fashion-mnist
FASHION_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
.PHONY: fashion-mnist published-table published-table-seed published-table-docs
fashion-mnist:
	@missing=; for f in $(FASHION_FILES); do \
	  test -f $(FASHION_DIR)/$$f.gz || test -f $(FASHION_DIR)/$$f || missing="$$missing $$f"; done; \
	if [ -z "$$missing" ]; then echo "Fashion-MNIST is installed in $(FASHION_DIR)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "No apt-get here. Get Fashion-MNIST online through TFDS (ddjax does it by itself), or"; \
	  echo "copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz"; \
	  echo "and t10k-labels-idx1-ubyte.gz into a directory and pass --config.data_dir=DIR."; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y dataset-fashion-mnist; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo apt-get install -y dataset-fashion-mnist; \
	else \
	  echo "Installing dataset-fashion-mnist needs root: run 'sudo apt-get install dataset-fashion-mnist',"; \
	  echo "or get it online through TFDS, or pass --config.data_dir=DIR holding the four idx files."; exit 1; \
	fi

# ddjax beside the published Fashion-MNIST table (benchmarks/published_table.py): each run
# stops before ~9 minutes and the next one continues; table.md in TABLE_WORKDIR. A GPU job.
TABLE_WORKDIR ?= workdirs/published_table
DATA_DIR ?=
published-table: setup
	$(PY) -m benchmarks.published_table --workdir=$(TABLE_WORKDIR) $(if $(DATA_DIR),--data_dir=$(DATA_DIR))

# The committed evidence copy: seed a fresh workdir from it (rows it holds are kept, the
# rows still distilling resume from their checkpoint), and copy a workdir's rows back
# into it with the table of all rows (`--export_dir`, which refuses to drop a row).
TABLE_DOCS ?= docs/published_table
published-table-seed:
	mkdir -p $(TABLE_WORKDIR) && cp -rn $(TABLE_DOCS)/. $(TABLE_WORKDIR)/
published-table-docs: setup
	$(PY) -m benchmarks.published_table --workdir=$(TABLE_WORKDIR) --report_only --export_dir=$(TABLE_DOCS)

# Optional PyTorch references for the benchmarks (CPU torch, separate venv, no ddjax in
# it: any Python that has a CPU torch wheel, the default python3 here).
BENCH_PYTHON ?= python3
bench-setup:
	test -x .bench-venv/bin/python || $(BENCH_PYTHON) -m venv .bench-venv
	.bench-venv/bin/python -m pip install -r requirements-bench.txt

clean:
	rm -rf workdirs .pytest_cache
