#!/usr/bin/env bash
# Everything that needs a CUDA GPU, as one prepared run for a session lent one (about 9 minutes at most).
#
# The GPU machine has torch + CUDA, Triton, numpy 2, onnxruntime (CPU) and OpenCV without contrib: no
# mediapipe, no TensorRT, no cv2.optflow. So flow parity against OpenCV's CPU TV-L1 uses a reference
# file made beforehand on a CPU machine (ignored by git, carried to the GPU machine):
#
#   echo /.gpu/ >> .git/info/exclude
#   .venv/bin/mex-bench flow --backends cpu --save-reference .gpu/flow-reference.npz --out .gpu/cpu-flow
#
# then, on the GPU machine, from the repository root (the `device` tool: carry [".gpu"], timeout 570):
#
#   bash benchmarks/gpu_session.sh
#
# Results: $OUT/gpu-results.tgz (benchmark folders, the LOSO runs' small files) and $OUT/log.txt.
# Each step has its own time limit, so one slow step cannot eat the others' time. First what the
# product needs (the encoder gap of the shipped recipe and of `ours`, LOSO on the GPU), then the CUDA
# checks, then more seeds of the shipped recipe with whatever time is left.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-session}
work=/tmp/gpu-session-work
mkdir -p "$OUT" "$work/results"
log=$OUT/log.txt
py=${PYTHON:-python3}  # the GPU machine: the python3 that holds torch
budget=${GPU_SESSION_S:-540}  # seconds for all steps, less 20 s to pack up

step() {  # step SECONDS command...: run, log, and go on whatever it returns
  local limit=$1; shift
  echo "== $(date -u +%T) [$limit s] $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "== exit ${PIPESTATUS[0]}" | tee -a "$log"
}
left() {  # what is left of the budget (SECONDS: bash's clock since the start), at least 10 s
  local s=$((budget - 20 - SECONDS)); [ "$s" -gt 10 ] && echo "$s" || echo 10
}
gap() {  # gap PROFILE SEED LIMIT: LOSO on the composite set, each fold scoring its subject's live encodings too
  step "$3" $py -m benchmarks.cli live-gap --profile "$1" --set seeds=1 --seed "$2" --device cuda \
    --out "$work/results/live-gap-$1-seed$2"
}

step 30 $py -c "import torch, numpy, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0), '| numpy', numpy.__version__, '| triton', triton.__version__)"
step 20 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv

# The encoder gap (mex-bench live-gap): the shipped recipe `live` and `ours`, seed 0, one model per fold.
gap live 0 150
gap ours 0 150

# Tests that only run with CUDA (they skip on the CPU machines): the CUDA-graph torch runtime, torch/Triton TV-L1.
step 60 $py -m pytest -q -rs -p no:cacheprovider tests/test_runtimes.py tests/test_features.py -k "cuda or triton or torch"
if [ -f .gpu/flow-reference.npz ]; then
  step 60 $py -m benchmarks.cli flow --backends torch,torch-nograph --repeats 20 \
    --reference .gpu/flow-reference.npz --out "$work/results/flow"
else
  echo "no .gpu/flow-reference.npz (see the top of this script): flow without OpenCV parity" | tee -a "$log"
  step 60 $py -m benchmarks.cli flow --backends torch,torch-nograph --repeats 20 --out "$work/results/flow"
fi
step 30 $py -m benchmarks.cli runtimes --iters 2000 --out "$work/results/runtimes"
# apex confirmed -> label with GPU flow (224 px recognition crops, registered) and the CUDA-graph torch runtime
step 30 $py -m benchmarks.cli latency --recognizer-only 200 --model mex/assets/default.pt --runtime torch \
  --out "$work/results/latency"

# More seeds of the shipped recipe, for its seed spread, while time is left.
gap live 1 "$(left)"
gap live 2 "$(left)"

for d in "$work"/results/live-gap-*; do rm -f "$d"/state.pt "$d"/*.pt; done  # the small files travel
tar -czf "$OUT/gpu-results.tgz" -C "$work" results
echo "wrote $OUT/gpu-results.tgz and $log"
