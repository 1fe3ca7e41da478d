#!/usr/bin/env bash
# The checks that need a GPU, in one short run (about 6 minutes on one H100 or H200):
#   1. tests/test_cuda.py: resuming from a checkpoint loaded onto the GPU (map_location="cuda"), every PML loss on
#      CUDA, whole batches served from the device, float16 autocast with a GradScaler in a plain loop, a step that
#      reads nothing on the host, non-finite embeddings raised at the epoch end;
#   2. the per-step overhead of the wrapper against the bare loss (ResNet-18 for 32x32, batch 128, d=512, margin
#      and ArcFace, K=8 and 32, a plain loop);
#   3. k-means in torch on the GPU against faiss on the CPU (1M x 128, K=8).
#
#   bash benchmarks/gpu_check.sh OUT_FOLDER
#
# Needs torch with CUDA, pytorch-metric-learning, faiss (CPU is enough), scikit-learn, pytest and hypothesis.
set -uo pipefail
OUT="$(realpath -m "$1")"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."  # the repository root: python -m puts it first on the path (this checkout's package)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, faiss, pytorch_metric_learning as p; print('torch', torch.__version__, '| faiss', \
faiss.__version__, '| PML', p.__version__, '| GPU', torch.cuda.get_device_name(0))"
start=$(date +%s)
timeout "${TEST_TIMEOUT:-180}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" \
  | tail -n 6
echo "tests/test_cuda.py: $(( $(date +%s) - start )) s"
for loss in margin arcface; do
  start=$(date +%s)
  timeout "${OVERHEAD_TIMEOUT:-120}" python3 -m benchmarks.overhead --device cuda --model resnet --conv-width 64 \
    --dataset synthetic --batch-size 128 --m 2 --embedding-size 512 --ks 8,32 --loss "$loss" --loop plain \
    --steps "${STEPS:-80}" --warmup 10 --out "$OUT/overhead_$loss" 2>&1 | grep -v "^\s*$" | tail -n 6
  echo "overhead $loss: $(( $(date +%s) - start )) s"
done
start=$(date +%s)
timeout "${KMEANS_TIMEOUT:-150}" python3 -m benchmarks.kmeans_backends --n 1000000 --dim 128 --k 8 --centres 8 \
  --device cuda --out "$OUT" 2>&1 | tail -n 7
echo "k-means backends: $(( $(date +%s) - start )) s"
