# Two entry points: `make demo` (set up, then explain the bundled examples with the default model)
# and `make test` (set up, then run the test suite). Both work offline on a fresh machine that
# reaches PyPI. `make setup` alone builds the virtual environment in $(VENV).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch 2.14.1 and torchvision 0.29.1 are the pair that imports together here (see README).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml sxai_plugins_vgg/pyproject.toml sxai_plugins_alexnet/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]" -e ./sxai_plugins_vgg -e ./sxai_plugins_alexnet
	touch $@

demo: setup
	bash scripts/demo.sh $(VENV)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/run_all.py
