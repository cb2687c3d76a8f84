#!/bin/bash
# Issue 21 item 4: ResNet-20 on the full Fashion-MNIST training set (54,000 images after the 10%
# validation split) with the structured (Fastfood) basis at k = 10,000 and 100,000, for the same 4 epochs
# as the dense ResNet-20 of docs/results/foundation.md (benchmarks/dense_fashion_resnet20.py, 91.86%).
# Learning rates from the 3,000-image pilot in docs/results/pranc.md 8.3 (1e-3 at k = 10,000, 1e-4 at
# k = 100,000). One thread; a killed run continues from its last completed epoch (--resume).
# Usage: bash benchmarks/pranc_scale_train.sh [OUT_ROOT]   (default runs/pranc)
set -u
root=${1:-runs/pranc}
export OMP_NUM_THREADS=1 REPARAM_THREADS=1
for spec in "10000 1e-3" "100000 1e-4"; do
  set -- $spec
  out="$root/real_r20_ff$(( $1 / 1000 ))k"
  [ -f "$out/metrics.json" ] && { echo "done: $out"; continue; }
  resume=(); [ -d "$out.partial" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $out ${resume[*]}"
  /usr/bin/time -v python -m reparam pranc train --data fashion-mnist --model resnet20 --k "$1" --basis fastfood \
    --epochs 4 --batch-size 128 --optimizer adam --lr "$2" --schedule cosine --seed 0 --no-progress \
    --out "$out" "${resume[@]}" || exit $?
  echo "$(date -u +%FT%TZ) end $out"
done
