"""Offline datasets for demos, tests and benchmarks (nothing is downloaded at run time).

- :func:`load_digits`: scikit-learn's bundled 8x8 digits, the quickest check.
- :func:`load_fashion_mnist`: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.
- :func:`load_glyphs`: a many-class zero-shot set of Latin, Greek and Cyrillic characters rendered from a fixed
  list of font files of Debian packages (plus the STIX fonts bundled with matplotlib), rendered once and cached.

All return zero-shot splits (train and test classes disjoint) as :class:`ArrayDataset` pairs.
"""

import gzip
import hashlib
import os
import struct
import unicodedata
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
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


def pass_through_collate(batch):
    """The ``collate_fn`` of :class:`BatchArrayDataset`: its batches come whole from ``__getitems__``."""
    return batch


class BatchArrayDataset(ArrayDataset):
    """An :class:`ArrayDataset` that serves whole batches: one tensor indexing per batch instead of one
    ``__getitem__`` per sample and a collation that stacks them.

    PyTorch's DataLoader calls ``dataset.__getitems__(indices)`` once per batch when the dataset has it; this one
    returns ``(data[indices], labels[indices])``, the (features, labels) pair PML expects, with labels an int64 CPU
    tensor. Pass :func:`pass_through_collate` (also ``BatchArrayDataset.collate_fn``) as ``collate_fn`` to PML's
    trainers (``trainers.MetricLossOnly(..., collate_fn=...)``) and testers (``tester.test(..., collate_fn=...)``,
    ``tester.get_all_embeddings(..., collate_fn=...)``): the default collation would take the pair apart.

    ``.to(device)`` (or ``device=``) moves the features, e.g. onto the GPU once, so that no batch is copied there
    at each step (labels stay on the CPU, where PML turns them into numpy arrays anyway). Data on a GPU needs
    ``dataloader_num_workers=0`` (worker processes cannot share CUDA tensors); a batch is a single indexing, so
    workers would only add their transfer cost.

    Example:
        >>> ds = BatchArrayDataset(np.zeros((8, 1, 16, 16)), [0, 0, 1, 1, 2, 2, 3, 3])
        >>> x, y = ds.__getitems__([0, 2, 4])  # a (3, 1, 16, 16) float32 tensor, tensor([0, 1, 2])
        >>> trainer = trainers.MetricLossOnly(..., dataset=ds.to("cuda"), dataloader_num_workers=0,
        ...                                   collate_fn=ds.collate_fn)
    """

    collate_fn = staticmethod(pass_through_collate)

    def __init__(self, data, labels, device=None):
        super().__init__(data, labels)
        self.label_tensor = torch.from_numpy(self.labels)
        if device is not None:
            self.to(device)

    @classmethod
    def from_dataset(cls, dataset, device=None):
        """The same samples as an :class:`ArrayDataset` ``dataset`` (its features tensor is shared, not copied)."""
        out = cls(dataset.data[:0], dataset.labels[:0])
        out.data, out.labels = dataset.data, np.asarray(dataset.labels, dtype=np.int64)
        out.label_tensor = torch.from_numpy(out.labels)
        if len(out.data) != len(out.labels):
            raise ValueError(f"{len(out.data)} samples but {len(out.labels)} labels")
        return out.to(device) if device is not None else out

    @property
    def device(self):
        return self.data.device

    def to(self, device):
        """Move the features to ``device`` (in place); returns the dataset."""
        self.data = self.data.to(device)
        return self

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.data[idx.to(self.data.device)], self.label_tensor[idx]


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


# ---------------------------------------------------------------------------------------------- fonts
# Every glyph set is rendered from an explicit list of font files of named Debian packages, never from whatever
# fonts a machine has installed: two machines with the same packages render the same set. A list maps each package
# to its folder and its file names (as ``dpkg -L <package>`` lists them on Debian 12); ``name#0,1`` names faces of
# a collection (.ttc), a plain name face 0. The folder "matplotlib:<sub>" is inside matplotlib's data folder.


class FontFace(NamedTuple):
    """One face of a font file of a package: index 0 of a .ttf/.otf file, or one face of a .ttc collection."""

    package: str
    path: str
    index: int = 0

    @property
    def name(self):
        """The file name, plus ``#index`` for a face of a collection."""
        name = Path(self.path).name
        return f"{name}#{self.index}" if name.lower().endswith((".ttc", ".otc")) else name


