# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-dev

.PHONY: run test venv dev lint typecheck clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
dev: $(STAMP)

## make run: the gateway on 127.0.0.1:8080, local executor, local storage under .jobgate/
run: $(VENV)/.installed
	JOBGATE_DATA_DIR=$${JOBGATE_DATA_DIR:-.jobgate} $(VENV)/bin/jobgate serve

## make test: the whole suite against real servers it starts itself
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway runtimes tests loadtests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .jobgate .pytest_cache .mypy_cache

-include mk/*.mk
