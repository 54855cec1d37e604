#!/usr/bin/env bash
# Sets up a fresh checkout: a virtual environment in .venv with torch and the build/test tools, and
# uaal_ext built into it (editable: Python changes apply at once, C++/CUDA changes need a re-run).
# CUDA kernels are compiled when nvcc is found (sm_80 and sm_90 unless TORCH_CUDA_ARCH_LIST says
# otherwise); UAAL_EXT_DISABLE_CUDA=1 builds the CPU kernels only, which is quicker.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate

echo "[bootstrap] installing dependencies"
python -m pip install --quiet --upgrade pip
# torch 2.14.1 is the CUDA 13.0 build the CUDA kernels compile against (nvcc 13.0).
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" numpy pillow \
  "segmentation-models-pytorch>=0.5" tqdm pyyaml matplotlib \
  "scikit-build-core>=0.10" "cmake>=3.26" ninja "pytest>=8" scipy scikit-learn torchmetrics \
  "ruff==0.17.6" "clang-format==23.1.5"

echo "[bootstrap] building uaal_ext (a few minutes with the CUDA kernels)"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
python -m pip install --quiet --no-build-isolation --no-deps -e .
python -c "import uaal_ext, json; print('[bootstrap] built:', json.dumps(uaal_ext.build_info()))"