def font_faces(files, exclude=()):
    """The :class:`FontFace` list of a ``{package: (folder, names)}`` table (file names containing any of
    ``exclude`` left out), in the table's order."""
    faces = []
    for package, (folder, names) in files.items():
        if folder.startswith("matplotlib:"):
            try:
                import matplotlib

                folder = str(Path(matplotlib.get_data_path()) / folder.split(":", 1)[1])
            except ImportError:
                folder = "/nonexistent/matplotlib/" + folder.split(":", 1)[1]
        for name in names.split():
            name, _, indices = name.partition("#")
            if any(x in name for x in exclude):
                continue
            for i in [int(j) for j in indices.split(",")] if indices else [0]:
                faces.append(FontFace(package, str(Path(folder) / name), i))
    return faces


def present_faces(faces, what="font"):
    """The faces whose file exists; ONE warning names the packages of the missing files (apt-get install ...)."""
    faces = [f if isinstance(f, FontFace) else FontFace("", str(f)) for f in faces]
    present = [f for f in faces if os.path.isfile(f.path)]
    missing = sorted({f.path for f in faces} - {f.path for f in present})
    if missing:
        packages = sorted({f.package or "?" for f in faces if f.path in missing})
        debian = " ".join(p for p in packages if p.startswith("fonts-"))
        warnings.warn(
            f"{len(missing)} {what} file(s) missing, skipped (the rendered set differs from the reference one and gets "
            f"its own cache): {', '.join(Path(m).name for m in missing[:5])}{' ...' if len(missing) > 5 else ''} of "
            f"package(s) {', '.join(packages)}" + (f"; install with: apt-get install -y {debian}" if debian else ""),
            stacklevel=3,
        )
    return present


def open_faces(faces, pixel_size, probe_chars, what="font"):
    """Load each face in fontTools (its character map) and in Pillow (at ``pixel_size``), and draw the first
    character of ``probe_chars`` that it has. Faces that fail (unreadable file, bad hinting code: Pillow's
    "invalid opcode", ...) are skipped with ONE warning naming them.

    Returns a list of (face, cmap, Pillow font), cmap mapping code points to glyph names.
    """
    from fontTools.ttLib import TTFont
    from PIL import Image, ImageDraw, ImageFont

    faces = list(faces)
    stamp = [(os.stat(f.path).st_mtime_ns, os.stat(f.path).st_size) if os.path.isfile(f.path) else None for f in faces]
    memo_key = (tuple(faces), tuple(stamp), pixel_size, tuple(probe_chars))
    if memo_key in _OPENED:  # opening ~200 faces takes a second: once per process
        return list(_OPENED[memo_key])
    opened, failed = [], []
    for face in faces:
        try:
            with open(face.path, "rb") as file, TTFont(file, lazy=True, fontNumber=face.index) as f:
                cmap = dict(f.getBestCmap() or {})
            font = ImageFont.truetype(face.path, size=pixel_size, index=face.index)
            probe = next((ch for ch in probe_chars if ord(ch) in cmap), None)
            if probe is not None:
                ImageDraw.Draw(Image.new("L", (2 * pixel_size, 2 * pixel_size))).text((0, 0), probe, fill=255, font=font)
        except Exception as e:  # noqa: BLE001 - any font that cannot be read or drawn is skipped
            failed.append(f"{face.name} ({face.package or face.path}): {type(e).__name__}: {e}")
            continue
        opened.append((face, cmap, font))
    if failed:
        warnings.warn(
            f"{len(failed)} {what} face(s) cannot be read or drawn by fontTools/Pillow, skipped: " + "; ".join(failed),
            stacklevel=3,
        )
    _OPENED[memo_key] = opened
    return list(opened)


_OPENED = {}


