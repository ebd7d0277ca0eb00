# Quickstart: `make demo` and `make test`. Each sets up .venv on first use (CPython 3.11 on Linux x86-64
# is what the locks were resolved for; other versions: `make setup LOCK=ranges`).
#
# The set-up installs a lock file: the whole dependency tree at exact versions (requirements/cpu.txt, or
# requirements/cuda.txt where a GPU is found), so every machine runs the versions the suite was tested with.
# `make lock` regenerates both from pyproject.toml's ranges (pip-tools' pip-compile); `make test-latest`
# runs the suite against the newest versions those ranges allow, in .venv-latest, to find drift on purpose.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_VERSION ?= 26.3
PIP_TOOLS_VERSION ?= 7.6.2
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
LOCK ?= requirements/$(if $(HAS_GPU),cuda,cpu).txt
# The CPU lock pins torch's CPU build (torch==X+cpu), which PyPI does not serve: on a machine without it
# in pip's find-links, add TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH_INDEX ?=
EXTRA_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
STAMP := $(VENV)/.fmtspec-installed-$(notdir $(LOCK))
PYTEST_ARGS ?=
# The suite's tests mostly wait on one single-threaded process each (OMP_NUM_THREADS=1, tests/conftest.py):
# pytest-xdist runs test files on this many workers side by side (a file stays on one worker: its
# module-scoped fixtures are built once). PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)
LATEST_VENV ?= .venv-latest
LOCK_VENV ?= .venv-lock
COMPILE = $(LOCK_VENV)/bin/pip-compile --quiet --upgrade --allow-unsafe --strip-extras --extra dev \
	--no-emit-index-url --no-emit-find-links

.PHONY: setup test demo bench lock test-latest mini-base clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(if $(filter ranges,$(LOCK)),,$(LOCK))
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "fmtspec needs Python >= 3.10")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip==$(PIP_VERSION)"
ifeq ($(LOCK),ranges)
	@echo "installing pyproject.toml's ranges (not a lock: versions may differ from the tested ones)"
	$(BIN)/python -m pip install -q "$$(grep -m1 '^torch==' requirements/$(if $(HAS_GPU),cuda,cpu).txt)" $(EXTRA_INDEX)
	$(BIN)/python -m pip install -q -e ".[dev]"
else
	@grep -q "with Python $$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')$$" $(LOCK) || \
		echo "warning: $(LOCK) was resolved for another Python; if the install fails: make setup LOCK=ranges"
	@echo "installing $(LOCK) (exact versions of the whole dependency tree)"
	@$(BIN)/python -m pip install -q -r $(LOCK) $(EXTRA_INDEX) || { echo "make setup: installing $(LOCK) failed;" \
		"for the CPU build of torch add TORCH_INDEX=https://download.pytorch.org/whl/cpu, or use LOCK=ranges"; exit 1; }
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
endif
	@rm -f $(VENV)/.fmtspec-installed*
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

demo: setup
	$(BIN)/fmtspec demo

bench: setup
	$(BIN)/python bench/startup_cost.py
	$(BIN)/python bench/lm_eval_batch.py

# Regenerate both locks at the newest versions pyproject.toml's ranges (and requirements/*.in) allow.
# The CUDA lock is resolved against the package index alone, so that a local CPU wheel of torch (pip's
# find-links) cannot stand in for PyPI's CUDA build.
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/python -m pip install -q "pip==$(PIP_VERSION)" "pip-tools==$(PIP_TOOLS_VERSION)"; }
	$(COMPILE) $(EXTRA_INDEX) -o requirements/cpu.txt pyproject.toml requirements/cpu.in
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(COMPILE) -o requirements/cuda.txt pyproject.toml requirements/cuda.in

# The suite against the newest releases the ranges allow (torch stays the lock's build: upgrading it means
# a multi-GB download, and its numerics are covered by the tolerance of the tests). Prints what differs.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	grep -m1 '^torch==' $(LOCK) > $(LATEST_VENV)/torch-constraint.txt
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]" \
		-c $(LATEST_VENV)/torch-constraint.txt $(EXTRA_INDEX)
	@$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	@$(PYTHON) requirements/compare.py $(LOCK) $(LATEST_VENV)/versions.txt
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)

# Train the miniature world's base again (configs/mini/pretrain.yaml, ~5 min on one thread) and make it the
# shipped one (models/mini_pretrained); then regenerate the tables of README.md and docs/miniature.md.
mini-base: setup
	rm -rf runs/mini_base
	$(BIN)/fmtspec train configs/mini/pretrain.yaml --output runs/mini_base
	$(BIN)/python -m trainers.pretrain --ship runs/mini_base

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) demo_out build dist
