# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

.PHONY: venv demo test xvfb
venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/mex-live --demo --no-display

# The window overlay is tested under a virtual display; without Xvfb those tests skip with the reason.
xvfb:
	@command -v Xvfb >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq xvfb >/dev/null) ; } || \
	  echo "Xvfb not installed (needs root: apt-get install xvfb); window tests will be skipped"

test: $(VENV)/.installed xvfb
	$(BIN)/python -m pytest -q