# ---------------------------------------------------------------------------------------------- glyphs
# fonts whose letters are pictures (dingbats, symbols, keyboard caps), not glyphs of the character
EXCLUDED_FONTS = ("D050000L", "StandardSymbols", "LinBiolinum_K", "Dingbat", "Symbol", "LastResort")
GLYPH_FONT_FILES = {
    "fonts-croscore": ("/usr/share/fonts/truetype/croscore", """
        Arimo-Bold.ttf Arimo-BoldItalic.ttf Arimo-Italic.ttf Arimo-Regular.ttf Cousine-Bold.ttf
        Cousine-BoldItalic.ttf Cousine-Italic.ttf Cousine-Regular.ttf Tinos-Bold.ttf Tinos-BoldItalic.ttf
        Tinos-Italic.ttf Tinos-Regular.ttf
    """),
    "fonts-dejavu-core": ("/usr/share/fonts/truetype/dejavu", """
        DejaVuSans-Bold.ttf DejaVuSans.ttf DejaVuSansMono-Bold.ttf DejaVuSansMono.ttf DejaVuSerif-Bold.ttf
        DejaVuSerif.ttf
    """),
    "fonts-dejavu-extra": ("/usr/share/fonts/truetype/dejavu", """
        DejaVuMathTeXGyre.ttf DejaVuSans-BoldOblique.ttf DejaVuSans-ExtraLight.ttf DejaVuSans-Oblique.ttf
        DejaVuSansCondensed-Bold.ttf DejaVuSansCondensed-BoldOblique.ttf DejaVuSansCondensed-Oblique.ttf
        DejaVuSansCondensed.ttf DejaVuSansMono-BoldOblique.ttf DejaVuSansMono-Oblique.ttf DejaVuSerif-BoldItalic.ttf
        DejaVuSerif-Italic.ttf DejaVuSerifCondensed-Bold.ttf DejaVuSerifCondensed-BoldItalic.ttf
        DejaVuSerifCondensed-Italic.ttf DejaVuSerifCondensed.ttf
    """),
    "fonts-freefont-ttf": ("/usr/share/fonts/truetype/freefont", """
        FreeMono.ttf FreeMonoBold.ttf FreeMonoBoldOblique.ttf FreeMonoOblique.ttf FreeSans.ttf FreeSansBold.ttf
        FreeSansBoldOblique.ttf FreeSansOblique.ttf FreeSerif.ttf FreeSerifBold.ttf FreeSerifBoldItalic.ttf
        FreeSerifItalic.ttf
    """),
    "fonts-go": ("/usr/share/fonts/fonts-go", """
        Go-Bold-Italic.ttf Go-Bold.ttf Go-Italic.ttf Go-Medium-Italic.ttf Go-Medium.ttf Go-Mono-Bold-Italic.ttf
        Go-Mono-Bold.ttf Go-Mono-Italic.ttf Go-Mono.ttf Go-Regular.ttf Go-Smallcaps-Italic.ttf Go-Smallcaps.ttf
    """),
    "fonts-liberation": ("/usr/share/fonts/truetype/liberation", """
        LiberationMono-Bold.ttf LiberationMono-BoldItalic.ttf LiberationMono-Italic.ttf LiberationMono-Regular.ttf
        LiberationSans-Bold.ttf LiberationSans-BoldItalic.ttf LiberationSans-Italic.ttf LiberationSans-Regular.ttf
        LiberationSansNarrow-Bold.ttf LiberationSansNarrow-BoldItalic.ttf LiberationSansNarrow-Italic.ttf
        LiberationSansNarrow-Regular.ttf LiberationSerif-Bold.ttf LiberationSerif-BoldItalic.ttf
        LiberationSerif-Italic.ttf LiberationSerif-Regular.ttf
    """),
    "fonts-linuxlibertine": ("/usr/share/fonts/opentype/linux-libertine", """
        LinBiolinum_K.otf LinBiolinum_R.otf LinBiolinum_RB.otf LinBiolinum_RI.otf LinLibertine_DR.otf
        LinLibertine_I.otf LinLibertine_M.otf LinLibertine_R.otf LinLibertine_RB.otf LinLibertine_RBI.otf
        LinLibertine_RI.otf LinLibertine_RZ.otf LinLibertine_RZI.otf
    """),
    "fonts-open-sans": ("/usr/share/fonts/truetype/open-sans", """
        OpenSans-Bold.ttf OpenSans-BoldItalic.ttf OpenSans-CondBold.ttf OpenSans-CondLight.ttf
        OpenSans-CondLightItalic.ttf OpenSans-ExtraBold.ttf OpenSans-ExtraBoldItalic.ttf OpenSans-Italic.ttf
        OpenSans-Light.ttf OpenSans-LightItalic.ttf OpenSans-Regular.ttf OpenSans-Semibold.ttf
        OpenSans-SemiboldItalic.ttf
    """),
    "fonts-texgyre": ("/usr/share/texmf/fonts/opentype/public/tex-gyre", """
        texgyreadventor-bold.otf texgyreadventor-bolditalic.otf texgyreadventor-italic.otf
        texgyreadventor-regular.otf texgyrebonum-bold.otf texgyrebonum-bolditalic.otf texgyrebonum-italic.otf
        texgyrebonum-regular.otf texgyrechorus-mediumitalic.otf texgyrecursor-bold.otf texgyrecursor-bolditalic.otf
        texgyrecursor-italic.otf texgyrecursor-regular.otf texgyreheros-bold.otf texgyreheros-bolditalic.otf
        texgyreheros-italic.otf texgyreheros-regular.otf texgyreheroscn-bold.otf texgyreheroscn-bolditalic.otf
        texgyreheroscn-italic.otf texgyreheroscn-regular.otf texgyrepagella-bold.otf texgyrepagella-bolditalic.otf
        texgyrepagella-italic.otf texgyrepagella-regular.otf texgyreschola-bold.otf texgyreschola-bolditalic.otf
        texgyreschola-italic.otf texgyreschola-regular.otf texgyretermes-bold.otf texgyretermes-bolditalic.otf
        texgyretermes-italic.otf texgyretermes-regular.otf
    """),
    "fonts-urw-base35": ("/usr/share/fonts/opentype/urw-base35", """
        C059-BdIta.otf C059-Bold.otf C059-Italic.otf C059-Roman.otf D050000L.otf NimbusMonoPS-Bold.otf
        NimbusMonoPS-BoldItalic.otf NimbusMonoPS-Italic.otf NimbusMonoPS-Regular.otf NimbusRoman-Bold.otf
        NimbusRoman-BoldItalic.otf NimbusRoman-Italic.otf NimbusRoman-Regular.otf NimbusSans-Bold.otf
        NimbusSans-BoldItalic.otf NimbusSans-Italic.otf NimbusSans-Regular.otf NimbusSansNarrow-Bold.otf
        NimbusSansNarrow-BoldOblique.otf NimbusSansNarrow-Oblique.otf NimbusSansNarrow-Regular.otf P052-Bold.otf
        P052-BoldItalic.otf P052-Italic.otf P052-Roman.otf StandardSymbolsPS.otf URWBookman-Demi.otf
        URWBookman-DemiItalic.otf URWBookman-Light.otf URWBookman-LightItalic.otf URWGothic-Book.otf
        URWGothic-BookOblique.otf URWGothic-Demi.otf URWGothic-DemiOblique.otf Z003-MediumItalic.otf
    """),
    "matplotlib": ("matplotlib:fonts/ttf", "STIXGeneral.ttf STIXGeneralBol.ttf STIXGeneralBolIta.ttf STIXGeneralItalic.ttf"),
}
GLYPH_FONT_PACKAGES = " ".join(p for p in GLYPH_FONT_FILES if p.startswith("fonts-"))


