#!/usr/bin/env bash
# Every command of the study (docs/study/protocol.md), in the order they were run, from the
# repository root after `bash scripts/bootstrap.sh`. Each stage resumes if interrupted.
set -euo pipefail
UAAL=${UAAL:-.venv/bin/uaal}
# One thread per run: the study ran beside other work on a 2-core machine, where two processes of
# two OpenMP threads each spin against each other; one thread keeps each run's speed steady.
export OMP_NUM_THREADS=1
OUT=${OUT:-runs/study}              # run folders (state, checkpoints): not kept in the repository
RESULTS=${RESULTS:-docs/study/results}  # reports, CSV files, figures, state files: kept

# Stage 0: does selection matter on the pool?
$UAAL run --config configs/study/stage0_benchmark.yaml --out "$OUT/stage0" --no-progress
$UAAL report "$OUT/stage0" --out "$RESULTS"/stage0

# Stage 0's rule (protocol): Noise Stability beat Random at 20% (paired interval above 0), so the
# pool is kept as it is for the later stages.

# Stage 1: UAAL training on a fixed labeled set; one experiment (standard and uaal) per variant.
S1=configs/study/stage1_training.yaml
stage1() {  # stage1 FOLDER [--set key=value ...]
  local name=$1
  shift
  $UAAL run --config "$S1" --out "$OUT/stage1/$name" --no-progress "$@"
}
long() {  # the (L) variants at 600 steps
  local name=$1
  shift
  $UAAL run --config "$S1" --out "$OUT/stage1_long/$name" --no-progress --set iterations=600 "$@"
}
{
  stage1 base
  stage1 source_entropy --set uncertainty=entropy --set normalize=scale
  stage1 source_mc_dropout --set uncertainty=mc_dropout
  stage1 normalize_scale --set normalize=scale
  stage1 normalize_max --set normalize=max
  stage1 by_weight_off --set normalize_by_weight=false
  stage1 alpha_0.5 --set alpha=0.5
  stage1 alpha_2 --set alpha=2.0
  stage1 exponent_1 --set exponent=1.0
  stage1 exponent_3 --set exponent=3.0
  stage1 exponent_5 --set exponent=5.0
} &
{
  stage1 schedule_linear_increase --set schedule=linear_increase
  stage1 schedule_sine_increase --set schedule=sine_increase
  stage1 schedule_linear_decrease --set schedule=linear_decrease
  stage1 schedule_cosine_decrease --set schedule=cosine_decrease
  stage1 schedule_sin_cos --set schedule=sin_cos
  long base
  long source_entropy --set uncertainty=entropy --set normalize=scale
  long normalize_scale --set normalize=scale
  long by_weight_off --set normalize_by_weight=false
} &
wait
$UAAL report "$OUT/stage1" --out "$RESULTS"/stage1
$UAAL report "$OUT/stage1_long" --out "$RESULTS"/stage1_long
