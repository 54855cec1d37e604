#!/usr/bin/env bash
# Every command of the study (docs/study/protocol.md), in the order they were run, from the
# repository root after `bash scripts/bootstrap.sh`. Each stage resumes if interrupted.
set -euo pipefail
UAAL=${UAAL:-.venv/bin/uaal}
OUT=${OUT:-runs/study}

# Stage 0: does selection matter on the pool?
$UAAL run --config configs/study/stage0_benchmark.yaml --out "$OUT/stage0" --no-progress
$UAAL report "$OUT/stage0" --out docs/study/results/stage0
