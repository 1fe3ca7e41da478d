#!/usr/bin/env bash
# Creates .venv and installs pml-divide-conquer with its test tools (the "dev" extra); then, as root and when they are
# missing, 13 Debian packages (fonts, Fashion-MNIST) that only the lab's benchmark datasets and their tests use. It
# says which before it installs them; without root it prints the apt-get command instead.
#
#   bash scripts/setup.sh                                                       # this workplace
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh   # anywhere else, CPU-only torch
#
# torch is pinned (TORCH_SPEC, default torch==2.13.0). Here pip finds that version as a CPU build in the local
# wheel folders; from PyPI the same pin is a CUDA build on Linux that pulls in ~3 GB of CUDA packages. Setting
# TORCH_INDEX_URL installs torch from that index first (PyTorch's CPU index above, or a CUDA one such as
# .../whl/cu128), so the package's own install then finds torch satisfied and pulls no other build.
# Other variables: PYTHON (the interpreter that creates .venv, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_install() {
  # (this machine's pip config lists a local index with a few missing folders: hide those notices only)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
if [ -n "$TORCH_INDEX_URL" ]; then
  pip_install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
  pip_install -e ".[dev]"
else
  pip_install "$TORCH_SPEC" -e ".[dev]"
fi
.venv/bin/python -c "import torch, faiss, pytorch_metric_learning as pml, pml_divide_conquer as dc; \
print(f'ready: torch {torch.__version__}, faiss {faiss.__version__}, PML {pml.__version__}, pml-divide-conquer {dc.__version__}')"
# Offline data for the lab's benchmark datasets and their tests (Debian packages): Fashion-MNIST, fonts for the glyph
# set, and two small Japanese fonts (1.8 MB each installed) for the tests of the Han set (the full Han set needs
# benchmarks/setup_han.sh, about 1.2 GB of CJK fonts). The library itself (pip install) needs none of them.
DATA_PACKAGES="dataset-fashion-mnist fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf \
fonts-urw-base35 fonts-texgyre fonts-croscore fonts-go fonts-linuxlibertine fonts-open-sans \
fonts-sawarabi-gothic fonts-sawarabi-mincho"
missing=$(for p in $DATA_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "The lab's benchmark datasets and their tests (not the library) read Fashion-MNIST and fonts from Debian"
  echo "packages; missing:" $missing
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "Installing them as root: apt-get update && apt-get install --no-install-recommends <the packages above>"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
  else
    echo "warning: benchmark data missing; install with: sudo apt-get install -y" $missing >&2
  fi
fi
