# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv with Python 3.12 when it is missing and install the project into it.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xt-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -n 2 --dist loadfile

# A working python3.12: `python3.12` on PATH if it runs, else the newest 3.12 that pyenv has.
PYTHON312 := $(shell \
  if python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then \
    command -v python3.12; \
  elif command -v pyenv >/dev/null 2>&1; then \
    v=$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$$' | sort -V | tail -n 1); \
    if [ -n "$$v" ]; then echo "$$(pyenv root)/versions/$$v/bin/python3.12"; fi; \
  fi)

.PHONY: demo test lint venv clean

$(PY):
	@if [ -z "$(PYTHON312)" ]; then \
	  echo "error: xt-plugins needs Python 3.12 (TorchGeo >= 0.10 requires it) and none was found."; \
	  echo "Install it, e.g. 'apt-get install python3.12 python3.12-venv' or 'pyenv install 3.12',"; \
	  echo "then run this command again."; exit 1; fi
	@echo "creating $(VENV) with $(PYTHON312)"
	$(PYTHON312) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_PINS) -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xt-plugins demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check xt_plugins tests benchmarks recipes
	$(VENV)/bin/ruff format --check xt_plugins tests benchmarks recipes

clean:
	rm -rf $(VENV) demo_out benchmarks/results
