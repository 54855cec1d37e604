#!/usr/bin/env bash
# The style checks CI runs: ruff (lint and format) over the Python, clang-format over csrc/.
# Run from anywhere; uses the tools in .venv (scripts/bootstrap.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
"$BIN/ruff" check .
"$BIN/ruff" format --check .
find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' | sort | xargs "$BIN/clang-format" --dry-run --Werror
echo "[lint] ruff and clang-format: clean"
