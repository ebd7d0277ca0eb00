# Quickstart: `make demo` and `make test`. Each sets up .venv on first use (Python >= 3.10).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fmtspec-installed
# torch is installed first, pinned, so that the resolver never pulls an arbitrary (multi-GB CUDA) build.
# On a CPU-only machine with internet access, add TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "fmtspec needs Python >= 3.10")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if $(BIN)/python -c 'import torch' 2>/dev/null; then \
		echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing torch==$(TORCH_VERSION) (CUDA build)"; \
		$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"; \
	else \
		echo "no GPU: installing the CPU build of torch==$(TORCH_VERSION)"; \
		$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(BIN)/fmtspec demo

bench: setup
	$(BIN)/python bench/startup_cost.py
	$(BIN)/python bench/lm_eval_batch.py

clean:
	rm -rf $(VENV) demo_out build dist
