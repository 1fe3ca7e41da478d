"""The glyph set: a many-class zero-shot set of Latin, Greek and Cyrillic characters rendered from a fixed list of
font files of Debian packages (plus the STIX fonts bundled with matplotlib), rendered once and cached."""

import hashlib
import unicodedata
import warnings

import numpy as np

from .arrays import ArrayDataset
from .cache import cache_dir, save_npz
from .fonts import as_faces, font_faces, open_faces, present_faces, read_font_table

# the list of font files (font_files/glyphs.json), less the fonts whose letters are pictures (dingbats, symbols,
# keyboard caps), not glyphs of the character: file names containing any of EXCLUDED_FONTS
GLYPH_FONT_FILES, _table = read_font_table("glyphs")
EXCLUDED_FONTS = tuple(_table["exclude"])
GLYPH_FONT_PACKAGES = " ".join(p for p in GLYPH_FONT_FILES if p.startswith("fonts-"))


def glyph_fonts():
    """The font faces of the glyph set (:data:`GLYPH_FONT_FILES` less :data:`EXCLUDED_FONTS`) that are installed,
    sorted by file name; missing files are skipped with one warning naming their packages."""
    faces = present_faces(font_faces(GLYPH_FONT_FILES, exclude=EXCLUDED_FONTS), "glyph font")
    return sorted(faces, key=lambda f: f.name)


def candidate_characters():
    """Letters, digits, punctuation and symbols of the Latin, Greek and Cyrillic blocks (plus a few others)."""
    ranges = [
        (0x21, 0x7E),
        (0xA1, 0x24F),
        (0x370, 0x3FF),
        (0x400, 0x45F),
        (0x2010, 0x2044),
        (0x20A0, 0x20BF),
        (0x2100, 0x2138),
        (0x2190, 0x21FF),
        (0x2200, 0x22FF),
    ]
    chars = []
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if unicodedata.category(ch)[0] in "LNPS" and not unicodedata.combining(ch):
                chars.append(ch)
    return chars


def _render(ch, font, size, rng=None):
    """One glyph, drawn 2x larger with its baseline at a fixed height, then (augmented and) downsampled."""
    from PIL import Image, ImageDraw

    big = 2 * size
    img = Image.new("L", (big, big), 0)
    ImageDraw.Draw(img).text((big / 2, big * 0.70), ch, fill=255, font=font, anchor="ms")
    if rng is not None:  # light augmentation: rotation, scale and shift
        angle, scale = rng.uniform(-6, 6), rng.uniform(0.9, 1.1)
        dx, dy = rng.uniform(-1.5, 1.5, size=2)
        img = img.rotate(angle, resample=Image.BILINEAR, center=(big / 2, big / 2))
        a = 1.0 / scale
        cx = big / 2
        img = img.transform(
            (big, big), Image.AFFINE, (a, 0, cx - a * cx - dx, 0, a, cx - a * cx - dy), resample=Image.BILINEAR
        )
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def render_glyphs(size=16, min_fonts=24, images_per_class=24, max_classes=400, seed=0, fonts=None, progress=True):
    """Render up to ``max_classes`` characters, each covered by at least ``min_fonts`` fonts (the most widely
    covered first: letters, digits and punctuation before rarer symbols). Returns (images, labels, chars).

    Each class gets ``images_per_class`` images, from as many different fonts as possible (a seeded random
    choice among the fonts that have the character), each lightly augmented. Characters whose rendering is
    near-identical to one already kept (Latin A, Greek Alpha and Cyrillic A; "|" and "l" in many fonts) are
    dropped, so every class is a visually distinct glyph.

    ``fonts``: font files (paths or :class:`FontFace`), default :func:`glyph_fonts`; faces that fontTools or
    Pillow cannot read or draw are skipped with one warning.
    """
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    opened = _open_glyph_fonts(fonts, size)
    charsets = [set(f.cmap) for f in opened]
    failed = set()

    def render(ch, i, rng=None):
        try:
            return _render(ch, opened[i].font, size, rng)
        except OSError:  # a glyph this face cannot draw (its other glyphs passed the probe): an empty image
            failed.add(opened[i].face.name)
            return np.zeros((size, size), dtype=np.uint8)

    candidates = []
    for ch in candidate_characters():
        have = [i for i, cs in enumerate(charsets) if ord(ch) in cs]
        if len(have) >= min_fonts:
            candidates.append((ch, have))
    candidates.sort(key=lambda c: (-len(c[1]), ord(c[0])))
    # a fixed set of reference fonts (the first that cover every candidate) to detect look-alike characters
    ref = [i for i in range(len(opened)) if all(i in have for _, have in candidates)][:4]
    kept, kept_refs = [], []
    for ch, have in candidates:
        sig = np.stack([render(ch, i) for i in (ref or have[:4])]).astype(np.float32) / 255.0
        if sig.sum() < 1.0:  # blank in the reference fonts
            continue
        if any(np.abs(sig - other).sum() < 0.15 * min(sig.sum(), other.sum()) for other in kept_refs):
            continue
        kept.append((ch, have))
        kept_refs.append(sig)
        if max_classes is not None and len(kept) == max_classes:
            break
    kept.sort(key=lambda c: ord(c[0]))
    images = np.zeros((len(kept) * images_per_class, size, size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(kept)), images_per_class)
    for c, (ch, have) in enumerate(tqdm(kept, desc="rendering glyphs", disable=not progress)):
        order = rng.permutation(have)
        j = 0
        for attempt in range(4 * images_per_class):
            img = render(ch, int(order[attempt % len(order)]), rng)
            if img.max() >= 96:  # skip fonts whose glyph is empty or too faint at this size
                images[c * images_per_class + j] = img
                j += 1
                if j == images_per_class:
                    break
        if j < images_per_class:
            raise RuntimeError(f"could not render {images_per_class} visible images of {ch!r}")
    if failed:
        warnings.warn(
            f"some glyphs could not be drawn (Pillow error), left out: fonts {', '.join(sorted(failed))}", stacklevel=3
        )
    return images, labels, [ch for ch, _ in kept]


