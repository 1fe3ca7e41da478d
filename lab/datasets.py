"""Offline datasets for demos, tests and benchmarks (nothing is downloaded at run time).

- :func:`load_digits`: scikit-learn's bundled 8x8 digits, the quickest check.
- :func:`load_fashion_mnist`: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.
- :func:`load_glyphs`: a many-class zero-shot set of Latin, Greek and Cyrillic characters rendered from a fixed
  list of font files of Debian packages (plus the STIX fonts bundled with matplotlib), rendered once and cached.

- :func:`load_han`: thousands of Han characters (CJK ideographs) rendered from Debian's CJK font packages, each
  image from a different face, in pretraining, training, validation and test classes (like Stanford Online
  Products); built once by ``benchmarks/setup_han.sh`` into a .npz that loads on machines without the fonts.

All return zero-shot splits (train and test classes disjoint) as :class:`ArrayDataset` objects.
:class:`BatchArrayDataset` serves whole batches (one indexing per batch) to PML's trainers and testers.
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
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
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


class OpenFace(NamedTuple):
    """A face ready to draw: its :class:`FontFace`, character map (code point -> glyph name), Pillow font, and
    ``outlines``, the (file, offset) of its outline table: faces of a collection that share it draw a glyph
    name identically."""

    face: FontFace
    cmap: dict
    font: object
    outlines: tuple


def open_faces(faces, pixel_size, probe_chars, what="font"):
    """Load each face in fontTools (its character map) and in Pillow (at ``pixel_size``), and draw the first
    character of ``probe_chars`` that it has. Faces that fail (unreadable file, bad hinting code: Pillow's
    "invalid opcode", ...) are skipped with ONE warning naming them. Returns a list of :class:`OpenFace`.
    """
    from fontTools.ttLib import TTFont
    from PIL import Image, ImageDraw, ImageFont

    faces = list(faces)
    stamp = [(os.stat(f.path).st_mtime_ns, os.stat(f.path).st_size) if os.path.isfile(f.path) else None for f in faces]
    memo_key = (tuple(faces), tuple(stamp), pixel_size, tuple(probe_chars))
    if memo_key in _OPENED:  # opening ~200 faces takes seconds: once per process
        return list(_OPENED[memo_key])
    opened, failed = [], []
    for face in faces:
        try:
            with open(face.path, "rb") as file, TTFont(file, lazy=True, fontNumber=face.index) as f:
                cmap = dict(f.getBestCmap() or {})
                tables = f.reader.tables
                tag = next((t for t in ("glyf", "CFF ", "CFF2") if t in tables), None)
                outlines = (face.path, tables[tag].offset if tag else face.index)
            font = ImageFont.truetype(face.path, size=pixel_size, index=face.index)
            probe = next((ch for ch in probe_chars if ord(ch) in cmap), None)
            if probe is not None:
                canvas = Image.new("L", (2 * pixel_size, 2 * pixel_size))
                ImageDraw.Draw(canvas).text((0, 0), probe, fill=255, font=font)
        except Exception as e:  # noqa: BLE001 - any font that cannot be read or drawn is skipped
            failed.append(f"{face.name} ({face.package or face.path}): {type(e).__name__}: {e}")
            continue
        opened.append(OpenFace(face, cmap, font, outlines))
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
    "fonts-croscore": (
        "/usr/share/fonts/truetype/croscore",
        """
        Arimo-Bold.ttf Arimo-BoldItalic.ttf Arimo-Italic.ttf Arimo-Regular.ttf Cousine-Bold.ttf
        Cousine-BoldItalic.ttf Cousine-Italic.ttf Cousine-Regular.ttf Tinos-Bold.ttf Tinos-BoldItalic.ttf
        Tinos-Italic.ttf Tinos-Regular.ttf
    """,
    ),
    "fonts-dejavu-core": (
        "/usr/share/fonts/truetype/dejavu",
        """
        DejaVuSans-Bold.ttf DejaVuSans.ttf DejaVuSansMono-Bold.ttf DejaVuSansMono.ttf DejaVuSerif-Bold.ttf
        DejaVuSerif.ttf
    """,
    ),
    "fonts-dejavu-extra": (
        "/usr/share/fonts/truetype/dejavu",
        """
        DejaVuMathTeXGyre.ttf DejaVuSans-BoldOblique.ttf DejaVuSans-ExtraLight.ttf DejaVuSans-Oblique.ttf
        DejaVuSansCondensed-Bold.ttf DejaVuSansCondensed-BoldOblique.ttf DejaVuSansCondensed-Oblique.ttf
        DejaVuSansCondensed.ttf DejaVuSansMono-BoldOblique.ttf DejaVuSansMono-Oblique.ttf DejaVuSerif-BoldItalic.ttf
        DejaVuSerif-Italic.ttf DejaVuSerifCondensed-Bold.ttf DejaVuSerifCondensed-BoldItalic.ttf
        DejaVuSerifCondensed-Italic.ttf DejaVuSerifCondensed.ttf
    """,
    ),
    "fonts-freefont-ttf": (
        "/usr/share/fonts/truetype/freefont",
        """
        FreeMono.ttf FreeMonoBold.ttf FreeMonoBoldOblique.ttf FreeMonoOblique.ttf FreeSans.ttf FreeSansBold.ttf
        FreeSansBoldOblique.ttf FreeSansOblique.ttf FreeSerif.ttf FreeSerifBold.ttf FreeSerifBoldItalic.ttf
        FreeSerifItalic.ttf
    """,
    ),
    "fonts-go": (
        "/usr/share/fonts/fonts-go",
        """
        Go-Bold-Italic.ttf Go-Bold.ttf Go-Italic.ttf Go-Medium-Italic.ttf Go-Medium.ttf Go-Mono-Bold-Italic.ttf
        Go-Mono-Bold.ttf Go-Mono-Italic.ttf Go-Mono.ttf Go-Regular.ttf Go-Smallcaps-Italic.ttf Go-Smallcaps.ttf
    """,
    ),
    "fonts-liberation": (
        "/usr/share/fonts/truetype/liberation",
        """
        LiberationMono-Bold.ttf LiberationMono-BoldItalic.ttf LiberationMono-Italic.ttf LiberationMono-Regular.ttf
        LiberationSans-Bold.ttf LiberationSans-BoldItalic.ttf LiberationSans-Italic.ttf LiberationSans-Regular.ttf
        LiberationSansNarrow-Bold.ttf LiberationSansNarrow-BoldItalic.ttf LiberationSansNarrow-Italic.ttf
        LiberationSansNarrow-Regular.ttf LiberationSerif-Bold.ttf LiberationSerif-BoldItalic.ttf
        LiberationSerif-Italic.ttf LiberationSerif-Regular.ttf
    """,
    ),
    "fonts-linuxlibertine": (
        "/usr/share/fonts/opentype/linux-libertine",
        """
        LinBiolinum_K.otf LinBiolinum_R.otf LinBiolinum_RB.otf LinBiolinum_RI.otf LinLibertine_DR.otf
        LinLibertine_I.otf LinLibertine_M.otf LinLibertine_R.otf LinLibertine_RB.otf LinLibertine_RBI.otf
        LinLibertine_RI.otf LinLibertine_RZ.otf LinLibertine_RZI.otf
    """,
    ),
    "fonts-open-sans": (
        "/usr/share/fonts/truetype/open-sans",
        """
        OpenSans-Bold.ttf OpenSans-BoldItalic.ttf OpenSans-CondBold.ttf OpenSans-CondLight.ttf
        OpenSans-CondLightItalic.ttf OpenSans-ExtraBold.ttf OpenSans-ExtraBoldItalic.ttf OpenSans-Italic.ttf
        OpenSans-Light.ttf OpenSans-LightItalic.ttf OpenSans-Regular.ttf OpenSans-Semibold.ttf
        OpenSans-SemiboldItalic.ttf
    """,
    ),
    "fonts-texgyre": (
        "/usr/share/texmf/fonts/opentype/public/tex-gyre",
        """
        texgyreadventor-bold.otf texgyreadventor-bolditalic.otf texgyreadventor-italic.otf
        texgyreadventor-regular.otf texgyrebonum-bold.otf texgyrebonum-bolditalic.otf texgyrebonum-italic.otf
        texgyrebonum-regular.otf texgyrechorus-mediumitalic.otf texgyrecursor-bold.otf texgyrecursor-bolditalic.otf
        texgyrecursor-italic.otf texgyrecursor-regular.otf texgyreheros-bold.otf texgyreheros-bolditalic.otf
        texgyreheros-italic.otf texgyreheros-regular.otf texgyreheroscn-bold.otf texgyreheroscn-bolditalic.otf
        texgyreheroscn-italic.otf texgyreheroscn-regular.otf texgyrepagella-bold.otf texgyrepagella-bolditalic.otf
        texgyrepagella-italic.otf texgyrepagella-regular.otf texgyreschola-bold.otf texgyreschola-bolditalic.otf
        texgyreschola-italic.otf texgyreschola-regular.otf texgyretermes-bold.otf texgyretermes-bolditalic.otf
        texgyretermes-italic.otf texgyretermes-regular.otf
    """,
    ),
    "fonts-urw-base35": (
        "/usr/share/fonts/opentype/urw-base35",
        """
        C059-BdIta.otf C059-Bold.otf C059-Italic.otf C059-Roman.otf D050000L.otf NimbusMonoPS-Bold.otf
        NimbusMonoPS-BoldItalic.otf NimbusMonoPS-Italic.otf NimbusMonoPS-Regular.otf NimbusRoman-Bold.otf
        NimbusRoman-BoldItalic.otf NimbusRoman-Italic.otf NimbusRoman-Regular.otf NimbusSans-Bold.otf
        NimbusSans-BoldItalic.otf NimbusSans-Italic.otf NimbusSans-Regular.otf NimbusSansNarrow-Bold.otf
        NimbusSansNarrow-BoldOblique.otf NimbusSansNarrow-Oblique.otf NimbusSansNarrow-Regular.otf P052-Bold.otf
        P052-BoldItalic.otf P052-Italic.otf P052-Roman.otf StandardSymbolsPS.otf URWBookman-Demi.otf
        URWBookman-DemiItalic.otf URWBookman-Light.otf URWBookman-LightItalic.otf URWGothic-Book.otf
        URWGothic-BookOblique.otf URWGothic-Demi.otf URWGothic-DemiOblique.otf Z003-MediumItalic.otf
    """,
    ),
    "matplotlib": (
        "matplotlib:fonts/ttf",
        """
        STIXGeneral.ttf STIXGeneralBol.ttf STIXGeneralBolIta.ttf STIXGeneralItalic.ttf
    """,
    ),
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
    used = [f.face for f in opened]
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


# ---------------------------------------------------------------------------------------------- Han glyphs
# Font files of Debian's CJK font packages for the Han set. Left out: copies of another listed font's Han outlines
# (fonts-takao-* = IPA, fonts-ipamj-mincho ~ IPA Mincho, fonts-migmix and fonts-umeplus = M+ with IPA or Ume,
# fonts-komatuna ~ Konatu; the Noto Sans Mono CJK faces, the proportional "P" files and the regional faces of
# ukai/uming/wqy that repeat a listed face), fonts whose Han glyphs are blank (setofont-ex, NanumSquare), 8-pixel
# bitmap designs (fonts-misaki), cursive grass script whose forms several characters share (KouzanBrushFontSousyo),
# the fonts-horai-umefont files that Pillow cannot draw ("invalid opcode": ume-pgs4, ume-pgs5, ume-tgs5) or that
# repeat ume-tgo4/tgo5/tmo3/tms3, and fonts-cns11643-kai/-sung (276 MB for two faces). Copies that remain (Droid
# Sans Fallback and WenQuanYi Micro Hei, IPA and IPAex, regional faces of Noto) are merged per character by
# comparing renderings.
HAN_FONT_FILES = {
    "fonts-noto-cjk": (
        "/usr/share/fonts/opentype/noto",
        """
        NotoSansCJK-Regular.ttc#0,1,2,3,4 NotoSansCJK-Bold.ttc#0,1,2,3,4 NotoSerifCJK-Regular.ttc#0,1,2,3,4
        NotoSerifCJK-Bold.ttc#0,1,2,3,4
    """,
    ),
    "fonts-noto-cjk-extra": (
        "/usr/share/fonts/opentype/noto",
        """
        NotoSansCJK-Thin.ttc#0,1,2,3,4 NotoSansCJK-Light.ttc#0,1,2,3,4 NotoSansCJK-DemiLight.ttc#0,1,2,3,4
        NotoSansCJK-Medium.ttc#0,1,2,3,4 NotoSansCJK-Black.ttc#0,1,2,3,4
        NotoSerifCJK-ExtraLight.ttc#0,1,2,3,4 NotoSerifCJK-Light.ttc#0,1,2,3,4
        NotoSerifCJK-Medium.ttc#0,1,2,3,4 NotoSerifCJK-SemiBold.ttc#0,1,2,3,4
        NotoSerifCJK-Black.ttc#0,1,2,3,4
    """,
    ),
    "fonts-arphic-ukai": ("/usr/share/fonts/truetype/arphic", "ukai.ttc#0,1,2"),
    "fonts-arphic-uming": ("/usr/share/fonts/truetype/arphic", "uming.ttc#0,1,2"),
    "fonts-arphic-bkai00mp": ("/usr/share/fonts/truetype/arphic-bkai00mp", "bkai00mp.ttf"),
    "fonts-arphic-bsmi00lp": ("/usr/share/fonts/truetype/arphic-bsmi00lp", "bsmi00lp.ttf"),
    "fonts-arphic-gbsn00lp": ("/usr/share/fonts/truetype/arphic-gbsn00lp", "gbsn00lp.ttf"),
    "fonts-arphic-gkai00mp": ("/usr/share/fonts/truetype/arphic-gkai00mp", "gkai00mp.ttf"),
    "fonts-wqy-zenhei": ("/usr/share/fonts/truetype/wqy", "wqy-zenhei.ttc#0"),
    "fonts-wqy-microhei": ("/usr/share/fonts/truetype/wqy", "wqy-microhei.ttc#0"),
    "fonts-droid-fallback": ("/usr/share/fonts/truetype/droid", "DroidSansFallbackFull.ttf"),
    "fonts-ipafont-gothic": ("/usr/share/fonts/opentype/ipafont-gothic", "ipag.ttf"),
    "fonts-ipafont-mincho": ("/usr/share/fonts/opentype/ipafont-mincho", "ipam.ttf"),
    "fonts-ipaexfont-gothic": ("/usr/share/fonts/opentype/ipaexfont-gothic", "ipaexg.ttf"),
    "fonts-ipaexfont-mincho": ("/usr/share/fonts/opentype/ipaexfont-mincho", "ipaexm.ttf"),
    "fonts-vlgothic": ("/usr/share/fonts/truetype/vlgothic", "VL-Gothic-Regular.ttf"),
    "fonts-hanazono": ("/usr/share/fonts/truetype/hanazono", "HanaMinA.ttf"),
    "fonts-cwtex-fs": ("/usr/share/fonts/truetype/cwtex", "cwfs.ttf"),
    "fonts-cwtex-heib": ("/usr/share/fonts/truetype/cwtex", "cwheib.ttf"),
    "fonts-cwtex-kai": ("/usr/share/fonts/truetype/cwtex", "cwkai.ttf"),
    "fonts-cwtex-ming": ("/usr/share/fonts/truetype/cwtex", "cwming.ttf"),
    "fonts-cwtex-yen": ("/usr/share/fonts/truetype/cwtex", "cwyen.ttf"),
    "fonts-lxgw-wenkai": (
        "/usr/share/fonts/truetype/lxgw-wenkai",
        """
        LXGWWenKai-Light.ttf LXGWWenKai-Regular.ttf LXGWWenKai-Bold.ttf
    """,
    ),
    "fonts-smiley-sans": ("/usr/share/fonts/truetype/smiley-sans", "SmileySans-Oblique.ttf"),
    "fonts-sawarabi-gothic": ("/usr/share/fonts/truetype/sawarabi-gothic", "sawarabi-gothic-medium.ttf"),
    "fonts-sawarabi-mincho": ("/usr/share/fonts/truetype/sawarabi-mincho", "sawarabi-mincho-medium.ttf"),
    "fonts-seto": ("/usr/share/fonts/truetype/seto", "setofont.ttf"),
    "fonts-kiloji": ("/usr/share/fonts/truetype/kiloji", "kiloji.ttf kiloji_b.ttf kiloji_d.ttf"),
    "fonts-baekmuk": ("/usr/share/fonts/truetype/baekmuk", "batang.ttf dotum.ttf gulim.ttf hline.ttf"),
    "fonts-unfonts-core": (
        "/usr/share/fonts/truetype/unfonts-core",
        """
        UnBatang.ttf UnBatangBold.ttf UnDotum.ttf UnDotumBold.ttf UnGungseo.ttf
    """,
    ),
    "fonts-unfonts-extra": ("/usr/share/fonts/truetype/unfonts-extra", "UnShinmun.ttf UnYetgul.ttf"),
    "fonts-nanum": (
        "/usr/share/fonts/truetype/nanum",
        """
        NanumGothic.ttf NanumGothicBold.ttf NanumBarunGothic.ttf NanumBarunGothicBold.ttf
    """,
    ),
    "fonts-mplus": (
        "/usr/share/fonts/opentype/mplus",
        """
        Mplus1-Thin.otf Mplus1-ExtraLight.otf Mplus1-Light.otf Mplus1-Regular.otf Mplus1-Medium.otf
        Mplus1-SemiBold.otf Mplus1-Bold.otf Mplus1-ExtraBold.otf Mplus1-Black.otf
    """,
    ),
    "fonts-babelstone-han": ("/usr/share/fonts/truetype/babelstone", "BabelStoneHan.ttf"),
    "fonts-morisawa-bizud-gothic": (
        "/usr/share/fonts/truetype/bizud-gothic",
        """
        BIZUDGothic-Regular.ttf BIZUDGothic-Bold.ttf
    """,
    ),
    "fonts-morisawa-bizud-mincho": ("/usr/share/fonts/truetype/bizud-mincho", "BIZUDMincho-Regular.ttf"),
    "fonts-dejima-mincho": ("/usr/share/fonts/truetype/dejima-mincho", "dejima-mincho-r227.ttf"),
    "fonts-oradano-mincho-gsrr": ("/usr/share/fonts/truetype/oradano-mincho", "OradanoGSRR.ttf"),
    "fonts-kouzan-mouhitsu": (
        "/usr/share/fonts/truetype/kouzan-mouhitsu",
        """
        kouzan-mouhitsu.ttf kouzan-mouhitsu-gyosho.ttf
    """,
    ),
    "fonts-aoyagi-kouzan-t": ("/usr/share/fonts/truetype/aoyagi-kouzan-t", "AoyagiKouzanT.ttf"),
    "fonts-aoyagi-soseki": ("/usr/share/fonts/truetype/aoyagi-soseki", "aoyagi-soseki.ttf"),
    "fonts-klee": ("/usr/share/fonts/truetype/klee", "KleeOne-Regular.ttf KleeOne-SemiBold.ttf"),
    "fonts-yusei-magic": ("/usr/share/fonts/truetype/yusei-magic", "YuseiMagic-Regular.ttf"),
    "fonts-reggae": ("/usr/share/fonts/truetype/reggae", "ReggaeOne-Regular.ttf"),
    "fonts-train": ("/usr/share/fonts/truetype/train", "TrainOne-Regular.ttf"),
    "fonts-dotgothic16": ("/usr/share/fonts/truetype/dotgothic16", "DotGothic16-Regular.ttf"),
    "fonts-motoya-l-cedar": ("/usr/share/fonts/truetype/motoya-l-cedar", "MTLc3m.ttf"),
    "fonts-motoya-l-maruberi": ("/usr/share/fonts/truetype/motoya-l-maruberi", "MTLmr3m.ttf"),
    "fonts-konatu": ("/usr/share/fonts/truetype/konatu", "Konatu.ttf"),
    "fonts-mona": ("/usr/share/fonts/truetype/mona", "mona.ttf"),
    "fonts-horai-umefont": (
        "/usr/share/fonts/truetype/horai-umefont",
        """
        ume-tgo4.ttf ume-tgo5.ttf ume-tgs4.ttf ume-tmo3.ttf ume-tms3.ttf
    """,
    ),
}
HAN_FONT_PACKAGES = " ".join(HAN_FONT_FILES)
HAN_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF))  # CJK Unified Ideographs and Extension A
HAN_NPZ_ENV = "PML_DC_HAN_NPZ"
_HAN_VERSION = 1  # bump when the rendering or the selection changes


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


class HanSplits(NamedTuple):
    """Class-disjoint splits of the Han set: ``pretrain``, ``train`` and ``eval`` (validation or test classes)."""

    pretrain: ArrayDataset
    train: ArrayDataset
    eval: ArrayDataset


def han_fonts():
    """The font faces of :data:`HAN_FONT_FILES` that are installed (missing files skipped with one warning)."""
    return present_faces(font_faces(HAN_FONT_FILES), "Han font")


def _is_han(cp):
    return any(lo <= cp <= hi for lo, hi in HAN_RANGES)


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
):
    """Render the Han set: the ``num_classes`` characters with the most distinct faces (at least ``min_faces``),
    up to ``max_per_class`` images each, every image from a different face. Returns :class:`HanGlyphs`.

    Per character, every face that maps it draws it (faces of a collection sharing its glyph draw it once); blank
    glyphs, glyphs a face gives to several characters (same glyph name, or the same drawing), and near-identical
    drawings (``threshold``, see :func:`_distinct_renderings`: copies of another font, regional faces whose glyph
    does not differ, weights too close to tell apart) are dropped. Characters are taken in order of their count of
    candidate glyphs, an upper bound of their distinct faces, until no later one can enter the selection, so the
    selection is the best ``num_classes`` (ties go to the lower code point). ``ranges``: the code point ranges of
    the candidate characters (default :data:`HAN_RANGES`). The images of a class are a seeded choice spread
    over the font packages, lightly augmented when ``augment``, and stored with ``levels`` gray levels (16: pixel
    values are multiples of 17), which halves the compressed size of the arrays at no visible cost.
    """
    from tqdm import tqdm

    faces = han_fonts() if fonts is None else present_faces(_as_faces(fonts), "Han font")
    opened = open_faces(faces, int(2 * size * 0.8), "\u6c38\u4e00\u4eba\u5927", "Han font")
    if not opened:
        raise FileNotFoundError(
            "none of the Han set's font files is installed (or readable): run bash benchmarks/setup_han.sh, or "
            f"apt-get install -y {HAN_FONT_PACKAGES}; or load prebuilt arrays with npz=... or ${HAN_NPZ_ENV}"
        )
    # glyphs each face may draw: Han code points whose glyph name is the face's glyph of no other Han code point
    usable = []
    for of in opened:
        names = {cp: g for cp, g in of.cmap.items() if _is_han(cp)}  # all Han blocks, whatever ``ranges``
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
    _save_npz(
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
    faces = han_fonts() if fonts is None else present_faces(_as_faces(fonts), "Han font")
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
        _HAN_VERSION,
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
        keep = _per_class_subset(y, int(images_per_class), np.random.default_rng([seed, 15]))
        x, y = x[keep], y[keep]

    def subset(cls):
        keep = np.isin(y, cls)
        return ArrayDataset((x[keep].astype(np.float32) / 255.0)[:, None], y[keep])

    return HanSplits(subset(pretrain), subset(train), subset(val if split == "val" else test))
