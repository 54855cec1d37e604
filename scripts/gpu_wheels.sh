#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the wheels that scripts/gpu_check.sh installs on the GPU
# machine, which has no network: the pure-Python and binary packages its Python 3.12 image lacks or
# may lack. They go to gpu_wheels/ (git-ignored; about 12 MB), to be carried with the checkout.
#
#   bash scripts/gpu_wheels.sh [DIR] [PYTHON_VERSION]      # defaults: gpu_wheels 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-gpu_wheels}
VERSION=${2:-3.12}
PIP=${PIP:-.venv/bin/pip}
mkdir -p "$DEST"
# Any of these already on the machine is left as it is (gpu_check.sh installs only what does not import).
"$PIP" download --quiet --dest "$DEST" --no-deps --only-binary=:all: --implementation cp \
  --python-version "$VERSION" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 \
  segmentation_models_pytorch scikit-learn joblib threadpoolctl huggingface_hub safetensors pyyaml
ls -la "$DEST"
