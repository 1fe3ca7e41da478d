#!/usr/bin/env bash
# Builds the Han glyph benchmark set once (lab.datasets.load_han): installs Debian's CJK font
# packages (HAN_FONT_PACKAGES: 51 packages, about 1.2 GB installed, 0.6 GB downloaded), renders the set
# (a few minutes on one core) and writes its arrays to a compressed .npz that load_han reads on a machine
# without the fonts (load_han(npz=PATH), or PML_DC_HAN_NPZ=PATH).
# Not part of scripts/setup.sh: CI and the tests need only two small font packages.
#
#   bash benchmarks/setup_han.sh [OUT.npz]        # default: han.npz in the current folder
# Environment: PYTHON (default: .venv/bin/python of this checkout); extra arguments of save_han_npz as HAN_KWARGS,
# e.g. HAN_KWARGS="num_classes=4000, max_per_class=16".
set -euo pipefail
OUT="$(realpath -m "${1:-han.npz}")"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"  # python -c and python - import from the current folder: this checkout's lab/
PACKAGES=$("$PYTHON" -c "from lab.datasets import HAN_FONT_PACKAGES; print(HAN_FONT_PACKAGES)")
missing=$(for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing $(echo $missing | wc -w) font packages ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
  else
    echo "missing font packages; install them, then run this again:" >&2
    echo "  sudo apt-get install -y --no-install-recommends" $missing >&2
    exit 1
  fi
fi
"$PYTHON" - "$OUT" <<PY
import os, sys, time
import numpy as np
from lab import datasets

t = time.time()
glyphs = datasets.save_han_npz(sys.argv[1], cache=False, ${HAN_KWARGS:-})
seconds = time.time() - t
counts = np.bincount(glyphs.labels)
print(f"{len(glyphs.chars):,} classes, {len(glyphs.images):,} images of {glyphs.images.shape[1]}x{glyphs.images.shape[2]} "
      f"from {len(glyphs.face_names)} faces ({len(set(glyphs.faces.tolist()))} used); rendered in {seconds:.0f} s")
print(f"distinct faces per class: min {glyphs.num_faces.min()}, median {np.median(glyphs.num_faces):.0f}, "
      f"max {glyphs.num_faces.max()}; images per class: min {counts.min()}, max {counts.max()}")
splits = datasets.load_han("test", npz=sys.argv[1])
val = datasets.load_han("val", npz=sys.argv[1]).eval
for name, ds in (("pretrain", splits.pretrain), ("train", splits.train), ("val", val), ("test", splits.eval)):
    print(f"  {name:8s} {len(np.unique(ds.labels)):5,} classes {len(ds):7,} images")
print(f"wrote {sys.argv[1]} ({os.path.getsize(sys.argv[1]) / 2**20:.1f} MiB)")
PY
