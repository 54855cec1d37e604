#!/usr/bin/env bash
# Sets up a fresh checkout: a virtual environment in .venv with torch and the build/test tools, and
# uaal_ext built into it (editable: Python changes apply at once, C++/CUDA changes need a re-run).
# CUDA kernels are compiled when nvcc is found (sm_80 and sm_90 unless TORCH_CUDA_ARCH_LIST says
# otherwise); UAAL_EXT_DISABLE_CUDA=1 builds the CPU kernels only, which is quicker.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
say() { echo "[bootstrap $((SECONDS - started))s] $*"; }

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate

say "installing dependencies (torch and its CUDA libraries: about 1-2 minutes on a fresh machine)"
python -m pip install --quiet --upgrade pip
# torch 2.14.1 is the CUDA 13.0 build the CUDA kernels compile against (nvcc 13.0).
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" numpy pillow \
  "segmentation-models-pytorch>=0.5" tqdm pyyaml matplotlib \
  "scikit-build-core>=0.10" "cmake>=3.26" ninja "pytest>=8" scipy scikit-learn torchmetrics \
  "ruff==0.17.6" "clang-format==23.1.5"

say "building uaal_ext (the CUDA kernels take a few minutes on 2 cores; ninja's [done/total] follows)"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# Verbose build, filtered live to ninja's progress lines, so the minutes of compiling show how far
# they are without pages of compiler command lines; the whole log is shown if the build fails.
log=$(mktemp)
set +e
python -m pip install -v --no-build-isolation --no-deps -e . 2>&1 | tee "$log" \
  | grep --line-buffered -E '^ *\[[0-9]+/[0-9]+\] ' | sed -u -E 's#^ *(\[[0-9]+/[0-9]+\]) .*(csrc/[^ ]+)\.o$#  \1 \2#; s#^ *(\[[0-9]+/[0-9]+\]) (Linking [A-Z]+ [a-z]+ library).*#  \1 \2#'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  cat "$log"
  say "build failed (the full log is above)"
  exit 1
fi
rm -f "$log"
python -c "import uaal_ext, json; print('[bootstrap] built:', json.dumps(uaal_ext.build_info()))"
say "done"
