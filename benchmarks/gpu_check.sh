#!/usr/bin/env bash
# The checks that need a GPU, in one short run (about 8 minutes on one H100 or H200):
#   1. tests/test_cuda.py: resuming from a checkpoint loaded onto the GPU (map_location="cuda", what PML's
#      HookContainer does there), every PML loss on CUDA, whole batches served from the device;
#   2. the Han benchmark's GPU configuration: baseline vs the chosen D&C configuration, margin loss, 3 seeds.
#
#   bash benchmarks/gpu_check.sh HAN.npz OUT_FOLDER
#
# Needs torch with CUDA, pytorch-metric-learning, faiss (CPU is enough), scikit-learn, pytest and hypothesis;
# the Han arrays from benchmarks/setup_han.sh (a GPU machine needs no fonts).
set -uo pipefail
NPZ="$(realpath "$1")"
OUT="$(realpath -m "$2")"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, faiss, pytorch_metric_learning as p; print('torch', torch.__version__, '| faiss', \
faiss.__version__, '| PML', p.__version__, '| GPU', torch.cuda.get_device_name(0))"
start=$(date +%s)
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" \
  | tail -n 4
echo "tests/test_cuda.py: $(( $(date +%s) - start )) s"
start=$(date +%s)
(cd benchmarks && timeout "${HAN_TIMEOUT:-420}" python3 han.py gate --preset gpu --device cuda --npz "$NPZ" \
  --seeds "${SEEDS:-3}" --out "$OUT" 2>&1 | tee "$OUT/han_gpu.log" | grep -v "^\s*$" | tail -n 25)
echo "han.py gate --preset gpu: $(( $(date +%s) - start )) s"
