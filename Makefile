# The two commands the README opens with: `make quickstart` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-installs only when pyproject.toml changes (the package itself is installed editable, with every
# extra: the app, the competitor optimizers, Hydra's launchers and sweepers, the plotting tools).
STAMP := $(VENV)/.installed

.PHONY: install quickstart test bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[app,competitors,sweeps,bench,test]"
	touch $(STAMP)

install: $(STAMP)

# Trains a small MLP on scikit-learn's digits on the CPU (about a minute; no download).
quickstart: install
	$(BIN)/python -m lipschitz_lightning.train experiment=quickstart

# The whole suite, slow tests included (CI runs exactly this through .ci/run).
test: install
	$(BIN)/python -m pytest -q -ra

# Per-step cost of the LipschitzLR callback (ResNet20, random CIFAR-shaped data), printed as ratios.
bench: install
	$(BIN)/python scripts/bench_callback_overhead.py
