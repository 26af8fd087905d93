# ecdopt — the two commands: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build of torch (the plain `torch` wheel pulls a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" || \
	  $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" --index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install --quiet -e ".[experiments,postgres,dev,jax]"
	sh scripts/install-postgres.sh
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

demo: install
	$(BIN)/ecdopt demo --out results

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/step_cost.py

clean:
	rm -rf $(VENV) results build *.egg-info src/*.egg-info .pytest_cache
