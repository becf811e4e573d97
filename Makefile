# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

.PHONY: venv demo test xvfb test-numpy2
venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/mex-live --demo --display none

# The window overlay is tested under a virtual display; without Xvfb those tests skip with the reason.
xvfb:
	@command -v Xvfb >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq xvfb >/dev/null) ; } || \
	  echo "Xvfb not installed (needs root: apt-get install xvfb); window tests will be skipped"

test: $(VENV)/.installed xvfb
	$(BIN)/python -m pytest -q

# The suite against the GPU machine's library versions (numpy 2, OpenCV 5 headless without contrib, no
# mediapipe), in a venv of its own; what needs the missing parts skips and says why.
NP2 := .venv-numpy2
test-numpy2:
	$(PY) -m venv $(NP2)
	$(NP2)/bin/pip install --quiet torch==2.13.0 numpy==2.4.6 opencv-python-headless==5.0.0.93 onnx==1.23.2 \
	  onnxruntime==1.32.0 onnxscript==0.7.2 numba==0.68.1 rich==15.0.0 matplotlib==3.11.2 pillow==13.0.0 \
	  openpyxl==3.1.5 scipy==1.17.1 pytest==9.2.0
	PYTHONPATH=$(CURDIR) $(NP2)/bin/python -m pytest -q -p no:cacheprovider
