"""Offline datasets for demos, tests and benchmarks (nothing is downloaded at run time).

- :func:`load_digits`: scikit-learn's bundled 8x8 digits, the quickest check.
- :func:`load_fashion_mnist`: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.
- :func:`load_glyphs`: a many-class zero-shot set of characters rendered from the fonts installed on the machine
  (Debian font packages, plus the STIX fonts bundled with matplotlib), rendered once and cached.

All return zero-shot splits (train and test classes disjoint) as :class:`ArrayDataset` pairs.
"""

import gzip
import hashlib
import os
import struct
import unicodedata
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FONT_DIRS = ("/usr/share/fonts", "/usr/share/texmf/fonts/opentype")
# fonts whose letters are pictures (dingbats, symbols, keyboard caps), not glyphs of the character
EXCLUDED_FONTS = ("D050000L", "StandardSymbols", "LinBiolinum_K", "Dingbat", "Symbol", "LastResort")
GLYPH_FONT_PACKAGES = (
    "fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf fonts-urw-base35 fonts-texgyre "
    "fonts-croscore fonts-go fonts-linuxlibertine fonts-open-sans"
)


class ArrayDataset(Dataset):
    """(features, label) pairs from in-memory arrays, the way PML's trainers and testers expect them.

    Example:
        >>> ds = ArrayDataset(np.zeros((4, 1, 16, 16)), [0, 0, 1, 1])
        >>> x, y = ds[0]  # a float32 tensor of shape (1, 16, 16) and the int 0
    """

    def __init__(self, data, labels):
        self.data = torch.as_tensor(np.asarray(data), dtype=torch.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.data) != len(self.labels):
            raise ValueError(f"{len(self.data)} samples but {len(self.labels)} labels")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.data[i], int(self.labels[i])


def zero_shot_split(data, labels, train_classes):
    """Split by class: the classes in ``train_classes`` train, all others test (disjoint, as in the papers)."""
    labels = np.asarray(labels)
    is_train = np.isin(labels, np.asarray(train_classes))
    return ArrayDataset(data[is_train], labels[is_train]), ArrayDataset(data[~is_train], labels[~is_train])


def _per_class_subset(labels, max_per_class, rng):
    """Indices keeping at most ``max_per_class`` random samples of each class (sorted, so order is stable)."""
    if max_per_class is None:
        return np.arange(len(labels))
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def load_digits(num_train_classes=5):
    """scikit-learn's bundled 8x8 digits (1,797 images), split zero-shot: classes < num_train_classes train."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return zero_shot_split(x, d.target, np.arange(num_train_classes))


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path):
    """Read an idx file (optionally gzipped), the format of (Fashion-)MNIST, into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path} is not an idx file of unsigned bytes")
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def _fashion_file(root, stem):
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install Debian's package: "
        "apt-get install -y dataset-fashion-mnist (or run bash scripts/setup.sh), or pass root=<folder with the "
        "idx files>."
    )


def load_fashion_mnist(root=None, num_train_classes=5, max_per_class=None, seed=0):
    """Fashion-MNIST (70,000 28x28 images, 10 classes), split zero-shot by class.

    Both of the original train and test files are pooled, then classes ``< num_train_classes`` train (T-shirt,
    trouser, pullover, dress, coat) and the others test (sandal, shirt, sneaker, bag, ankle boot). Images are
    float32 in [0, 1] of shape (1, 28, 28).

    Args:
        root: folder with the idx files; default ``$PML_DC_FASHION_MNIST`` or /usr/share/datasets/fashion-mnist,
            where Debian's ``dataset-fashion-mnist`` package puts them.
        max_per_class: keep at most this many images of each class (a random, seeded subset) for quick runs.

    Example:
        >>> train_set, test_set = load_fashion_mnist(max_per_class=1000)
        >>> train_set[0][0].shape
        torch.Size([1, 28, 28])
    """
    root = Path(root or os.environ.get("PML_DC_FASHION_MNIST", FASHION_MNIST_DIR))
    images, labels = [], []
    for prefix in ("train", "t10k"):
        images.append(read_idx(_fashion_file(root, f"{prefix}-images-idx3-ubyte")))
        labels.append(read_idx(_fashion_file(root, f"{prefix}-labels-idx1-ubyte")))
    x, y = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    keep = _per_class_subset(y, max_per_class, np.random.default_rng(seed))
    x = (x[keep].astype(np.float32) / 255.0)[:, None]
    return zero_shot_split(x, y[keep], np.arange(num_train_classes))


# ---------------------------------------------------------------------------------------------- glyphs
def cache_dir():
    """Where rendered datasets are cached: ``$PML_DC_CACHE`` or ~/.cache/pml_divide_conquer."""
    return Path(os.environ.get("PML_DC_CACHE", Path.home() / ".cache" / "pml_divide_conquer"))


