# The two commands the README opens with: `make quickstart` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-installs only when pyproject.toml changes (the package itself is installed editable, with every
# extra: the app, the competitor optimizers, Hydra's launchers and sweepers, the plotting tools).
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-fast bench benchmark report

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[app,competitors,sweeps,bench,test]"
	touch $(STAMP)

install: $(STAMP)

# Trains a small MLP on scikit-learn's digits on the CPU (20 epochs; no download).
quickstart: install
	$(BIN)/python -m lipschitz_lightning.train experiment=quickstart

# The whole suite, slow tests included (CI runs exactly this through .ci/run), one pytest-xdist
# worker per core; the modules that share an expensive fixture stay on one worker (xdist_group).
test: install
	$(BIN)/python -m pytest -q -ra -n auto --dist loadgroup

# The quick check while you work: every test not marked slow (no DDP, no long or subprocess-heavy
# runs, no wheel build). `make test` stays the complete suite.
test-fast: install
	$(BIN)/python -m pytest -q -ra -n auto --dist loadgroup -m "not slow"

# Per-step cost of the LipschitzLR callback (ResNet20, random CIFAR-shaped data), printed as ratios.
bench: install
	$(BIN)/python scripts/bench_callback_overhead.py

# A benchmark suite (conf/suite/: digits, mnist, cifar10, cifar10_long; or classical): every method x seed, raw
# results appended to benchmarks/results/ (resumes: runs already there are skipped). Real data from
# LIPSCHITZ_SHARED_DATA (default ../shared/data). Extra Hydra overrides: ARGS="seeds=[0] epochs=3".
SUITE ?= digits
CLASSICAL_SETS ?= breast_cancer,iris,digits,wine,diabetes,mnist
benchmark: install
ifeq ($(SUITE),classical)
	$(BIN)/python -m lipschitz_lightning.classical --multirun dataset=$(CLASSICAL_SETS) results_dir=benchmarks/results $(ARGS)
else
	$(BIN)/python -m lipschitz_lightning.bench suite=$(SUITE) $(ARGS)
endif

# docs/benchmarks.md and docs/img/*.png, generated from benchmarks/results/ (needs the bench extra).
report: install
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m lipschitz_lightning.bench.report
