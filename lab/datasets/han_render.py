"""The Han glyph renderer: thousands of Han characters (CJK ideographs) drawn from Debian's CJK font packages
(the font files of ``font_files/han.json``), each image from a different face; the selection of the characters with
the most distinct faces."""

import hashlib
from typing import NamedTuple

import numpy as np

from .fonts import as_faces, font_faces, open_faces, present_faces, read_font_table

HAN_FONT_FILES, _ = read_font_table("han")  # what is left out of the list, and why: the file's "about"
HAN_FONT_PACKAGES = " ".join(HAN_FONT_FILES)
HAN_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF))  # CJK Unified Ideographs and Extension A
HAN_NPZ_ENV = "PML_DC_HAN_NPZ"
RENDER_VERSION = 1  # bump when the rendering or the selection changes (the cache files are keyed on it)


class HanGlyphs(NamedTuple):
    """The Han glyph arrays: ``images`` (uint8, N x size x size), ``labels`` (class of each image, 0 = the
    character with the most distinct faces), ``chars`` (the character of each class), ``faces`` (index into
    ``face_names`` of the face each image was drawn from), ``face_names`` ("package/file#index") and
    ``num_faces`` (distinct faces each character has, before the cap on images per class)."""

    images: np.ndarray
    labels: np.ndarray
    chars: list
    faces: np.ndarray
    face_names: list
    num_faces: np.ndarray


def han_fonts():
    """The font faces of :data:`HAN_FONT_FILES` that are installed (missing files skipped with one warning)."""
    return present_faces(font_faces(HAN_FONT_FILES), "Han font")


def _is_han(cp, blocks=HAN_RANGES):
    """Whether code point ``cp`` is in one of ``blocks`` (default: the Han blocks)."""
    return any(lo <= cp <= hi for lo, hi in blocks)


