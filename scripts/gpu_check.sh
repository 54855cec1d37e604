#!/usr/bin/env bash
# The whole GPU verification in one call, for a machine lent briefly (docs/gpu_check.md):
#
#   bash scripts/gpu_check.sh OUT [--wheels DIR] [--seconds N]    # on the GPU machine
#   bash scripts/gpu_check.sh OUT --cpu-smoke                      # here: the same steps' Python on the CPU
#
# Steps, each with its own time limit inside the overall budget (default 540 s), each one's output in
# one file of OUT (8 files in all, with summary.md saying what passed and how long it took):
#   1. environment.log  the GPU, python, torch, nvcc, compute-sanitizer
#   2. build.log        a venv on the machine's own torch, the carried wheels (--wheels, default
#                       gpu_wheels/ when present) installed offline, uaal_ext built for sm_90 only
#   3. cuda_tests.log   every CUDA test of python_tests (pytest -m cuda), then a tiny experiment
#                       under torchrun on the device (NCCL, DDP, SyncBatchNorm)
#   4. sanitizer.log    compute-sanitizer memcheck, then racecheck, over scripts/gpu_kernel_sweep.py
#   5. gpu_benchmarks_cuda.md / .json (and its log)   benchmarks/bench_gpu.py: ratios with CUDA
#                       events, the bytes floor, training steps, the projected GPU-hours of the paper configs
# With --cpu-smoke nothing is built: the installed uaal_ext runs the sweep without the sanitizer,
# pytest only collects the CUDA tests, and the benchmarks run at tiny sizes on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

usage() { echo "usage: bash scripts/gpu_check.sh OUT [--wheels DIR] [--seconds N] [--cpu-smoke]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1
shift
WHEELS=gpu_wheels
BUDGET=540
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    --seconds) BUDGET=${2:?--seconds needs a number}; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    *) usage ;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEADLINE=$((SECONDS + BUDGET))
SUMMARY=$OUT/summary.md
{
  echo "# GPU check ($([ $SMOKE = 1 ] && echo 'CPU smoke run' || echo 'GPU run'))"
  echo
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "- started: $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s"
  echo
  echo "| step | result | seconds | file |"
  echo "|---|---|---|---|"
} > "$SUMMARY"

# step NAME FILE CAP COMMAND: runs COMMAND (a bash string) with its output in OUT/FILE, for at most
# CAP seconds and never past the deadline (15 s are kept for the steps after it); one summary row.
step() {
  local name=$1 file=$2 cap=$3 command=$4
  local left=$((DEADLINE - SECONDS - 15))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 10 ]; then
    echo "| $name | skipped: the budget is spent | 0 | $file |" >> "$SUMMARY"
    return 1
  fi
  local started=$SECONDS
  echo "== $name (at most $limit s): $command" >> "$OUT/$file"
  timeout --kill-after=5 "$limit" bash -o pipefail -c "$command" >> "$OUT/$file" 2>&1
  local status=$?
  local result="ok"
  if [ $status -eq 124 ] || [ $status -eq 137 ]; then
    result="TIMED OUT after $limit s"
  elif [ $status -ne 0 ]; then
    result="FAILED (exit $status)"
  fi
  echo "| $name | $result | $((SECONDS - started)) | $file |" >> "$SUMMARY"
  echo "[gpu_check] $name: $result ($((SECONDS - started)) s)"
  return $status
}

# A tiny experiment for the distributed step: torchrun, the NCCL (GPU) or gloo (CPU) group, DDP with
# SyncBatchNorm converted on GPUs, sharded scoring and evaluation, rank 0 writing the folder.
TINY=$(mktemp -d)
trap 'rm -rf "$TINY"' EXIT
printf '%s\n' "pool_size: 24" "val_size: 4" "image_size: [32, 64]" "initial_fraction: 0.25" "budgets: [0.5]" \
  "iterations: 2" "batch_size: 4" "num_samples: 2" "acquisition_samples: 2" "eval_batch_size: 4" \
  "methods: [entropy, noise_stability]" "modes: [uaal]" "seeds: [0]" > "$TINY/tiny.yaml"
