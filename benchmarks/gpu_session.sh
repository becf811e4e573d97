#!/usr/bin/env bash
# Everything that needs a CUDA GPU, as one prepared run for a session lent one (about 8 minutes at most).
#
# The GPU machine has torch + CUDA, Triton, numpy 2, onnxruntime (CPU) and OpenCV without contrib: no
# mediapipe, no TensorRT, no cv2.optflow. So flow parity against OpenCV's CPU TV-L1 uses a reference
# file made beforehand on a CPU machine (ignored by git, carried to the GPU machine):
#
#   echo /.gpu/ >> .git/info/exclude
#   .venv/bin/mex-bench flow --backends cpu --save-reference .gpu/flow-reference.npz --out .gpu/cpu-flow
#
# then, on the GPU machine, from the repository root (the `device` tool: carry [".gpu"], timeout 540):
#
#   bash benchmarks/gpu_session.sh
#
# Results: $OUT/gpu-results.tgz (benchmark folders, the LOSO run's small files) and $OUT/log.txt.
# Each step has its own time limit, so one slow step cannot eat the others' time.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-session}
work=/tmp/gpu-session-work
mkdir -p "$OUT" "$work/results"
log=$OUT/log.txt
py=${PYTHON:-python3}  # the GPU machine: the python3 that holds torch

step() {  # step SECONDS command...: run, log, and go on whatever it returns
  local limit=$1; shift
  echo "== $(date -u +%T) [$limit s] $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "== exit ${PIPESTATUS[0]}" | tee -a "$log"
}

step 30 $py -c "import torch, numpy, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0), '| numpy', numpy.__version__, '| triton', triton.__version__)"
step 20 nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv

# Tests that only run with CUDA (they skip on the CPU machines): CUDA-graph engine, torch/Triton TV-L1.
step 90 $py -m pytest -q -rs -p no:cacheprovider tests/test_engines.py tests/test_features.py -k "cuda or triton or torch"

if [ -f .gpu/flow-reference.npz ]; then
  step 90 $py -m benchmarks.cli flow --backends torch,torch-nograph,torch-eager --repeats 20 \
    --reference .gpu/flow-reference.npz --out "$work/results/flow"
else
  echo "no .gpu/flow-reference.npz (see the top of this script): flow without OpenCV parity" | tee -a "$log"
  step 90 $py -m benchmarks.cli flow --backends torch,torch-nograph,torch-eager --repeats 20 --out "$work/results/flow"
fi
step 45 $py -m benchmarks.cli engines --iters 2000 --out "$work/results/engines"
# apex confirmed -> label with GPU flow and the CUDA-graph engine (issue 5: p95 <= 5 ms); no tracker needed
step 45 $py -m benchmarks.cli latency --recognizer-only 200 --model mex/assets/default.pt --engine torch \
  --out "$work/results/latency"
step 60 $py -m benchmarks.cli train --device cuda --profiles ours,paper --out "$work/results/train"

# The recipe's real LOSO run: 68 folds x 3 seeds, bf16 (cut off when the time is up: the log says how far it got).
# whatever is left of a 540 s call, less 20 s to pack up (SECONDS: bash's clock since the start)
left=$((520 - SECONDS)); [ "$left" -gt 10 ] || left=10  # timeout 0 would mean no limit at all
step "$left" $py -m train.cli loso --profile ours --device cuda --out "$work/loso-ours-cuda"
mkdir -p "$work/results/loso-ours-cuda"
cp "$work"/loso-ours-cuda/{results.json,predictions.csv,curve.csv,report.md,confusion.png,curve.png,run.json} \
  "$work/results/loso-ours-cuda/" 2>/dev/null

tar -czf "$OUT/gpu-results.tgz" -C "$work" results
echo "wrote $OUT/gpu-results.tgz and $log"
