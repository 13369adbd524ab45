# Two commands set up a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA_DIR ?= $(HOME)/.local/share/outpost
PYTEST_ARGS ?=

.PHONY: run test lint format typecheck bench clean demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench,ray,batch,otel]'
	touch $(STAMP)

## run: install, initialise a node with defaults if needed, serve the bundled sample model
run: $(STAMP)
	$(BIN)/outpost init --data-dir $(DATA_DIR)
	exec $(BIN)/outpost run --data-dir $(DATA_DIR)

## test: install what the tests need and run the whole suite
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

LINTED := node federation models cli tests bench

## lint: ruff's rules, and the layout `make format` gives (it changes nothing; fails if it would)
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

## format: lay every file out as `make lint` expects (ruff format)
format: $(STAMP)
	$(BIN)/ruff format $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/serve.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

## demo: three sites (edge DE, on-prem DE, cloud US) on loopback under one policy
demo: $(STAMP)
	$(BIN)/python -m cli.demo
