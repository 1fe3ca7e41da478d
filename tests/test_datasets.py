"""The offline datasets: real files, zero-shot splits with disjoint classes, the glyph cache."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from lab import datasets


def _classes(ds):
    return set(np.unique(ds.labels).tolist())


def test_digits_split_is_zero_shot():
    train_set, test_set = datasets.load_digits(5)
    assert _classes(train_set) == {0, 1, 2, 3, 4} and _classes(test_set) == {5, 6, 7, 8, 9}
    assert len(train_set) + len(test_set) == 1797


def test_fashion_mnist_from_debian_package():
    train_set, test_set = datasets.load_fashion_mnist(max_per_class=300, seed=1)
    assert _classes(train_set) == {0, 1, 2, 3, 4} and _classes(test_set) == {5, 6, 7, 8, 9}
    assert len(train_set) == len(test_set) == 1500
    x, y = train_set[0]
    assert tuple(x.shape) == (1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    # the same seeded subset every time, a different one for another seed
    again, _ = datasets.load_fashion_mnist(max_per_class=300, seed=1)
    other, _ = datasets.load_fashion_mnist(max_per_class=300, seed=2)
    assert np.array_equal(again.data.numpy(), train_set.data.numpy())
    assert not np.array_equal(other.data.numpy(), train_set.data.numpy())


def test_fashion_mnist_missing_names_the_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        datasets.load_fashion_mnist(root=tmp_path)


def test_read_idx_round_trip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 2, 3, 4) + a.tobytes())
    assert np.array_equal(datasets.read_idx(path), a)


@pytest.fixture(scope="module")
def glyphs():
    return datasets.glyph_arrays(progress=False)


def test_glyph_set_has_many_distinct_classes(glyphs):
    images, labels, chars = glyphs
    classes, counts = np.unique(labels, return_counts=True)
    assert len(classes) == len(chars) >= 300 and counts.min() >= 20
    assert len(set(chars)) == len(chars)
    assert images.dtype == np.uint8 and images.shape[1:] == (16, 16)
    # every image has ink, and images of one class are not all the same (different fonts)
    assert (images.reshape(len(images), -1).max(axis=1) >= 96).all()
    per_class = images.reshape(len(chars), -1, 16 * 16)
    assert all(len(np.unique(imgs, axis=0)) == len(imgs) for imgs in per_class)
    # look-alikes were merged: Latin A is a class, Greek Alpha and Cyrillic A are not
    assert "A" in chars and "\u0391" not in chars and "\u0410" not in chars


def test_glyph_splits_are_disjoint_and_validation_comes_from_training_classes(glyphs):
    train_set, test_set = datasets.load_glyphs("test", progress=False)
    sub_train, val_set = datasets.load_glyphs("val", progress=False)
    assert not _classes(train_set) & _classes(test_set)
    assert len(_classes(train_set)) + len(_classes(test_set)) == len(glyphs[2])
    assert _classes(val_set) <= _classes(train_set) and not _classes(val_set) & _classes(sub_train)
    assert _classes(sub_train) | _classes(val_set) == _classes(train_set)
    assert tuple(train_set[0][0].shape) == (1, 16, 16)
    with pytest.raises(ValueError, match="split"):
        datasets.load_glyphs("train")


TINY = dict(size=12, min_fonts=6, images_per_class=6, max_classes=10, progress=False)


def test_glyphs_are_rendered_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_DC_CACHE", str(tmp_path))
    fonts = datasets.glyph_fonts()[:6]
    first = datasets.glyph_arrays(fonts=fonts, **TINY)
    files = list(tmp_path.glob("glyphs_12px_*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(datasets.glyphs, "render_glyphs", lambda **kw: pytest.fail("rendered again instead of cached"))
    second = datasets.glyph_arrays(fonts=fonts, **TINY)
    assert np.array_equal(first[0], second[0]) and first[2] == second[2] and len(first[2]) == 10


def test_glyph_cache_is_keyed_on_the_font_files_used(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_DC_CACHE", str(tmp_path))
    fonts = datasets.glyph_fonts()[:7]
    datasets.glyph_arrays(fonts=fonts[:6], **TINY)
    datasets.glyph_arrays(fonts=fonts[1:], **TINY)
    assert len(list(tmp_path.glob("glyphs_12px_*.npz"))) == 2


def test_glyph_fonts_are_the_listed_files_only():
    listed = {f.path for f in datasets.font_faces(datasets.GLYPH_FONT_FILES)}
    fonts = datasets.glyph_fonts()
    assert fonts and {f.path for f in fonts} <= listed  # whatever else is installed (e.g. CJK fonts) is not used
    assert not any(x in f.name for f in fonts for x in datasets.EXCLUDED_FONTS)
    assert [f.name for f in fonts] == sorted(f.name for f in fonts)
    # scripts/setup.sh installs every package of the list
    setup = (Path(__file__).resolve().parents[1] / "scripts" / "setup.sh").read_text()
    assert all(p in setup for p in datasets.GLYPH_FONT_PACKAGES.split())


def bad_hinting_font(path):
    """A real TrueType font (Liberation Sans) whose hinting program has an invalid instruction: FreeType, hence
    Pillow, fails on it with "OSError: invalid opcode", as on some of Debian's fonts-horai-umefont files."""
    from fontTools.ttLib import TTFont
    from fontTools.ttLib.tables import ttProgram

    source = [f for f in datasets.font_faces(datasets.GLYPH_FONT_FILES) if f.name == "LiberationSans-Regular.ttf"][0]
    with TTFont(source.path) as font:
        font["prep"].program = ttProgram.Program()
        font["prep"].program.fromBytecode(bytes([0xA0]))  # not an opcode
        font.save(path)
    return path


