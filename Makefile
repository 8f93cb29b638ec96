# Two entry points that do all set-up on a fresh machine: `make demo`, `make test`.
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

.PHONY: setup demo test
setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python -m dit_cachepass demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
