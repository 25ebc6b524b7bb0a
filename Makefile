# The two commands the README opens with.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test]"

quickstart: install
	$(BIN)/python -m lipschitz_lightning.train experiment=quickstart

test: install
	$(BIN)/python -m pytest -q -ra
