# Two entry points that do all set-up on a fresh machine: `make demo`, `make test`.
# `make demo` installs the `demo` extra only; `make test` the `test` extra (a superset). Each has
# its own stamp file, so either can come first and neither reinstalls what the other installed.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# pip's configured index serves torch==2.13.0 as a local CPU build here; elsewhere, set e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid PyPI's multi-GB CUDA build
TORCH_INDEX ?=
BIN := $(VENV)/bin

$(BIN)/.torch-installed:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

# the test extra includes the demo extra: an up-to-date test install serves the demo as is
$(BIN)/.demo-installed: pyproject.toml $(BIN)/.torch-installed
	[ $(BIN)/.test-installed -nt pyproject.toml ] || $(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

$(BIN)/.test-installed: pyproject.toml $(BIN)/.torch-installed
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

.PHONY: setup demo test conformance
setup: $(BIN)/.test-installed

demo: $(BIN)/.demo-installed
	$(BIN)/python -m dit_cachepass demo

test: $(BIN)/.test-installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

# Conformance over diffusers' own DiT pipeline test fixtures (tests/conformance/; ~20 min on 2 cores):
# runs every fixture class and rewrites docs/conformance.md. Not part of `make test`.
conformance: $(BIN)/.test-installed
	$(BIN)/python -m tests.conformance.run --jobs 2 --write docs/conformance.md
