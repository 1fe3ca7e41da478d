"""The code base stays linted and formatted with ruff (settings in pyproject.toml: 120 columns)."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff():
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]' (bash scripts/setup.sh) installs it")
    return exe


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_is_clean(args):
    done = subprocess.run([ruff(), *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def _members_help_shows():
    """Every function and method of the package with what `help()` shows for it (docstring, or the comment above)."""
    import importlib
    import inspect
    import pkgutil

    import pml_divide_conquer

    for info in pkgutil.walk_packages(pml_divide_conquer.__path__, "pml_divide_conquer."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            members = vars(obj).items() if inspect.isclass(obj) else [(None, obj)]
            for member_name, member in members:
                if inspect.isfunction(member):
                    shown = inspect.getdoc(member) or inspect.getcomments(member) or ""
                    yield f"{module.__name__}.{name}" + (f".{member_name}" if member_name else ""), shown


def test_help_shows_no_separator_comment_as_a_docstring():
    # pydoc falls back to the comment right above an undocumented def: a "# ---- state" banner would show as the
    # method's documentation in help(ClusterSampler) (issue 16 item 7)
    banners = [name for name, shown in _members_help_shows() if shown.lstrip().startswith("# ---")]
    assert not banners, banners


PACKAGE = ROOT / "pml_divide_conquer"
# what the core may import from PML outside integrations/ and compat.py: PML's component packages
PML_COMPONENTS = tuple(
    f"pytorch_metric_learning.{p}" for p in ("losses", "miners", "distances", "reducers", "regularizers")
)


def imports_of(path, top_level_only=False):
    """(line, imported name) of every import in ``path`` (relative imports resolved; ``from a import b`` gives
    ``a`` and ``a.b``); ``top_level_only``: only the module's own statements, not imports inside functions."""
    import ast
    import importlib.util

    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    here = ".".join(("pml_divide_conquer",) + path.relative_to(PACKAGE).parent.parts)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), here)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def core_modules():
    """The package's modules outside integrations/ (the glue)."""
    return [p for p in PACKAGE.rglob("*.py") if "integrations" not in p.relative_to(PACKAGE).parts]


def test_the_core_imports_no_trainer_framework():
    # routing, the epoch step and the parts know no trainer; the glue for PML's trainers and for Lightning lives in
    # integrations/ and imports the core, never the reverse. (The wrapper's prepare() and get_end_of_epoch_hook()
    # import the PML glue where they use it: inside those methods, not at import time.)
    banned = ("pytorch_metric_learning.trainers", "pytorch_lightning", "lightning", "pml_divide_conquer.integrations")
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {name}"
        for path in core_modules()
        for line, name in imports_of(path, top_level_only=True)
        if any(name == b or name.startswith(b + ".") for b in banned)
    ]
    assert not found, found


def test_importing_the_package_loads_no_trainer_glue():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, pml_divide_conquer; print(sorted(m for m in sys.modules if "
         "m.startswith(('pml_divide_conquer.integrations', 'pytorch_metric_learning.trainers', "
         "'pytorch_metric_learning.testers', 'pytorch_lightning'))))"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_core_reaches_pml_only_through_its_components_and_one_compat_module():
    # one seam to PML (PML 3 removed trainers, testers and most of utils): outside integrations/ and compat.py the
    # package imports only PML's component packages
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {name}"
        for path in core_modules()
        if path.name != "compat.py"
        for line, name in imports_of(path)
        if name.startswith("pytorch_metric_learning")
        and name != "pytorch_metric_learning"
        and not any(name == c or name.startswith(c + ".") for c in PML_COMPONENTS)
    ]
    assert not found, found


def test_the_tests_mirror_the_package():
    # a test file for every module (tests/integrations/ for the glue); __init__.py: test_package.py, unless it is
    # a bare face (a docstring only)
    tests = ROOT / "tests"
    missing = []
    for path in PACKAGE.rglob("*.py"):
        sub = path.relative_to(PACKAGE).parent
        name = "test_package.py" if path.name == "__init__.py" else f"test_{path.stem}.py"
        body = ast.parse(path.read_text()).body
        if path.name == "__init__.py" and sub.parts and all(isinstance(n, ast.Expr) for n in body):
            continue  # a docstring only
        if not (tests / sub / name).exists():
            missing.append(f"{path.relative_to(ROOT)} -> tests/{(sub / name).as_posix()}")
    assert not missing, missing


def test_no_test_module_imports_another():
    found = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not found, found
