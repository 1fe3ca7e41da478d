"""The Han glyph set, on a tiny set from two small font packages (fonts-sawarabi-gothic, fonts-sawarabi-mincho,
installed by scripts/setup.sh) plus font files made here: a copy of one font (like Takao = IPA), a font that maps
several characters to one placeholder glyph, and a file that is no font."""

import os
import shutil

import numpy as np
import pytest

from lab import datasets

TINY = dict(num_classes=40, min_faces=2, max_per_class=4, ranges=((0x4E00, 0x52FF),), progress=False)
SPLITS = dict(num_pretrain=10, num_train=10, num_val=5, num_test=10)


@pytest.fixture(autouse=True)
def no_prebuilt_npz(monkeypatch):
    monkeypatch.delenv(datasets.HAN_NPZ_ENV, raising=False)


def sawarabi():
    faces = [
        f
        for f in datasets.font_faces(datasets.HAN_FONT_FILES)
        if f.package in ("fonts-sawarabi-gothic", "fonts-sawarabi-mincho")
    ]
    missing = [f.path for f in faces if not os.path.isfile(f.path)]
    assert len(faces) == 2 and not missing, (
        "install the test fonts: apt-get install -y fonts-sawarabi-gothic fonts-sawarabi-mincho (bash scripts/setup.sh)"
    )
    return faces


@pytest.fixture(scope="module")
def made_fonts(tmp_path_factory):
    """(copy of Sawarabi Gothic, Sawarabi Mincho with 12 characters pointing at one glyph, garbage, those 12)."""
    from fontTools.ttLib import TTFont

    folder = tmp_path_factory.mktemp("fonts")
    gothic, mincho = sawarabi()
    copy = folder / "CopyOfGothic.ttf"
    shutil.copyfile(gothic.path, copy)
    placeholder = folder / "Placeholder.ttf"
    with TTFont(gothic.path, lazy=True) as g, TTFont(mincho.path) as font:
        both = sorted(set(font.getBestCmap()) & set(g.getBestCmap()))
        remapped = [cp for cp in both if datasets.han_render._is_han(cp)][:12]
        for table in font["cmap"].tables:
            if table.isUnicode() and remapped[0] in table.cmap:
                for cp in remapped[1:]:
                    table.cmap[cp] = table.cmap[remapped[0]]
        font.save(placeholder)
    garbage = folder / "Garbage.ttf"
    garbage.write_bytes(b"\x00\x01\x00\x00 not really a font" * 50)
    return copy, placeholder, garbage, [chr(cp) for cp in remapped]


