"""The docs site builds with ``mkdocs build --strict``, and the example notebooks run in their small configuration.

Notebooks 1-4 are executed top to bottom with ``PML_DC_SMALL=1`` (fewer epochs and seeds), so they never go
stale; notebook 5 (the paper recipe, GPU + downloads) is executed too, to check that its guard skips it cleanly on
a machine without a GPU or the data.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("0[1-4]_*.ipynb"))
PAPER_RECIPE = EXAMPLES / "05_paper_recipe.ipynb"
# plots each notebook must draw (the "looking inside" notebook is plots, not prints)
MIN_PLOTS = {"01": 1, "02": 1, "03": 1, "04": 5}


def run_notebook(path, tmp_path, **env):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
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
    # one thread per kernel: these models are tiny, and idle torch threads spinning on a busy 2-core machine cost more
    nb = run_notebook(path, tmp_path, PML_DC_SMALL="1", OMP_NUM_THREADS="1")
    text = text_of(nb)
    assert "small configuration" in text  # the notebook saw PML_DC_SMALL
    assert not any(o.get("output_type") == "error" for o in outputs(nb))
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
    import torch

    if not torch.cuda.is_available():
        assert "Skipping the paper recipe" in text and "no GPU" in text
    assert "does not exist" in text
    assert "Training" not in text  # nothing trained


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


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's banner about its successor
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the API reference was generated from the docstrings
    api = (site / "api" / "index.html").read_text()
    for name in ("SubspaceMaskedEmbedder", "ClusterSampler", "DivideConquerWrapper", "DivideConquerSchedule",
                 "parameter_groups", "pop_ticket", "get_end_of_epoch_hook", "evaluate_subspaces"):
        assert name in api, name
    # the FAQ quotes the package's real error messages
    faq = (site / "faq" / "index.html").read_text()
    assert "is not a multiple of m" in faq
    # the notebooks are part of the site, with their plots
    assert (site / "examples" / "04_looking_inside" / "index.html").exists()


def test_quickstart_page_code_runs(tmp_path):
    """The code blocks of docs/quickstart.md run in order and train and evaluate.

    Run with 4 epochs instead of 10: K=1, K=2 after a split, then the conquer phase.
    """
    import re

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "quickstart.md").read_text(), re.S)
    assert len(blocks) == 3
    code = "\n".join(blocks).replace("num_epochs=10", "num_epochs=4").replace("conquer_epoch=9", "conquer_epoch=4")
    script = tmp_path / "quickstart.py"
    script.write_text(
        "import logging, warnings\nwarnings.filterwarnings('ignore')\nlogging.getLogger('PML').setLevel(logging.WARNING)\n"
        + code
        + "\nassert dc.phase == 'conquer' and 0.5 < tester.all_accuracies['test']['precision_at_1_level0'] <= 1\n"
        + "print('QUICKSTART OK')\n"
    )
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0 and "QUICKSTART OK" in result.stdout, result.stdout + result.stderr
