"""The documentation's code runs as written: every ```python block of README.md and of docs/**/*.md, the blocks of
a page one after the other in one namespace. The tests only fill the reader's blanks (``trunk``, ``train_set``,
``train_labels``, ...: see tests/doc_fixtures.py), shrink epoch counts, and run an offline stand-in for the blocks
marked ``# Needs ...`` (a GPU, a download). Blocks written as doctests (``>>>``) are run as doctests, unchanged. A
```text block titled "Output" must be what the python block before it prints ("…" stands for any text). Code shown
in the docs fits the content column (88 characters)."""

import contextlib
import doctest
import functools
import io
import json
import logging
import re
import socket
import warnings

import pytest
import torch

import doc_fixtures
from doc_reading import (
    CODE_WIDTH,
    DOC_PAGES,
    NOTEBOOKS,
    PAPER_RECIPE,
    ROOT,
    fenced_blocks,
    python_blocks,
    rel,
)

# being rewritten by another engineer with new measurements: its long command lines are theirs to fold
WIDTH_EXEMPT = {"docs/benchmarks.md"}
EPOCHS = re.compile(r"\b(num_epochs|epochs|NUM_EPOCHS)(\s*=\s*)(\d+)\b")
NEEDS = re.compile(r"^# Needs\b")


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
