# jobkit: `make demo` runs the demo on the embedded broker; `make test` runs the whole suite.
# Both work on a fresh Debian machine with only Python >= 3.11 installed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test processes (pytest-xdist): each has its own Redis database and RabbitMQ vhost.
TEST_PROCESSES ?= 2

.PHONY: demo test lint services venv clean

# The virtualenv, with a current pip; each install below starts from it.
$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "jobkit needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Two installs into the same virtualenv, each with its own stamp, so either target may come
# first: `make demo` installs jobkit alone; `make test` (and lint) adds the test and
# benchmark extras.
$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(VENV)/bin/jobkit demo

services:
	bash scripts/ensure-services.sh

# pytest exits 5 when it collected no test: that is a failure of the suite.
test: venv services
	@$(PY) -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no test" >&2; exit 1; fi; \
	exit $$rc

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .cache *.egg-info
