"""The code base stays linted and formatted with ruff (settings in pyproject.toml: 120 columns)."""

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


def test_the_core_imports_no_trainer_framework():
    # issue 17 item 10: routing, the epoch step and the parts know no trainer; the glue for PML's trainers and for
    # Lightning lives in integrations/ and imports the core, never the reverse
    import ast
    import importlib.util

    package = Path(__file__).resolve().parents[1] / "pml_divide_conquer"
    banned = ("pytorch_metric_learning.trainers", "pytorch_lightning", "lightning", "pml_divide_conquer.integrations")
    found = []
    for path in package.rglob("*.py"):
        if "integrations" in path.relative_to(package).parts or path == package / "__init__.py":
            continue  # the glue itself, and the package's front door, which loads the PML glue for prepare()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                here = ".".join(("pml_divide_conquer",) + path.relative_to(package).parent.parts)
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), here)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if any(name == b or name.startswith(b + ".") for b in banned):
                    found.append(f"{path.relative_to(package)}:{node.lineno}: {name}")
    assert not found, found
