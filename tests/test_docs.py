"""The documentation cannot go stale: its code runs, its quotes are real, its pages build.

- Every ```python block of README.md and of docs/**/*.md runs as written, the blocks of a page one after the other
  in one namespace. The tests only fill the reader's blanks (``trunk``, ``train_set``, ``train_labels``, ...: see
  tests/doc_fixtures.py), shrink epoch counts, and run an offline stand-in for the blocks marked ``# Needs ...``
  (a GPU, a download). Blocks written as doctests (``>>>``) are run as doctests, unchanged. A ```text block titled
  "Output" must be what the python block before it prints ("…" stands for any text).
- Code shown in the docs fits the content column (88 characters), in the Markdown and in the built site (API
  reference, notebooks).
- The FAQ quotes the package's real messages (docs/faq_messages.py reads them from the source) and covers the main
  ones.
- ``mkdocs build --strict`` is clean; the API reference shows the public API only.
- Notebooks 1-4 run in their small configuration (``PML_DC_SMALL=1``), and their stored outputs come from
  executing the stored code (scripts/run_notebooks.py); notebook 5 (GPU + datasets) skips itself cleanly and is
  stored without outputs.
"""

import contextlib
import doctest
import functools
import hashlib
import html
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import faq_messages  # noqa: E402

EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("0[1-4]_*.ipynb"))
PAPER_RECIPE = EXAMPLES / "05_paper_recipe.ipynb"
DOC_PAGES = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").rglob("*.md") if "examples" not in p.parts)
CODE_WIDTH = 88
# being rewritten by another engineer with new measurements: its long command lines are theirs to fold
WIDTH_EXEMPT = {"docs/benchmarks.md"}
# plots each notebook must draw (the "looking inside" notebook is plots, not prints)
MIN_PLOTS = {"01": 1, "02": 1, "03": 1, "04": 5}

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)(?P<attrs>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
EPOCHS = re.compile(r"\b(num_epochs|epochs|NUM_EPOCHS)(\s*=\s*)(\d+)\b")
NEEDS = re.compile(r"^# Needs\b")


def rel(path):
    return path.relative_to(ROOT).as_posix()


def fenced_blocks(path):
    """(language, attributes, code, line number) of every fenced block of a Markdown file."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        indent = len(m.group("indent"))
        body = "\n".join(line[indent:] for line in m.group("body").splitlines())
        out.append((m.group("lang"), m.group("attrs").strip(), body, text.count("\n", 0, m.start()) + 2))
    return out


def python_blocks(path):
    """[(index, line, code, output)]: the python blocks, each with the "Output" text block that follows it."""
    blocks = fenced_blocks(path)
    out = []
    for j, (lang, _attrs, code, line) in enumerate(blocks):
        if lang != "python":
            continue
        following = blocks[j + 1] if j + 1 < len(blocks) else None
        output = following[2] if following and following[0] == "text" and 'title="Output"' in following[1] else None
        out.append((len(out), line, code, output))
    return out


PAGES_WITH_CODE = [p for p in DOC_PAGES if python_blocks(p)]


def shrink_epochs(code):
    return EPOCHS.sub(lambda m: m.group(1) + m.group(2) + str(min(int(m.group(3)), doc_fixtures.SHRUNK_EPOCHS)), code)


def matches_output(expected, printed):
    """``printed`` is ``expected`` up to whitespace, "…" in ``expected`` standing for any text."""
    parts = [re.escape(" ".join(p.split())) for p in expected.split("…")]
    return re.fullmatch(r"\s*" + r".*?".join(parts) + r"\s*", " ".join(printed.split()), re.S) is not None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def doc_environment(monkeypatch, tmp_path):
    """Where a page's code runs: a scratch folder, one torch thread, no per-epoch progress bars (tests only), a
    world of one process for torch.distributed, and deprecated API calls turned into errors."""
    import torch.distributed as dist
    import tqdm
    from pytorch_metric_learning.testers import base_tester
    from pytorch_metric_learning.trainers import base_trainer

    quiet = type("quiet_tqdm", (), {"tqdm": staticmethod(functools.partial(tqdm.tqdm, disable=True))})
    monkeypatch.setattr(base_trainer, "tqdm", quiet)
    monkeypatch.setattr(base_tester, "tqdm", quiet)
    monkeypatch.chdir(tmp_path)
    for key, value in doc_fixtures.ddp_environment(free_port()).items():
        monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pml_logger, root = logging.getLogger("PML"), logging.getLogger()
    saved = [(lg, lg.level, list(lg.handlers)) for lg in (pml_logger, root)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("error", message="conquer_epoch is deprecated")
        try:
            yield tmp_path
        finally:
            torch.set_num_threads(threads)
            for lg, level, handlers in saved:  # a page may show how to switch logging on
                lg.setLevel(level)
                lg.handlers[:] = handlers
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def run_page(path):
    """Run the python blocks of ``path`` in order, in one namespace; returns it."""
    page = rel(path)
    namespace = {"__name__": "__docs__"}
    namespace.update(doc_fixtures.PAGE_BLANKS.get(page, doc_fixtures.reader_blanks)())
    for index, line, code, output in python_blocks(path):
        where = f"{page}, python block {index + 1} (line {line})"
        if (page, index) in doc_fixtures.STAND_INS:
            code = doc_fixtures.STAND_INS[(page, index)]
        elif not code.lstrip().startswith(">>>"):  # doctests train nothing: their numbers stay as shown
            code = shrink_epochs(code)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            if code.lstrip().startswith(">>>"):
                test = doctest.DocTestParser().get_doctest(code, namespace, where, page, line)
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
                report = io.StringIO()
                runner.run(test, out=report.write, clear_globs=False)
                assert runner.failures == 0, f"{where}:\n{report.getvalue()}"
            else:
                exec(compile(code, where, "exec"), namespace)
        if output is not None and (page, index) not in doc_fixtures.STAND_INS:
            assert matches_output(output, printed.getvalue()), (
                f"{where} printed:\n{printed.getvalue()}\nbut the page shows:\n{output}"
            )
    return namespace


# checks after a page has run: what its code must have done
def _trained_through_all_phases(ns, phases=("full_embedding",)):
    assert str(ns["dc"].phase) in phases, ns["dc"].phase
    assert ns["dc"].last_epoch >= doc_fixtures.SHRUNK_EPOCHS - 1


PAGE_CHECKS = {
    "README.md": lambda ns: ns["trainer"].epoch == doc_fixtures.SHRUNK_EPOCHS,
    "docs/index.md": lambda ns: _trained_through_all_phases(ns),
    "docs/quickstart.md": lambda ns: _trained_through_all_phases(ns),
    "docs/how-to/paper-recipe.md": lambda ns: _trained_through_all_phases(ns),
    "docs/how-to/resuming.md": lambda ns: _trained_through_all_phases(ns),
}


def shut_down_dataloader_workers(namespace):
    """Stop the worker processes of the trainers' last DataLoader iterators now. (PML keeps the iterator of the last
    epoch, its workers idle; when the garbage collector finds it later, torch's shutdown waits 5 s per worker.)"""
    for value in list(namespace.values()):
        shutdown = getattr(getattr(value, "dataloader_iter", None), "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


@pytest.mark.parametrize("path", PAGES_WITH_CODE, ids=rel)
def test_page_code_runs(path, doc_environment):
    namespace = {}
    try:
        namespace = run_page(path)
        check = PAGE_CHECKS.get(rel(path))
        if check is not None:
            assert check(namespace) is not False, rel(path)
    finally:
        shut_down_dataloader_workers(namespace)


def test_every_page_with_python_code_is_run():
    names = {rel(p) for p in PAGES_WITH_CODE}
    assert {"README.md", "docs/index.md", "docs/quickstart.md", "docs/how-to/paper-recipe.md"} <= names
    # nothing hides from the runner: every fence that holds Python is a ```python block
    for path in DOC_PAGES:
        for lang, _, code, line in fenced_blocks(path):
            if lang in ("py", "python3", "pycon") or (lang == "" and re.search(r"^(import|from) \w", code, re.M)):
                pytest.fail(f"{rel(path)}:{line}: Python in a ```{lang} block, which the tests would not run")


def test_blocks_that_need_a_gpu_or_a_download_say_so_and_have_a_stand_in():
    marked = {(rel(p), i) for p in DOC_PAGES for i, _, code, _ in python_blocks(p) if NEEDS.match(code)}
    assert marked == set(doc_fixtures.STAND_INS), (marked, set(doc_fixtures.STAND_INS))
    assert ("docs/how-to/paper-recipe.md", 0) in marked


def test_code_in_the_docs_fits_the_content_column():
    long = []
    for path in DOC_PAGES:
        if rel(path) in WIDTH_EXEMPT:
            continue
        for lang, _, code, line in fenced_blocks(path):
            if path.name == "README.md" and lang != "python":
                continue  # README's newcomer commands are read on a terminal or a forge, not in the docs column
            for k, text in enumerate(code.splitlines()):
                if len(text) > CODE_WIDTH:
                    long.append(f"{rel(path)}:{line + k}: {len(text)} characters")
    for nb_path in NOTEBOOKS + [PAPER_RECIPE]:
        for cell in json.loads(nb_path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                for text in "".join(cell["source"]).splitlines():
                    if len(text) > CODE_WIDTH:
                        long.append(f"{nb_path.name}: {len(text)} characters: {text[:40]}...")
    assert not long, "\n".join(long)


def test_the_plain_loop_diff_is_the_pages_own_two_loops():
    """docs/how-to/plain-loop.md shows D&C as a diff of PML's plain loop: its old side must be the page's first
    python block (the loop without D&C) and its new side the second (the loop with D&C), which
    test_page_code_runs runs (tests/test_plain_loop.py counts the lines it adds)."""
    page = ROOT / "docs" / "how-to" / "plain-loop.md"
    diff = next(code for lang, _, code, _ in fenced_blocks(page) if lang == "diff")
    without, with_dc = [code for _, _, code, _ in python_blocks(page)][:2]
    lines = diff.splitlines()
    assert "\n".join(line[1:] for line in lines if not line.startswith("+")).strip() == without.strip()
    assert "\n".join(line[1:] for line in lines if not line.startswith("-")).strip() == with_dc.strip()


# ---------------------------------------------------------------------------------------------------- the FAQ
FAQ = ROOT / "docs" / "faq.md"
# messages a new user meets first: the FAQ must explain each (fragments of the package's messages)
FAQ_MUST_COVER = [
    # setting up, in each kind of loop
    "DivideConquerWrapper was not set up: in your own loop call dc.setup(",
    "must contain the wrapper's SubspaceMaskedEmbedder",
    "is the embedder itself",
    "must hold the {number of labels} samples of the ClusterSampler's labels",
    "which does not take the D&C step",
    "has trainable parameters that no optimizer holds",
    "freeze_trunk_epochs needs an optimizer that holds the trunk's parameters",
    "give the trunk a group of its own",
    "is in eval mode but gradients are being computed",
    "cannot read (inputs, labels) from a batch",
    # the sampler and the DataLoader
    "ClusterSampler takes batch_size and m as keywords",
    "is not a multiple of m=",
    "classes per batch",
    "must be integers, got dtype",
    "ClusterSampler yields sample indices, but the DataLoader got it as batch_sampler=",
    "the DataLoader's batch_size=",
    "cannot fill a batch of",
    "no cluster can fill a batch of",
    "they are left out of the batches until the next reclustering",
    # PML's trainers
    "the trainer's sampler is not the wrapper's ClusterSampler",
    "differs from ClusterSampler's batch_size",
    "freeze_these contains",
    # Lightning
    "the training DataLoader does not draw from the wrapper's ClusterSampler",
    "use_distributed_sampler=False",
    "DivideConquerCallback found",
    # during training
    "reached DivideConquerWrapper, but the end-of-epoch step after epoch",
    "DivideConquerWrapper's end-of-epoch step was last taken after epoch",
    "were never taken",
    "received a batch that its ClusterSampler did not draw",
    "dc.one_batch()",
    "the labels the loss received do not match the batch ClusterSampler drew",
    "got an indices_tuple and a miner in DivideConquerWrapper",
    # the schedule, the wrapper's arguments, reclustering
    "conquer_epoch is deprecated",
    "give the schedule either as schedule= or as",
    "is not a power of two",
    "it was built with embedding_size=",
    "k-means with K=",
    "does not use class labels",
]


def faq_quotes():
    return [code for lang, attrs, code, _ in fenced_blocks(FAQ) if lang == "text"]


def test_faq_quotes_only_messages_the_package_gives():
    templates = faq_messages.templates()
    quotes = faq_quotes()
    assert len(quotes) >= 30
    stale = [q for q in quotes if not faq_messages.is_quoted_from(q, templates)]
    assert not stale, "quoted in docs/faq.md but not in the package:\n\n" + "\n\n".join(stale)


def test_faq_covers_the_main_messages():
    quoted = " ".join(faq_messages.normalise(q) for q in faq_quotes())
    missing = [m for m in FAQ_MUST_COVER if m not in quoted]
    assert not missing, missing
    text = FAQ.read_text()
    assert "optimizer got an empty parameter list" in text  # torch's error, with a parameter-free loss
    assert "Converting a tensor with requires_grad=True" in text  # torch's warning about PML's progress bar
    assert '\\"' not in text  # no escaped quotes in titles


def test_faq_generator_reads_the_messages_from_the_source():
    templates = faq_messages.templates()
    assert "sampler.py" in templates and "wrapper.py" in templates
    joined = [faq_messages.normalise(t) for ts in templates.values() for t in ts]
    assert any(t.startswith("batch_size={batch_size} is not a multiple of m={m}") for t in joined)
    assert faq_messages.is_quoted_from("…is not a multiple of m={m}: a batch holds", templates)
    assert not faq_messages.is_quoted_from("a message that the package does not give", templates)


# ---------------------------------------------------------------------------------------------- the site
PUBLIC_API = (
    "SubspaceMaskedEmbedder",
    "ClusterSampler",
    "DivideConquerWrapper",
    "DivideConquerSchedule",
    "Phase",
    "parameter_groups",
    "prepare",
    "get_end_of_epoch_hook",
    "journal",
    "cvpr",
    "set_assignment",
    "evaluate_subspaces",
    "cluster_purity",
)
INTERNALS = (
    "pop_ticket",
    "plan_pass",
    "check_rank",
    "map_labels",
    "split_masks",
    "embed_training_set",
    "batches_per_pass",
    "faiss_gpu_available",
    "invalid_clusters",
    "overlap_matrix",
)


def code_lines_in_html(page):
    """Lines of the code blocks of a built page: Markdown fences, docstring examples, notebook input cells."""
    lines = []
    for block in re.findall(
        r'<div class="(?:highlight|highlight-ipynb)[^"]*"[^>]*>\s*(?:<span[^>]*></span>)?'
        r"<pre[^>]*>(.*?)</pre>",
        page,
        re.S,
    ):
        text = html.unescape(re.sub(r"<[^>]+>", "", block))
        lines.extend(text.splitlines())
    return lines


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the API reference was generated from the docstrings, and shows the public API only
    api = (site / "api" / "index.html").read_text()
    for name in PUBLIC_API:
        assert name in api, name
    for name in INTERNALS:
        assert name not in api, name
    # the FAQ quotes the package's real error messages
    faq = (site / "faq" / "index.html").read_text()
    assert "is not a multiple of m" in faq
    # the notebooks are part of the site, with their plots
    assert (site / "examples" / "04_looking_inside" / "index.html").exists()
    # code fits the content column everywhere: pages, docstring examples, notebook cells
    long = []
    for page in site.rglob("index.html"):
        if "benchmarks" in page.parts:
            continue
        for line in code_lines_in_html(page.read_text()):
            if len(line.rstrip()) > CODE_WIDTH:
                long.append(f"{page.relative_to(site)}: {line.strip()[:60]}...")
    assert not long, "\n".join(long)
    assert any(code_lines_in_html((site / "api" / "index.html").read_text()))  # the check saw the docstrings


# ---------------------------------------------------------------------------------------------- notebooks
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
    assert not [o for o in outputs(nb) if o.get("name") == "stderr"], "a notebook printed warnings or errors"
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
