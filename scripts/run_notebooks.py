"""Execute the example notebooks 1-4 in their full configuration and store their outputs.

    python scripts/run_notebooks.py [examples/01_quickstart.ipynb ...]

Each notebook runs top to bottom in a fresh kernel, in a scratch folder, with this checkout's package and torch on
one thread (PML_DC_THREADS, default 1). The outputs are stored only if they are clean: no error, nothing on
stderr (warnings), no path of this machine. Every code cell gets a hash of its source in its metadata
(``pml_dc.source_sha256``), so tests/test_notebooks.py can check that the stored outputs come from the stored code.
Notebook 5 (the paper recipe) needs a GPU and the datasets, and is stored without outputs.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = sorted((ROOT / "examples").glob("0[1-4]_*.ipynb"))
# what must not be stored: paths of the machine that ran the notebook, warnings
FORBIDDEN = [re.compile(p) for p in (r"/work/", r"/home/", r"/tmp/", r"/root/", r"site-packages", r"Warning\b")]


def source_hash(source):
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def problems(nb):
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: error {out.get('ename')}: {out.get('evalue')}")
            if out.get("name") == "stderr":
                found.append(f"cell {i}: stderr: {out.get('text', '')[:200]!r}")
            text = json.dumps({k: v for k, v in out.items() if k != "data"}) + json.dumps(
                {k: v for k, v in out.get("data", {}).items() if not k.startswith("image/")}
            )
            for pattern in FORBIDDEN:
                if pattern.search(text):
                    found.append(f"cell {i}: {pattern.pattern!r} in an output")
    return found


def run(path, threads):
    nb = nbformat.read(path, as_version=4)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PML_DC_THREADS": str(threads),
    }
    saved = {k: os.environ.get(k) for k in list(env) + ["PML_DC_SMALL"]}
    os.environ.update(env)
    os.environ.pop("PML_DC_SMALL", None)  # the full configuration
    start = time.time()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": scratch}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.time() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps: noise in the diffs
        if cell.cell_type == "code":
            cell.metadata["pml_dc"] = {"source_sha256": source_hash(cell.source)}
    nb.metadata["pml_dc"] = {"torch_threads": threads, "configuration": "default"}
    nb.metadata.get("language_info", {}).pop("version", None)
    return nb, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=DEFAULT)
    args = parser.parse_args(argv)
    threads = int(os.environ.get("PML_DC_THREADS", "1"))
    failed = False
    for path in args.notebooks:
        nb, seconds = run(path, threads)
        found = problems(nb)
        if found:
            failed = True
            print(f"{path.name}: not stored ({seconds:.0f} s):\n  " + "\n  ".join(found))
            continue
        nbformat.write(nb, path)
        print(f"{path.name}: executed in {seconds:.0f} s with {threads} torch thread(s), outputs stored")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