def candidate_characters():
    """Letters, digits, punctuation and symbols of the Latin, Greek and Cyrillic blocks (plus a few others)."""
    ranges = [(0x21, 0x7E), (0xA1, 0x24F), (0x370, 0x3FF), (0x400, 0x45F), (0x2010, 0x2044), (0x20A0, 0x20BF),
              (0x2100, 0x2138), (0x2190, 0x21FF), (0x2200, 0x22FF)]
    chars = []
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if unicodedata.category(ch)[0] in "LNPS" and not unicodedata.combining(ch):
                chars.append(ch)
    return chars


def find_fonts(dirs=FONT_DIRS):
    """Outline fonts (.ttf/.otf) under ``dirs`` plus matplotlib's STIX fonts; one file per name, sorted."""
    paths = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")) if Path(d).is_dir() else ():
            if p.suffix.lower() in (".ttf", ".otf") and not any(x in p.name for x in EXCLUDED_FONTS):
                paths.setdefault(p.name, p)
    try:
        import matplotlib

        for p in sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("STIXGeneral*.ttf")):
            paths.setdefault(p.name, p)
    except ImportError:
        pass
    return [paths[k] for k in sorted(paths)]


def _font_charset(path):
    from fontTools.ttLib import TTFont

    try:
        with TTFont(str(path), lazy=True, fontNumber=0) as f:
            cmap = f.getBestCmap() or {}
    except Exception:  # unreadable or symbol-encoded font: skip it
        return set()
    return set(cmap)


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
    """
    from PIL import ImageFont
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    fonts = find_fonts() if fonts is None else [Path(f) for f in fonts]
    charsets = [_font_charset(f) for f in fonts]
    loaded = {}

    def font(i):
        if i not in loaded:
            loaded[i] = ImageFont.truetype(str(fonts[i]), size=int(2 * size * 0.75))
        return loaded[i]

    candidates = []
    for ch in candidate_characters():
        have = [i for i, cs in enumerate(charsets) if ord(ch) in cs]
        if len(have) >= min_fonts:
            candidates.append((ch, have))
    candidates.sort(key=lambda c: (-len(c[1]), ord(c[0])))
    # a fixed set of reference fonts (the first that cover every candidate) to detect look-alike characters
    ref = [i for i in range(len(fonts)) if all(i in have for _, have in candidates)][:4]
    kept, kept_refs = [], []
    for ch, have in candidates:
        sig = np.stack([_render(ch, font(i), size) for i in (ref or have[:4])]).astype(np.float32) / 255.0
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
            img = _render(ch, font(int(order[attempt % len(order)])), size, rng)
            if img.max() >= 96:  # skip fonts whose glyph is empty or too faint at this size
                images[c * images_per_class + j] = img
                j += 1
                if j == images_per_class:
                    break
        if j < images_per_class:
            raise RuntimeError(f"could not render {images_per_class} visible images of {ch!r}")
    return images, labels, [ch for ch, _ in kept]


def load_glyphs(split="test", size=16, num_test_classes=None, val_fraction=0.2, seed=0, cache=True, progress=True,
                **render_kwargs):
    """Many-class zero-shot glyph retrieval: characters rendered from real fonts (rendered once, then cached).

    Classes are shuffled with a fixed seed: the first half trains, the other half tests (or
    ``num_test_classes`` of them). ``split="test"`` returns (train, test). ``split="val"`` is for tuning: it
    returns (train minus validation classes, validation classes), where the ``val_fraction`` of the training
    classes held out never touch the test classes. Images are float32 in [0, 1] of shape (1, size, size).

    Needs Pillow and fontTools (both installed with matplotlib) and fonts; Debian's font packages:
    ``apt-get install -y fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 ...`` (see
    ``scripts/setup.sh``). The cache lives in :func:`cache_dir` (``$PML_DC_CACHE``); its file name depends on the
    rendering settings and the list of fonts found.

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


def glyph_arrays(size=16, seed=0, cache=True, progress=True, **render_kwargs):
    """(images uint8 N x size x size, labels, chars) of the glyph set, from the cache when it is there."""
    fonts = find_fonts()
    if not fonts:
        raise FileNotFoundError(
            f"no .ttf/.otf fonts found in {', '.join(FONT_DIRS)}: install some, e.g. apt-get install -y "
            f"{GLYPH_FONT_PACKAGES} (or run bash scripts/setup.sh)"
        )
    key = repr((size, seed, sorted(render_kwargs.items()), [f.name for f in fonts], 2))  # 2: renderer version
    path = cache_dir() / f"glyphs_{size}px_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if cache and path.exists():
        with np.load(path) as z:
            return z["images"], z["labels"], list(z["chars"])
    images, labels, chars = render_glyphs(size=size, seed=seed, fonts=fonts, progress=progress, **render_kwargs)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, images=images, labels=labels, chars=np.array(chars))
        os.replace(tmp, path)
    return images, labels, chars