def load_glyphs(
    split="test", size=16, num_test_classes=None, val_fraction=0.2, seed=0, cache=True, progress=True, **render_kwargs
):
    """Many-class zero-shot glyph retrieval: characters rendered from real fonts (rendered once, then cached).

    Classes are shuffled with a fixed seed: the first half trains, the other half tests (or
    ``num_test_classes`` of them). ``split="test"`` returns (train, test). ``split="val"`` is for tuning: it
    returns (train minus validation classes, validation classes), where the ``val_fraction`` of the training
    classes held out never touch the test classes. Images are float32 in [0, 1] of shape (1, size, size).

    Needs Pillow and fontTools (both installed with matplotlib) and the font files listed in
    :data:`GLYPH_FONT_FILES`, of Debian's packages :data:`GLYPH_FONT_PACKAGES` (``apt-get install -y
    fonts-dejavu-core fonts-liberation ...``, see ``scripts/setup.sh``) plus matplotlib's STIX fonts; other
    installed fonts are never used. The cache lives in :func:`cache_dir` (``$PML_DC_CACHE``); its file name depends
    on the rendering settings and the list of font files used.

    Example:
        >>> train_set, test_set = load_glyphs("test")
        >>> train_set, val_set = load_glyphs("val")      # tune here, report on "test"
        >>> len(np.unique(test_set.labels))
    """
    if split not in ("test", "val"):
        raise ValueError(f'split must be "test" or "val", got {split!r}')
    images, labels, chars = glyph_arrays(size=size, seed=seed, cache=cache, progress=progress, **render_kwargs)
    classes = np.random.default_rng(seed).permutation(len(chars))
    n_test = num_test_classes or len(chars) // 2
    test_classes, train_classes = classes[:n_test], classes[n_test:]
    if split == "val":
        n_val = max(2, int(round(val_fraction * len(train_classes))))
        test_classes, train_classes = train_classes[:n_val], train_classes[n_val:]
    x = (images.astype(np.float32) / 255.0)[:, None]
    is_train, is_test = np.isin(labels, train_classes), np.isin(labels, test_classes)
    return ArrayDataset(x[is_train], labels[is_train]), ArrayDataset(x[is_test], labels[is_test])


def _open_glyph_fonts(fonts, size):
    faces = glyph_fonts() if fonts is None else present_faces(as_faces(fonts), "glyph font")
    return open_faces(faces, int(2 * size * 0.75), candidate_characters(), "glyph font")


def glyph_arrays(size=16, seed=0, cache=True, progress=True, fonts=None, **render_kwargs):
    """(images uint8 N x size x size, labels, chars) of the glyph set, from the cache when it is there.

    ``fonts``: font files (paths or :class:`FontFace`), default :func:`glyph_fonts` (the files of
    :data:`GLYPH_FONT_FILES`). The cache file is keyed on the rendering settings and on the fonts actually used:
    a machine missing a package, or with a face Pillow cannot draw, gets its own cache (and a warning).
    """
    opened = _open_glyph_fonts(fonts, size)
    if not opened:
        raise FileNotFoundError(
            "none of the glyph set's font files is installed (or readable): install them with apt-get install -y "
            f"{GLYPH_FONT_PACKAGES} (or run bash scripts/setup.sh)"
        )
    used = [f.face for f in opened]
    key = repr((size, seed, sorted(render_kwargs.items()), [f.name for f in used], 2))  # 2: renderer version
    path = cache_dir() / f"glyphs_{size}px_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if cache and path.exists():
        with np.load(path) as z:
            return z["images"], z["labels"], list(z["chars"])
    images, labels, chars = render_glyphs(size=size, seed=seed, fonts=used, progress=progress, **render_kwargs)
    if cache:
        save_npz(path, images=images, labels=labels, chars=np.array(chars))
    return images, labels, chars
