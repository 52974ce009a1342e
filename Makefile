# megbed: `make run` and `make test` on a fresh machine. Both create .venv when missing.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The CPU build lies on disk on the project's machines; GPU users: make TORCH_SPEC='torch==X.Y.Z' ...
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.megbed-installed
PYTEST_ARGS ?=

.PHONY: run test test-slow lint bench venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/megbed run

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
