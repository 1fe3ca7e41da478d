#!/usr/bin/env bash
# Creates .venv and installs pml-divide-conquer with its test tools. torch is pinned to the CPU build
# that this workplace keeps on disk, so no multi-GB CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# (this machine's pip config lists a local index with a few missing folders: hide those notices only)
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC" -e ".[dev]" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/python -c "import torch, faiss, pytorch_metric_learning as pml, pml_divide_conquer as dc; \
print(f'ready: torch {torch.__version__}, faiss {faiss.__version__}, PML {pml.__version__}, pml-divide-conquer {dc.__version__}')"