@pytest.fixture(scope="module")
def han(made_fonts):
    copy, placeholder, garbage, _ = made_fonts
    with pytest.warns(UserWarning) as record:
        glyphs = datasets.han_glyph_arrays(fonts=sawarabi() + [copy, placeholder, garbage], cache=False, **TINY)
    return glyphs, [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def test_unreadable_font_is_skipped_with_one_warning(han):
    _, messages = han
    assert len(messages) == 1 and "Garbage.ttf" in messages[0]


def test_han_classes_have_distinct_faces_and_no_empty_or_wrong_glyphs(han, made_fonts):
    glyphs, _ = han
    _, _, _, remapped = made_fonts
    names = glyphs.face_names
    assert glyphs.images.dtype == np.uint8 and glyphs.images.shape[1:] == (32, 32)
    assert len(glyphs.chars) == len(set(glyphs.chars)) == 40
    assert all(0x4E00 <= ord(c) <= 0x9FFF or 0x3400 <= ord(c) <= 0x4DBF for c in glyphs.chars)
    assert (glyphs.images.reshape(len(glyphs.images), -1).max(axis=1) >= 96).all()  # no empty image
    assert list(glyphs.num_faces) == sorted(glyphs.num_faces, reverse=True)  # most faces first
    assert set(remapped) & set(glyphs.chars)  # characters whose placeholder glyph had to be ignored
    for c in range(len(glyphs.chars)):
        faces = glyphs.faces[glyphs.labels == c]
        assert len(faces) == len(set(faces)) >= 2  # each image from a different face
        # the copy of Sawarabi Gothic and the placeholder copy of Mincho draw nothing Gothic or Mincho do not
        assert len(faces) == 2 and glyphs.num_faces[c] == 2
        if glyphs.chars[c] in remapped:
            assert not any("Placeholder" in names[f] for f in faces)


def test_han_rendering_is_deterministic_and_cached_on_the_faces_used(tmp_path, monkeypatch, han, made_fonts):
    copy, _, _, _ = made_fonts
    monkeypatch.setenv("PML_DC_CACHE", str(tmp_path))
    first = datasets.han_glyph_arrays(fonts=sawarabi(), **TINY)
    assert len(list(tmp_path.glob("han_32px_*.npz"))) == 1
    monkeypatch.setattr(datasets.han, "render_han_glyphs", lambda **kw: pytest.fail("rendered again instead of cached"))
    again = datasets.han_glyph_arrays(fonts=sawarabi(), **TINY)
    assert np.array_equal(first.images, again.images) and first.chars == again.chars
    monkeypatch.undo()
    monkeypatch.setenv("PML_DC_CACHE", str(tmp_path))
    other = datasets.han_glyph_arrays(fonts=sawarabi() + [copy], **TINY)  # another list of faces: its own cache
    assert len(list(tmp_path.glob("han_32px_*.npz"))) == 2
    assert other.chars == first.chars and np.array_equal(other.images, first.images)  # the copy adds nothing
    glyphs, _ = han
    assert glyphs.chars == first.chars and np.array_equal(glyphs.images, first.images)


def _classes(ds):
    return set(np.unique(ds.labels).tolist())


def test_load_han_splits_are_disjoint_and_load_from_an_npz_without_fonts(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_DC_CACHE", str(tmp_path / "cache"))
    test = datasets.load_han("test", fonts=sawarabi(), **SPLITS, **TINY)
    val = datasets.load_han("val", fonts=sawarabi(), **SPLITS, **TINY)
    sizes = [len(_classes(s)) for s in (test.pretrain, test.train, val.eval, test.eval)]
    assert sizes == [10, 10, 5, 10]
    all_classes = [_classes(s) for s in (test.pretrain, test.train, val.eval, test.eval)]
    assert len(set().union(*all_classes)) == 35  # pairwise disjoint
    assert np.array_equal(val.train.labels, test.train.labels)
    assert np.array_equal(val.pretrain.labels, test.pretrain.labels)
    x, y = test.eval[0]
    assert tuple(x.shape) == (1, 32, 32) and x.dtype.is_floating_point and 0 <= float(x.min()) and float(x.max()) <= 1
    assert float(x.max()) > 0.3
    # the arrays saved once are loaded without any font: by path or by $PML_DC_HAN_NPZ
    npz = tmp_path / "han.npz"
    datasets.save_han_npz(npz, fonts=sawarabi(), **TINY)
    monkeypatch.setattr(datasets.han, "open_faces", lambda *a, **k: pytest.fail("opened fonts instead of the .npz"))
    from_npz = datasets.load_han("test", npz=npz, **SPLITS)
    monkeypatch.setenv(datasets.HAN_NPZ_ENV, str(npz))
    from_env = datasets.load_han("test", **SPLITS)
    for loaded in (from_npz, from_env):
        for a, b in zip(loaded, test):
            assert np.array_equal(a.labels, b.labels) and np.array_equal(a.data.numpy(), b.data.numpy())
    with pytest.raises(ValueError, match="fewer than"):
        datasets.load_han("test", npz=npz, num_pretrain=30, num_train=10, num_val=5, num_test=10)
    with pytest.raises(ValueError, match="split"):
        datasets.load_han("train", npz=npz)


def test_load_han_keeps_at_most_images_per_class_a_seeded_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_DC_CACHE", str(tmp_path / "cache"))
    full = datasets.load_han("test", fonts=sawarabi(), **SPLITS, **TINY)
    one = datasets.load_han("test", fonts=sawarabi(), images_per_class=1, **SPLITS, **TINY)
    again = datasets.load_han("test", fonts=sawarabi(), images_per_class=1, **SPLITS, **TINY)
    for a, b, c in zip(full, one, again):
        assert np.array_equal(np.unique(a.labels), np.unique(b.labels))  # the same classes
        assert np.bincount(b.labels).max() == 1 and np.bincount(a.labels).max() > 1
        assert np.array_equal(b.data.numpy(), c.data.numpy())  # the same subset every time
        rows = {x.tobytes() for x in a.data.numpy()}
        assert all(x.tobytes() in rows for x in b.data.numpy())  # images of the full set
