"""Notebooks 1-4 run in their small configuration (``PML_DC_SMALL=1``), and their stored outputs come from
executing the stored code (scripts/run_notebooks.py); notebook 5 (GPU + datasets) skips itself cleanly and is stored
without outputs."""

import hashlib
import json
import os

import pytest
import torch

from doc_reading import NOTEBOOKS, PAPER_RECIPE, ROOT

# plots each notebook must draw (the "looking inside" notebook is plots, not prints)
MIN_PLOTS = {"01": 1, "02": 1, "03": 1, "04": 5}


def run_notebook(path, tmp_path, **env):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    # the kernel imports this checkout's package, whatever is installed
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **env}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def outputs(nb):
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def text_of(nb):
    parts = []
    for o in outputs(nb):
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        else:
            data = o.get("data", {})
            parts.append(data.get("text/markdown") or data.get("text/plain", ""))
    return "\n".join(parts)


def count_plots(nb):
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def test_the_four_small_notebooks_are_all_tested():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]
    assert PAPER_RECIPE.exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_the_small_configuration(path, tmp_path):
    nb = run_notebook(path, tmp_path, PML_DC_SMALL="1")
    text = text_of(nb)
    assert "small configuration" in text  # the notebook saw PML_DC_SMALL
    assert not any(o.get("output_type") == "error" for o in outputs(nb))
    # the one warning a small run may give: its few epochs end the divide phase before K is reached
    smoke = "(A short smoke run is fine as it is.)"
    stderr = [o for o in outputs(nb) if o.get("name") == "stderr" and smoke not in o.get("text", "")]
    assert not stderr, "a notebook printed warnings or errors"
    assert count_plots(nb) >= MIN_PLOTS[path.name[:2]], f"{path.name} drew {count_plots(nb)} plots"
    if path.name[:2] in ("01", "02", "03"):
        # a results table with real numbers in (0, 100]
        rows = [line for line in text.splitlines() if line.startswith("| ") and "±" in line]
        assert len(rows) >= 3, text
        values = [float(cell.split("±")[0]) for row in rows for cell in row.strip("|").split("|")[1:]]
        assert all(0.0 < v <= 100.0 for v in values), rows


def test_paper_recipe_notebook_skips_cleanly_without_gpu_or_data(tmp_path):
    env = {"PML_DC_DATA": str(tmp_path / "no-data-here"), "PML_DC_DOWNLOAD": "0"}
    nb = run_notebook(PAPER_RECIPE, tmp_path, **env)
    text = text_of(nb)

    if not torch.cuda.is_available():
        assert "Skipping the paper recipe" in text and "no GPU" in text
    assert "does not exist" in text
    assert "Training" not in text  # nothing trained


def source_hash(cell):
    return hashlib.sha256("".join(cell["source"]).encode()).hexdigest()[:16]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_come_from_the_stored_code(path):
    """Notebooks 1-4 are stored executed in their full configuration, by scripts/run_notebooks.py: top to bottom
    (execution counts 1, 2, ...), each code cell's outputs made by its present source (a hash of the source is
    stored with them), without warnings, errors or paths of the machine that ran them."""
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c.get("execution_count") for c in code] == list(range(1, len(code) + 1)), "not run top to bottom"
    for cell in code:
        stored = cell.get("metadata", {}).get("pml_dc", {}).get("source_sha256")
        assert stored == source_hash(cell), (
            f"{path.name}: a cell was edited after the notebook was run; run python scripts/run_notebooks.py\n"
            + "".join(cell["source"])[:200]
        )
    text = json.dumps([c.get("outputs", []) for c in code])
    assert '"stderr"' not in text and '"error"' not in text
    assert "Warning" not in text
    for root in ("/work/", "/home/", "/tmp/", "/root/", "site-packages"):
        assert root not in text, f"{path.name} stores a path of the machine that ran it ({root})"
    assert "small configuration" not in text  # the full configuration, not the tests' small one
    assert nb["metadata"].get("pml_dc", {}).get("torch_threads") == 1


def test_committed_notebooks_are_small_and_error_free():
    for path in NOTEBOOKS + [PAPER_RECIPE]:
        assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size} bytes"
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            for o in cell.get("outputs", []):
                assert o.get("output_type") != "error", f"{path.name} was committed with an error output"
    paper = json.loads(PAPER_RECIPE.read_text())
    assert all(not c.get("outputs") for c in paper["cells"] if c["cell_type"] == "code"), (
        "notebook 5 must not be committed with outputs unless they come from a real GPU run"
    )


@pytest.mark.parametrize("path", NOTEBOOKS + [PAPER_RECIPE], ids=lambda p: p.stem)
def test_a_notebook_needs_only_the_installed_package(path):
    """From a wheel or a hosted notebook there is no repository: no sys.path edits, no lab/, tests/, benchmarks/."""
    import ast

    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "sys.path" not in code
    tree = ast.parse("\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"lab", "benchmarks", "tests", "helpers", "factory"}, imported


def test_the_concepts_page_figures_are_notebook_4_s_stored_plots():
    """docs/concepts.md shows two plots of notebook 4: the files are its stored outputs, byte for byte
    (``python scripts/concept_figures.py`` copies them after scripts/run_notebooks.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("concept_figures", ROOT / "scripts" / "concept_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "concepts.md").read_text()
    for name, data in module.figures().items():
        assert (ROOT / "docs" / "assets" / name).read_bytes() == data, f"run python scripts/concept_figures.py ({name})"
        assert f"assets/{name}" in page
