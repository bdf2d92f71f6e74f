# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs only what changed since the last run.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, from pip (not uv/poetry): see docs/install.md. Override for your CUDA, e.g.
#   make test TORCH="torch torchvision --index-url <your wheel index>"
TORCH ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= croptune-demo
PYTEST_ARGS ?=
# A real vLLM (its CPU build) for the `vllm` tests, in a venv of its own: it pins another
# torch and transformers. Set CROPTUNE_VLLM=/path/to/vllm to use a vLLM you already have.
VLLM_VENV ?= .venv-vllm
# The Python of the Ray workers in the vllm engine test: Ray layered over .venv-vllm.
VLLM_RAY_VENV ?= .venv-vllm-ray

.PHONY: demo test lint format clean venv vllm-env vllm-ray-env

venv: $(VENV)/.installed

vllm-env: $(if $(CROPTUNE_VLLM),,$(VLLM_VENV)/.installed)

vllm-ray-env: $(if $(CROPTUNE_VLLM),,$(VLLM_RAY_VENV)/.installed)

$(VLLM_RAY_VENV)/.installed: scripts/make_vllm_ray_venv.sh $(VLLM_VENV)/.installed
	PYTHON=$(PYTHON) VLLM_VENV=$(VLLM_VENV) bash scripts/make_vllm_ray_venv.sh $(VLLM_RAY_VENV)

# Rebuilt when the script changes; otherwise this step is a file check.
$(VLLM_VENV)/.installed: scripts/make_vllm_venv.sh
	PYTHON=$(PYTHON) bash scripts/make_vllm_venv.sh $(VLLM_VENV)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check $(TORCH)
	touch $@

# Re-installs when pyproject.toml changes; otherwise this step is a file check.
$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/croptune demo --workdir $(DEMO_DIR)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy  # the four packages, as [tool.mypy] in pyproject.toml says

test: lint vllm-env vllm-ray-env
	$(BIN)/python -m pytest $(PYTEST_ARGS)

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache build *.egg-info
