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
# Offline data for the benchmarks and their tests (Debian packages): Fashion-MNIST, fonts for the glyph set, and two
# small Japanese fonts (1.8 MB each installed) for the tests of the Han set (the full Han set needs
# benchmarks/setup_han.sh, about 1.2 GB of CJK fonts).
DATA_PACKAGES="dataset-fashion-mnist fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf \
fonts-urw-base35 fonts-texgyre fonts-croscore fonts-go fonts-linuxlibertine fonts-open-sans \
fonts-sawarabi-gothic fonts-sawarabi-mincho"
missing=$(for p in $DATA_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
  else
    echo "warning: benchmark data missing; install with: sudo apt-get install -y" $missing >&2
  fi
fi
