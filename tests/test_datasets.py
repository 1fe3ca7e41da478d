"""The offline datasets: real files, zero-shot splits with disjoint classes, the glyph cache."""

import gzip
import struct

import numpy as np
import pytest

from pml_divide_conquer import datasets


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


def test_glyphs_are_rendered_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_DC_CACHE", str(tmp_path))
    fonts = datasets.find_fonts()[:6]
    monkeypatch.setattr(datasets, "find_fonts", lambda: fonts)
    kwargs = dict(size=12, min_fonts=6, images_per_class=6, max_classes=20, progress=False)
    first = datasets.glyph_arrays(**kwargs)
    files = list(tmp_path.glob("glyphs_12px_*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(datasets, "render_glyphs", lambda **kw: pytest.fail("rendered again instead of cached"))
    second = datasets.glyph_arrays(**kwargs)
    assert np.array_equal(first[0], second[0]) and first[2] == second[2] and len(first[2]) == 20


def test_no_fonts_names_the_install_command(monkeypatch):
    monkeypatch.setattr(datasets, "find_fonts", lambda: [])
    with pytest.raises(FileNotFoundError, match="apt-get install -y fonts-"):
        datasets.glyph_arrays()
