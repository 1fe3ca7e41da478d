"""The Han set (like Stanford Online Products: thousands of classes, few images each): its arrays rendered once and
cached, or read from a prebuilt .npz (``benchmarks/setup_han.sh``) on machines without the fonts, and its
class-disjoint splits."""

import hashlib
import os
from typing import NamedTuple

import numpy as np

from .arrays import ArrayDataset, per_class_subset
from .cache import cache_dir, save_npz
from .fonts import as_faces, open_faces, present_faces
from .han_render import HAN_NPZ_ENV, HAN_RANGES, RENDER_VERSION, HanGlyphs, han_fonts, render_han_glyphs


class HanSplits(NamedTuple):
    """Class-disjoint splits of the Han set: ``pretrain``, ``train`` and ``eval`` (validation or test classes)."""

    pretrain: ArrayDataset
    train: ArrayDataset
    eval: ArrayDataset


def _read_han_npz(path):
    with np.load(path) as z:
        return HanGlyphs(
            z["images"],
            z["labels"],
            [str(c) for c in z["chars"]],
            z["faces"],
            [str(f) for f in z["face_names"]],
            z["num_faces"],
        )


def _write_han_npz(path, glyphs):
    save_npz(
        path,
        images=glyphs.images,
        labels=glyphs.labels,
        chars=np.array(glyphs.chars),
        faces=glyphs.faces,
        face_names=np.array(glyphs.face_names),
        num_faces=glyphs.num_faces,
    )


def han_glyph_arrays(
    size=32,
    num_classes=3200,
    min_faces=10,
    max_per_class=20,
    threshold=0.06,
    augment=True,
    levels=16,
    seed=0,
    fonts=None,
    ranges=HAN_RANGES,
    cache=True,
    progress=True,
    npz=None,
):
    """The Han glyph set as :class:`HanGlyphs` (see :func:`render_han_glyphs`), rendered once and cached.

    ``npz``: read prebuilt arrays (:func:`save_han_npz`) instead, on a machine without the fonts (the rendering
    settings are then those the file was built with); default ``$PML_DC_HAN_NPZ`` when set and ``fonts`` is not
    given. Otherwise renders from :data:`HAN_FONT_FILES` (or ``fonts``); the cache file in :func:`cache_dir` is
    keyed on the rendering settings and the faces actually used.
    """
    if npz is None and fonts is None:
        npz = os.environ.get(HAN_NPZ_ENV) or None
    if npz is not None:
        glyphs = _read_han_npz(npz)
        if glyphs.images.shape[1:] != (size, size):
            raise ValueError(f"{npz} holds {glyphs.images.shape[1]}px images, not {size}px")
        return glyphs
    faces = han_fonts() if fonts is None else present_faces(as_faces(fonts), "Han font")
    opened = open_faces(faces, int(2 * size * 0.8), "\u6c38\u4e00\u4eba\u5927", "Han font")
    settings = (
        size,
        num_classes,
        min_faces,
        max_per_class,
        threshold,
        augment,
        levels,
        seed,
        tuple(ranges),
        RENDER_VERSION,
    )
    key = repr((settings, [f"{of.face.package}/{of.face.path}#{of.face.index}" for of in opened]))
    path = cache_dir() / f"han_{size}px_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if cache and path.exists():
        return _read_han_npz(path)
    glyphs = render_han_glyphs(
        size=size,
        num_classes=num_classes,
        min_faces=min_faces,
        max_per_class=max_per_class,
        threshold=threshold,
        augment=augment,
        levels=levels,
        seed=seed,
        ranges=ranges,
        fonts=faces,
        progress=progress,
    )
    if cache:
        _write_han_npz(path, glyphs)
    return glyphs


def save_han_npz(path, **kwargs):
    """Write the Han arrays (:func:`han_glyph_arrays` with ``kwargs``) to ``path``, a compressed .npz that
    :func:`load_han` (``npz=path`` or ``$PML_DC_HAN_NPZ``) reads without fonts. Returns the arrays."""
    glyphs = han_glyph_arrays(**kwargs)
    _write_han_npz(path, glyphs)
    return glyphs


def load_han(
    split="test",
    num_pretrain=1000,
    num_train=1000,
    num_val=200,
    num_test=1000,
    seed=0,
    npz=None,
    images_per_class=None,
    **kwargs,
):
    """Many-class zero-shot retrieval on Han characters (like Stanford Online Products: thousands of classes, few
    images each): class-disjoint ``pretrain``, ``train`` and ``eval`` sets as a :class:`HanSplits`.

    The ``num_pretrain + num_train + num_val + num_test`` characters with the most distinct faces are shuffled
    with ``seed`` and cut into the four splits; ``split="test"`` evaluates on the test classes, ``split="val"`` on
    the validation classes (for tuning). Images are float32 in [0, 1] of shape (1, size, size); labels are the
    class ids of :func:`han_glyph_arrays` (``chars[label]`` is the character).

    ``npz`` (or ``$PML_DC_HAN_NPZ``): prebuilt arrays from :func:`save_han_npz` / ``benchmarks/setup_han.sh``;
    without it the fonts of :data:`HAN_FONT_PACKAGES` must be installed. Other ``kwargs`` go to
    :func:`han_glyph_arrays` (``size``, ``min_faces``, ``max_per_class``, ...). ``images_per_class``: keep at most
    that many images of each class (a random subset drawn with ``seed``; each image still from a different face),
    e.g. 15 for a set like a user's held-out glyph set; it also works with a prebuilt ``npz``.

    Example:
        >>> han = load_han("val", npz="han.npz")
        >>> len(np.unique(han.train.labels)), len(np.unique(han.eval.labels))
        (1000, 200)
    """
    if split not in ("test", "val"):
        raise ValueError(f'split must be "test" or "val", got {split!r}')
    sizes = (num_pretrain, num_train, num_val, num_test)
    kwargs.setdefault("num_classes", sum(sizes))
    glyphs = han_glyph_arrays(npz=npz, **kwargs)
    if len(glyphs.chars) < sum(sizes):
        raise ValueError(
            f"the Han set has {len(glyphs.chars)} classes, fewer than the {sum(sizes)} asked for "
            f"(pretrain {num_pretrain}, train {num_train}, validation {num_val}, test {num_test})"
        )
    classes = np.random.default_rng(seed).permutation(sum(sizes))  # the best sum(sizes) classes, shuffled
    bounds = np.cumsum((0,) + sizes)
    pretrain, train, val, test = (classes[bounds[i] : bounds[i + 1]] for i in range(4))
    x, y = glyphs.images, glyphs.labels
    if images_per_class is not None:
        keep = per_class_subset(y, int(images_per_class), np.random.default_rng([seed, 15]))
        x, y = x[keep], y[keep]

    def subset(cls):
        keep = np.isin(y, cls)
        return ArrayDataset((x[keep].astype(np.float32) / 255.0)[:, None], y[keep])

    return HanSplits(subset(pretrain), subset(train), subset(val if split == "val" else test))
