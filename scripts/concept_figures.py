"""The figures of docs/concepts.md: plots of notebook 4 (examples/04_looking_inside.ipynb), copied from its stored
outputs, so that the page shows what the notebook drew when scripts/run_notebooks.py last ran it.

    python scripts/concept_figures.py          # after python scripts/run_notebooks.py
"""

import base64
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "04_looking_inside.ipynb"
# the heading of the notebook's section -> the file under docs/assets/ of the plot its first code cell draws
FIGURES = {
    "## 1. Cluster sizes over training": "concepts-cluster-sizes.png",
    "## 2. The learned masks": "concepts-masks.png",
}


def figures(notebook=NOTEBOOK):
    """{file name: PNG bytes} of the plots under the FIGURES headings of ``notebook``'s stored outputs."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    out = {}
    for i, cell in enumerate(cells):
        heading = "".join(cell["source"]).splitlines()[0] if cell["source"] else ""
        if cell["cell_type"] != "markdown" or heading not in FIGURES:
            continue
        code = next(c for c in cells[i + 1 :] if c["cell_type"] == "code")
        png = next(o["data"]["image/png"] for o in code.get("outputs", []) if "image/png" in o.get("data", {}))
        out[FIGURES[heading]] = base64.b64decode(png)
    missing = set(FIGURES.values()) - set(out)
    if missing:
        raise SystemExit(f"{notebook} has no stored plot for {sorted(missing)}: run scripts/run_notebooks.py first")
    return out


def main():
    for name, data in figures().items():
        path = ROOT / "docs" / "assets" / name
        path.write_bytes(data)
        print(path)


if __name__ == "__main__":
    sys.exit(main())