def _draw_centered(ch, font, big):
    """The glyph of ``ch`` on a ``big`` x ``big`` canvas, its ink box centred (scaled down only if it overflows)."""
    from PIL import Image, ImageDraw

    work = Image.new("L", (2 * big, 2 * big), 0)
    ImageDraw.Draw(work).text((big, big), ch, fill=255, font=font, anchor="mm")
    box = work.getbbox()
    canvas = Image.new("L", (big, big), 0)
    if box is None:
        return canvas
    glyph = work.crop(box)
    w, h = glyph.size
    if max(w, h) > big - 2:
        s = (big - 2) / max(w, h)
        glyph = glyph.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        w, h = glyph.size
    canvas.paste(glyph, ((big - w) // 2, (big - h) // 2))
    return canvas


def _render_han(ch, font, size, rng=None):
    """One Han glyph drawn 2x larger, centred, then (lightly augmented and) downsampled to ``size``."""
    from PIL import Image

    big = 2 * size
    img = _draw_centered(ch, font, big)
    if rng is not None:  # light augmentation: rotation, scale and shift
        angle, scale = rng.uniform(-4, 4), rng.uniform(0.92, 1.06)
        dx, dy = rng.uniform(-2, 2, size=2)
        img = img.rotate(angle, resample=Image.BILINEAR, center=(big / 2, big / 2))
        a, c = 1.0 / scale, big / 2
        img = img.transform(
            (big, big), Image.AFFINE, (a, 0, c - a * c - dx, 0, a, c - a * c - dy), resample=Image.BILINEAR
        )
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _distinct_renderings(images, threshold):
    """Greedy merge of near-identical renderings (in order): indices kept. Two renderings are the same face when
    their L1 distance is below ``threshold`` times their mean ink."""
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    ink = flat.sum(axis=1)
    kept = []
    for i in range(len(flat)):
        if kept:
            k = np.asarray(kept)
            d = np.abs(flat[k] - flat[i]).sum(axis=1) / np.maximum((ink[k] + ink[i]) / 2, 1e-6)
            if d.min() < threshold:
                continue
        kept.append(i)
    return kept


def _pick_faces(face_ids, packages, cap, rng):
    """Up to ``cap`` of ``face_ids``, spread over packages: packages in a random order, one face of each in turn."""
    by_pkg = {}
    for f in face_ids:
        by_pkg.setdefault(packages[f], []).append(f)
    groups = [list(rng.permutation(g)) for _, g in sorted(by_pkg.items())]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    picked = []
    while len(picked) < cap and any(groups):
        for g in groups:
            if g and len(picked) < cap:
                picked.append(int(g.pop()))
    return sorted(picked)


def render_han_glyphs(
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
    progress=True,
    blocks=HAN_RANGES,
):
    """Render the Han set: the ``num_classes`` characters with the most distinct faces (at least ``min_faces``),
    up to ``max_per_class`` images each, every image from a different face. Returns :class:`HanGlyphs`.

    Per character, every face that maps it draws it (faces of a collection sharing its glyph draw it once); blank
    glyphs, glyphs a face gives to several characters (same glyph name, or the same drawing), and near-identical
    drawings (``threshold``, see :func:`_distinct_renderings`: copies of another font, regional faces whose glyph
    does not differ, weights too close to tell apart) are dropped. Characters are taken in order of their count of
    candidate glyphs, an upper bound of their distinct faces, until no later one can enter the selection, so the
    selection is the best ``num_classes`` (ties go to the lower code point). ``ranges``: the code point ranges of
    the candidate characters (default :data:`HAN_RANGES`); ``blocks``: the code point ranges of the script, within
    which a glyph that a face gives to several code points is a placeholder (default the Han blocks, whatever
    ``ranges``; another script's blocks to render it, as ``benchmarks/render_hangul.py`` does). The images of a
    class are a seeded choice spread over the font packages, lightly augmented when ``augment``, and stored with
    ``levels`` gray levels (16: pixel values are multiples of 17), which halves the compressed size of the arrays at
    no visible cost.
    """
    from tqdm import tqdm

    faces = han_fonts() if fonts is None else present_faces(as_faces(fonts), "Han font")
    opened = open_faces(faces, int(2 * size * 0.8), "\u6c38\u4e00\u4eba\u5927", "Han font")
    if not opened:
        raise FileNotFoundError(
            "none of the Han set's font files is installed (or readable): run bash benchmarks/setup_han.sh, or "
            f"apt-get install -y {HAN_FONT_PACKAGES}; or load prebuilt arrays with npz=... or ${HAN_NPZ_ENV}"
        )
    # glyphs each face may draw: code points of the blocks whose glyph name is the face's glyph of no other one
    usable = []
    for of in opened:
        names = {cp: g for cp, g in of.cmap.items() if _is_han(cp, blocks)}  # all the blocks, whatever ``ranges``
        counts = {}
        for g in names.values():
            counts[g] = counts.get(g, 0) + 1
        usable.append({cp: (of.outlines, g) for cp, g in names.items() if counts[g] == 1})
    bound = {}
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            n = len({u[cp] for u in usable if cp in u})
            if n >= min_faces:
                bound[cp] = n
    order = sorted(bound, key=lambda cp: (-bound[cp], cp))
    kept, drawn = {}, {}  # cp -> distinct face ids; (face, hash of its drawing) -> code points
    top = []  # (count, cp) of the best characters so far, sorted best first
    bar = tqdm(desc="Han characters drawn in every face", unit="char", disable=not progress)
    for cp in order:
        if len(top) >= num_classes and bound[cp] < top[num_classes - 1][0]:
            break  # no later character has enough candidate glyphs to enter the selection
        bar.update(1)
        ch, seen, ids, imgs = chr(cp), set(), [], []
        for k, u in enumerate(usable):
            if cp not in u or u[cp] in seen:
                continue
            seen.add(u[cp])
            img = _render_han(ch, opened[k].font, size)
            if img.max() < 96 or img.sum() < 3 * 255:  # blank or a speck
                continue
            drawn.setdefault((k, hashlib.blake2b(img.tobytes(), digest_size=16).digest()), set()).add(cp)
            ids.append(k)
            imgs.append(img)
        ids = [ids[i] for i in _distinct_renderings(np.asarray(imgs), threshold)] if imgs else []
        if len(ids) >= min_faces:
            kept[cp] = ids
            top.append((len(ids), cp))
            top.sort(key=lambda t: (-t[0], t[1]))
            del top[num_classes:]
    bar.close()
    # a drawing that a face gives to several characters is a placeholder, not the glyph of either
    bad = {(k, cp) for (k, _), cps in drawn.items() if len(cps) > 1 for cp in cps}
    counts = {cp: [k for k in ids if (k, cp) not in bad] for cp, ids in kept.items()}
    ranked = sorted((cp for cp, ids in counts.items() if len(ids) >= min_faces), key=lambda cp: (-len(counts[cp]), cp))[
        :num_classes
    ]
    packages = [of.face.package for of in opened]
    images, labels, face_ids = [], [], []
    for c, cp in enumerate(tqdm(ranked, desc="drawing the selected faces", disable=not progress)):
        rng = np.random.default_rng([seed, cp])
        for k in _pick_faces(counts[cp], packages, max_per_class, rng):
            img = _render_han(chr(cp), opened[k].font, size, rng if augment else None)
            step = 255 / (levels - 1)
            images.append(np.round(np.round(img / step) * step) if levels < 256 else img)
            labels.append(c)
            face_ids.append(k)
    return HanGlyphs(
        images=np.asarray(images, dtype=np.uint8).reshape(-1, size, size),
        labels=np.asarray(labels, dtype=np.int64),
        chars=[chr(cp) for cp in ranked],
        faces=np.asarray(face_ids, dtype=np.int64),
        face_names=[f"{of.face.package}/{of.face.name}" for of in opened],
        num_faces=np.asarray([len(counts[cp]) for cp in ranked], dtype=np.int64),
    )
