#!/usr/bin/env bash
# All benchmarks of docs/benchmarks.md, side by side in one run, outputs (tables, CSV, PNG) in $OUT.
#   bash benchmarks/run_all.sh [OUT]        (~35 min on 2 CPU cores; OUT relative to benchmarks/)
set -euo pipefail
cd "$(dirname "$0")"
OUT="${1:-../bench-out}"
PY="${PYTHON:-../.venv/bin/python}"
mkdir -p "$OUT"
$PY tune.py --seeds 2 --out "$OUT"
$PY accuracy.py --dataset glyphs --split val --losses triplet --methods "baseline,D&C fixed" --seeds 2 --epochs 20 \
  --out "$OUT"
$PY accuracy.py --dataset glyphs --losses triplet,contrastive,arcface --seeds 3 --out "$OUT"
$PY accuracy.py --dataset fashion --losses triplet,contrastive,arcface --seeds 3 --out "$OUT"
$PY overhead.py --ks 1,2,4,8,16,32 --steps 60 --out "$OUT"
mkdir -p "$OUT/wide" && $PY overhead.py --ks 1,8,32 --steps 60 --conv-width 64 --out "$OUT/wide"
$PY recluster.py --k 8 --sizes 10000,100000,1000000 --dim 512 --out "$OUT"
$PY memory.py --epochs 4 --num-learners 8 --out "$OUT"
$PY paper_protocol.py --dry-run --out "$OUT"
cat "$OUT"/tune.md "$OUT"/accuracy_glyphs_val.md "$OUT"/accuracy_glyphs.md "$OUT"/accuracy_fashion.md \
  "$OUT"/overhead.md "$OUT"/wide/overhead.md "$OUT"/recluster.md "$OUT"/memory.md > "$OUT"/all.md
