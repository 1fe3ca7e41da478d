"""Font files and faces: the tables that name them, which of them are installed, and opening them to draw.

Every glyph set is rendered from an explicit list of font files of named Debian packages, never from whatever fonts
a machine has installed: two machines with the same packages render the same set. The lists are data files,
``font_files/<set>.json``: each maps a package to its folder and its file names (as ``dpkg -L <package>`` lists them
on Debian 12); ``name#0,1`` names faces of a collection (.ttc), a plain name face 0. The folder "matplotlib:<sub>"
is inside matplotlib's data folder.
"""

import json
import os
import warnings
from pathlib import Path
from typing import NamedTuple

FONT_TABLES = Path(__file__).resolve().parent / "font_files"


def read_font_table(name):
    """The font table of ``font_files/<name>.json`` as ``({package: (folder, names)}, the file's data)``: ``names``
    the package's file names separated by spaces (the form :func:`font_faces` reads), in the file's order."""
    data = json.loads((FONT_TABLES / f"{name}.json").read_text())
    files = {package: (entry["folder"], " ".join(entry["files"])) for package, entry in data["packages"].items()}
    return files, data


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


def as_faces(fonts):
    return [f if isinstance(f, FontFace) else FontFace("", str(f)) for f in fonts]
