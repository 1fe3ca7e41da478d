#!/usr/bin/env bash
# All benchmarks of docs/benchmarks.md, side by side in one run, outputs (tables, CSV, PNG) in $OUT.
#   bash benchmarks/run_all.sh [OUT]        (~35 min on 2 CPU cores; OUT default bench-out/ of the repository)
# Each script runs as a module of the benchmarks package, from the repository root: python -m benchmarks.<name>
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/bench-out}")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
mkdir -p "$OUT"
$PY -m benchmarks.tune --seeds 2 --out "$OUT"
$PY -m benchmarks.accuracy --dataset glyphs --split val --losses triplet --methods "baseline,D&C fixed" --seeds 2 \
  --epochs 20 --out "$OUT"
$PY -m benchmarks.accuracy --dataset glyphs --losses triplet,contrastive,arcface --seeds 3 --out "$OUT"
$PY -m benchmarks.accuracy --dataset fashion --losses triplet,contrastive,arcface --seeds 3 --out "$OUT"
$PY -m benchmarks.overhead --ks 1,2,4,8,16,32 --steps 60 --out "$OUT"
mkdir -p "$OUT/wide" && $PY -m benchmarks.overhead --ks 1,8,32 --steps 60 --conv-width 64 --out "$OUT/wide"
$PY -m benchmarks.recluster --k 8 --sizes 10000,100000,1000000 --dim 512 --out "$OUT"
$PY -m benchmarks.memory --epochs 4 --num-learners 8 --out "$OUT"
$PY -m benchmarks.paper_protocol --dry-run --out "$OUT"
cat "$OUT"/tune.md "$OUT"/accuracy_glyphs_val.md "$OUT"/accuracy_glyphs.md "$OUT"/accuracy_fashion.md \
  "$OUT"/overhead.md "$OUT"/wide/overhead.md "$OUT"/recluster.md "$OUT"/memory.md > "$OUT"/all.md
