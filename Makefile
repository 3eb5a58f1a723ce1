# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# They create .venv if missing, install the pinned dependencies (never another torch), build the
# extension, then run.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
# nvcc on PATH may be a wrapper script, from which torch guesses the toolkit root wrong.
CUDA_HOME ?= $(shell test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
export CUDA_HOME TORCH_CUDA_ARCH_LIST
# pyproject.toml: its package list and entry points are part of the install, not only the sources.
SOURCES := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: all venv build test lint format demo bench bench-gpu info clean

all: test

$(VENV)/.deps: requirements/constraints.txt requirements/torch.txt requirements/dev.txt requirements/nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements/constraints.txt -r requirements/torch.txt
	$(PIP) install -c requirements/constraints.txt -r requirements/dev.txt
	$(PIP) install --no-deps -r requirements/nodeps.txt
	touch $@

venv: $(VENV)/.deps

# The build's output goes to $(VENV)/build.log (tests/test_packaging.py reads it: no compiler warning from
# our own sources); its end is printed when the build fails.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip --disable-pip-version-check install --no-build-isolation --no-deps -v -e . > $(VENV)/build.log 2>&1 \
		|| { tail -60 $(VENV)/build.log; exit 1; }
	grep -m1 -A7 'fastshap build configuration' $(VENV)/build.log
	touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pytest -q

# ruff (configured in pyproject.toml): lint rules and the formatter's check; `make format` rewrites.
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: build
	$(PY) -m fastshap.demo
	$(PY) -m fastshap_train.demo

bench: build
	$(PY) -m pytest bench -q --benchmark-only

bench-gpu: build
	bash bench/gpu_check.sh

info: build
	$(PY) -m fastshap.info

study-quick: build
	$(PY) -m fastshap_train.study --quick --jobs 2 --out runs/study-quick --overwrite

clean:
	rm -rf build *.egg-info fastshap/_C*.so $(VENV)/.built