def test_fonts_that_cannot_be_read_or_drawn_are_skipped_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_DC_CACHE", str(tmp_path))
    garbage = tmp_path / "Garbage.ttf"
    garbage.write_bytes(b"not a font at all" * 64)
    bad = bad_hinting_font(tmp_path / "BadHinting.ttf")
    fonts = datasets.glyph_fonts()[:6]
    with pytest.warns(UserWarning) as record:
        images, labels, chars = datasets.glyph_arrays(fonts=fonts[:3] + [garbage, bad] + fonts[3:], **TINY)
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert "Garbage.ttf" in messages[0] and "BadHinting.ttf" in messages[0] and "invalid opcode" in messages[0]
    # the same set, from the same cache file, as with the good fonts alone
    monkeypatch.setattr(
        datasets.glyphs, "render_glyphs", lambda **kw: pytest.fail("the broken fonts changed the cache key")
    )
    clean = datasets.glyph_arrays(fonts=fonts, **TINY)
    assert np.array_equal(images, clean[0]) and chars == clean[2]


def test_missing_font_files_are_skipped_with_one_warning_naming_the_package(monkeypatch):
    files = dict(datasets.GLYPH_FONT_FILES)
    files["fonts-not-installed"] = ("/nonexistent/fonts", "Foo-Regular.ttf Foo-Bold.ttf")
    monkeypatch.setattr(datasets.glyphs, "GLYPH_FONT_FILES", files)
    with pytest.warns(UserWarning, match="apt-get install -y fonts-not-installed") as record:
        fonts = datasets.glyph_fonts()
    record = [w for w in record if issubclass(w.category, UserWarning)]
    assert len(record) == 1 and "2 glyph font file(s) missing" in str(record[0].message)
    assert "/nonexistent/fonts" not in {str(Path(f.path).parent) for f in fonts}


def test_no_fonts_names_the_install_command(monkeypatch):
    monkeypatch.setattr(datasets.glyphs, "GLYPH_FONT_FILES", {"fonts-foo": ("/nonexistent", "Foo.ttf")})
    with pytest.warns(UserWarning, match="fonts-foo"):
        with pytest.raises(FileNotFoundError, match="apt-get install -y fonts-"):
            datasets.glyph_arrays()