distributed_run() {  # PYTHON DEVICE
  echo "$1 -m torch.distributed.run --standalone --nproc_per_node 1 -m uaal_ext run --config $TINY/tiny.yaml --set device=$2 --out $TINY/run --no-progress && $1 -m torch.distributed.run --standalone --nproc_per_node 1 -m uaal_ext info"
}

if [ $SMOKE = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  step environment environment.log 20 \
    "$PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda available:\", torch.cuda.is_available())'"
  step build build.log 30 "$PY -c 'import uaal_ext, json; print(json.dumps(uaal_ext.build_info()))'"
  step cuda-tests cuda_tests.log 60 "OMP_NUM_THREADS=1 $PY -m pytest python_tests -m cuda --collect-only -q -p no:cacheprovider | tail -n 3"
  step distributed cuda_tests.log 90 "OMP_NUM_THREADS=1 $(distributed_run "$PY" cpu)"
  step sanitizer sanitizer.log 60 "OMP_NUM_THREADS=1 $PY scripts/gpu_kernel_sweep.py --device cpu --quick"
  step benchmarks gpu_benchmarks.log 120 \
    "OMP_NUM_THREADS=1 $PY benchmarks/bench_gpu.py --smoke --device cpu --budget 60 --output-dir '$OUT'"
  exit 0
fi

# ---- on the GPU machine ---------------------------------------------------------------------------
step environment environment.log 30 "nvidia-smi; python3 --version; python3 -c 'import torch; print(\"torch\", torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'; nvcc --version | tail -n 2; compute-sanitizer --version | head -n 2; nproc"

# The machine's own torch (no network: nothing is downloaded); what it lacks comes from the wheels.
if python3 -m venv --system-site-packages .gpu-venv >> "$OUT/build.log" 2>&1; then
  PY=.gpu-venv/bin/python
  USER_SITE=""
else  # no venv module: the user's site-packages of the machine's python
  PY=python3
  USER_SITE="--user"
fi
setup="$PY -m pip --version"
for package in segmentation_models_pytorch:segmentation_models_pytorch scikit-learn:sklearn joblib:joblib \
  threadpoolctl:threadpoolctl huggingface_hub:huggingface_hub safetensors:safetensors pyyaml:yaml; do
  setup+=" && ($PY -c 'import ${package#*:}' 2>/dev/null || $PY -m pip install $USER_SITE --no-index --no-deps --find-links '$WHEELS' ${package%%:*})"
done
setup+=" && TORCH_CUDA_ARCH_LIST=9.0 UAAL_EXT_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PY -m pip install $USER_SITE --no-index --no-build-isolation --no-deps -e ."
setup+=" && $PY -c 'import uaal_ext, json; info = uaal_ext.build_info(); print(json.dumps(info)); assert info[\"cuda_available\"]'"
if ! step build build.log 300 "$setup"; then
  echo "[gpu_check] the build failed: see $OUT/build.log"
  exit 1
fi
step cuda-tests cuda_tests.log 150 "$PY -m pytest python_tests -m cuda -q -p no:cacheprovider --continue-on-collection-errors --maxfail=20 --tb=short 2>&1 | tail -n 250"
step distributed cuda_tests.log 60 "UAAL_DEVICE=cuda $(distributed_run "$PY" cuda)"
if command -v compute-sanitizer > /dev/null; then
  step memcheck sanitizer.log 90 "compute-sanitizer --tool memcheck --error-exitcode 1 $PY scripts/gpu_kernel_sweep.py 2>&1 | tail -n 40"
  step racecheck sanitizer.log 60 "compute-sanitizer --tool racecheck --error-exitcode 1 $PY scripts/gpu_kernel_sweep.py --quick 2>&1 | tail -n 40"
else
  echo "compute-sanitizer is not on the PATH: memcheck and racecheck cannot attach on this machine" >> "$OUT/sanitizer.log"
  echo "| sanitizer | skipped: compute-sanitizer not found | 0 | sanitizer.log |" >> "$SUMMARY"
fi
left=$((DEADLINE - SECONDS - 30))
step benchmarks gpu_benchmarks.log $((left > 10 ? left : 10)) \
  "$PY benchmarks/bench_gpu.py --device cuda --budget $((left - 40)) --output-dir '$OUT'"
echo "[gpu_check] done in $SECONDS s: $SUMMARY"
