"""Offline datasets for demos, tests and benchmarks (nothing is downloaded at run time).

- :func:`load_digits`: scikit-learn's bundled 8x8 digits, the quickest check (:mod:`.digits`).
- :func:`load_fashion_mnist`: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (:mod:`.fashion`).
- :func:`load_glyphs`: a many-class zero-shot set of Latin, Greek and Cyrillic characters rendered from a fixed
  list of font files of Debian packages (plus the STIX fonts bundled with matplotlib), rendered once and cached
  (:mod:`.glyphs`).

- :func:`load_han`: thousands of Han characters (CJK ideographs) rendered from Debian's CJK font packages, each
  image from a different face, in pretraining, training, validation and test classes (like Stanford Online
  Products); built once by ``benchmarks/setup_han.sh`` into a .npz that loads on machines without the fonts
  (:mod:`.han`; the renderer: :mod:`.han_render`).

All return zero-shot splits (train and test classes disjoint) as :class:`ArrayDataset` objects.
:class:`BatchArrayDataset` serves whole batches (one indexing per batch) to PML's trainers and testers
(:mod:`.arrays`). The font files each set is drawn from are listed in ``font_files/*.json`` (:mod:`.fonts` reads
them); the rendered sets are cached in :func:`cache_dir` (:mod:`.cache`).
"""

from .arrays import ArrayDataset, BatchArrayDataset, pass_through_collate, zero_shot_split
from .cache import cache_dir
from .digits import load_digits
from .fashion import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist, read_idx
from .fonts import FontFace, OpenFace, font_faces, open_faces, present_faces
from .glyphs import (
    EXCLUDED_FONTS,
    GLYPH_FONT_FILES,
    GLYPH_FONT_PACKAGES,
    candidate_characters,
    glyph_arrays,
    glyph_fonts,
    load_glyphs,
    render_glyphs,
)
from .han import HanSplits, han_glyph_arrays, load_han, save_han_npz
from .han_render import (
    HAN_FONT_FILES,
    HAN_FONT_PACKAGES,
    HAN_NPZ_ENV,
    HAN_RANGES,
    HanGlyphs,
    han_fonts,
    render_han_glyphs,
)

__all__ = [
    "ArrayDataset",
    "BatchArrayDataset",
    "pass_through_collate",
    "zero_shot_split",
    "cache_dir",
    "load_digits",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "load_fashion_mnist",
    "read_idx",
    "FontFace",
    "OpenFace",
    "font_faces",
    "open_faces",
    "present_faces",
    "EXCLUDED_FONTS",
    "GLYPH_FONT_FILES",
    "GLYPH_FONT_PACKAGES",
    "candidate_characters",
    "glyph_arrays",
    "glyph_fonts",
    "load_glyphs",
    "render_glyphs",
    "HanSplits",
    "han_glyph_arrays",
    "load_han",
    "save_han_npz",
    "HAN_FONT_FILES",
    "HAN_FONT_PACKAGES",
    "HAN_NPZ_ENV",
    "HAN_RANGES",
    "HanGlyphs",
    "han_fonts",
    "render_han_glyphs",
]
