# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

.PHONY: venv demo test train-quick
venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/mex-live --demo --no-display

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

train-quick: $(VENV)/.installed
	$(BIN)/mex-train loso --data data/megc2019-composite-flow --out runs/quick --profile cpu-quick