def cache_dir():
    """Where rendered datasets are cached: ``$PML_DC_CACHE`` or ~/.cache/pml_divide_conquer."""
    return Path(os.environ.get("PML_DC_CACHE", Path.home() / ".cache" / "pml_divide_conquer"))


def glyph_fonts():
    """The font faces of the glyph set (:data:`GLYPH_FONT_FILES` less :data:`EXCLUDED_FONTS`) that are installed,
    sorted by file name; missing files are skipped with one warning naming their packages."""
    faces = present_faces(font_faces(GLYPH_FONT_FILES, exclude=EXCLUDED_FONTS), "glyph font")
    return sorted(faces, key=lambda f: f.name)


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


def _as_faces(fonts):
    return [f if isinstance(f, FontFace) else FontFace("", str(f)) for f in fonts]


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
    charsets = [set(cmap) for _, cmap, _ in opened]
    failed = set()

    def render(ch, i, rng=None):
        try:
            return _render(ch, opened[i][2], size, rng)
        except OSError:  # a glyph this face cannot draw (its other glyphs passed the probe): an empty image
            failed.add(opened[i][0].name)
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
        warnings.warn(f"some glyphs could not be drawn (Pillow error), left out: fonts {', '.join(sorted(failed))}",
                      stacklevel=3)
    return images, labels, [ch for ch, _ in kept]


def load_glyphs(split="test", size=16, num_test_classes=None, val_fraction=0.2, seed=0, cache=True, progress=True,
                **render_kwargs):
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
    faces = glyph_fonts() if fonts is None else present_faces(_as_faces(fonts), "glyph font")
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
    used = [face for face, _, _ in opened]
    key = repr((size, seed, sorted(render_kwargs.items()), [f.name for f in used], 2))  # 2: renderer version
    path = cache_dir() / f"glyphs_{size}px_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if cache and path.exists():
        with np.load(path) as z:
            return z["images"], z["labels"], list(z["chars"])
    images, labels, chars = render_glyphs(size=size, seed=seed, fonts=used, progress=progress, **render_kwargs)
    if cache:
        _save_npz(path, images=images, labels=labels, chars=np.array(chars))
    return images, labels, chars


def _save_npz(path, **arrays):
    """``np.savez_compressed`` to a temporary file renamed into place (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
