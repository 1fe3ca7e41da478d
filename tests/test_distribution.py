"""What a package index gets: a wheel and a source archive built from this checkout (the wheel from the archive, as
``python -m build`` does), their metadata, the long description, and the one version they carry."""

import configparser
import email
import importlib.util
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import pml_divide_conquer

ROOT = Path(__file__).resolve().parents[1]
needs_build = pytest.mark.skipif(
    not importlib.util.find_spec("build") or not importlib.util.find_spec("twine"), reason="needs build and twine"
)


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    if not (ROOT / "setup.py").exists():
        pytest.skip("not a checkout of the repository")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: setuptools of this environment, nothing downloaded (the sdist first, the wheel from it)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def metadata_of(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name))


@needs_build
def test_the_wheel_ships_the_package_typed_and_nothing_else(dists):
    wheel, _ = dists
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "pml_divide_conquer/py.typed" in names
    assert "pml_divide_conquer/integrations/lightning.py" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"pml_divide_conquer", f"pml_divide_conquer-{pml_divide_conquer.__version__}.dist-info"}, tops


@needs_build
def test_the_source_archive_ships_no_tests_that_could_not_run(dists):
    """Tests, docs, examples, lab/ and benchmarks/ need the repository (data, fixtures, scripts): not shipped."""
    _, sdist = dists
    with tarfile.open(sdist) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    assert {"README.md", "CHANGELOG.md", "CITATION.cff", "LICENSE", "setup.cfg", "pml_divide_conquer/py.typed"} <= set(
        names
    )
    shipped = {n.split("/")[0] for n in names}
    assert not shipped & {"tests", "docs", "examples", "lab", "benchmarks", "scripts"}, shipped


@needs_build
def test_twine_check_strict_passes_and_the_metadata_is_complete(dists):
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dists)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    meta = metadata_of(dists[0])
    assert meta["Version"] == pml_divide_conquer.__version__
    assert meta["License-Expression"] == "MIT" and meta["Author"]
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # the SPDX expression instead
    assert len(meta.get_all("Project-URL")) >= 3
    assert "pytorch-metric-learning<3,>=2.9" in meta.get_all("Requires-Dist")


@needs_build
def test_the_long_description_has_no_link_that_breaks_on_an_index(dists):
    description = metadata_of(dists[0]).get_payload()
    links = re.findall(r"\]\(([^)]+)\)", description)
    relative = [t for t in links if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    assert links and not relative, relative
    assert "`docs/how-to/resuming.md` in the repository" in description


def test_the_version_is_kept_in_one_place():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: pml_divide_conquer.__version__"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == pml_divide_conquer.__version__
    assert re.match(r"\d+\.\d+\.\d+(\.dev\d+)?$", pml_divide_conquer.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    release = pml_divide_conquer.__version__.split(".dev")[0]
    assert f"({release})" in changelog or f"## {release}" in changelog


def test_the_citation_file_names_the_package_and_both_papers():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software" and citation["message"]
    titles = [citation["preferred-citation"]["title"]] + [r["title"] for r in citation["references"]]
    assert "Divide and Conquer the Embedding Space for Metric Learning" in titles
    assert "Improving Deep Metric Learning by Divide and Conquer" in titles
    assert citation["preferred-citation"]["year"] == 2019
