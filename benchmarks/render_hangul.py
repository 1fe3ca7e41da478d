"""A Hangul-syllable set like a user's held-out glyph set (issue 16), rendered with the Han set's machinery.

    python -m benchmarks.render_hangul out/hangul.npz     # after benchmarks/setup_han.sh (the same font packages)

The Han set's rendering (lab.datasets.render_han_glyphs: every image from a different face, copies, placeholders and
near-identical drawings dropped) with the Hangul Syllables block (U+AC00-U+D7A3) in place of the Han blocks;
1,800 syllables with the most distinct faces, 15 images each, 32x32. load_han(npz=...) reads it as it reads the
Han set (num_pretrain + num_train + num_val + num_test <= 1,800).
"""

import sys
import time

import numpy as np

from lab import datasets
from lab.datasets.han import _write_han_npz

HANGUL = ((0xAC00, 0xD7A3),)
# cwTeX HeiB maps the Hangul syllables to the wrong glyphs (each one shifted to another syllable's drawing): left out
EXCLUDED = ("cwheib.ttf",)

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "hangul.npz"
    start = time.time()
    fonts = [f for f in datasets.han_fonts() if not f.path.endswith(EXCLUDED)]
    glyphs = datasets.render_han_glyphs(
        num_classes=1800, min_faces=15, max_per_class=15, ranges=HANGUL, blocks=HANGUL, fonts=fonts
    )  # blocks: placeholders are glyphs a face gives to several Hangul syllables
    _write_han_npz(out, glyphs)
    counts = np.bincount(glyphs.labels)
    print(
        f"{len(glyphs.chars)} syllables, {len(glyphs.images)} images from {len(set(glyphs.faces.tolist()))} faces; "
        f"distinct faces per class: min {glyphs.num_faces.min()}, median {np.median(glyphs.num_faces):.0f}, max "
        f"{glyphs.num_faces.max()}; images per class {counts.min()}-{counts.max()}; {time.time() - start:.0f} s"
    )
    print("used faces:", sorted({glyphs.face_names[k] for k in set(glyphs.faces.tolist())}))
