# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.stormvl-installed
# the torch the suite runs on, installed before the package (whose range then keeps it).
# On Linux, PyPI's torch is the CUDA build; for the CPU one from PyTorch's own index:
#   make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: pyproject asks for a range, which the wheel installed here satisfies,
	# so the package install below keeps it and pulls no other build.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stormvl demo --preset quick --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

.PHONY: install demo test
