"""The package's types: mypy passes over it (its settings: pyproject.toml's [tool.mypy]), and every parameter and
return of the public API is annotated (the package ships py.typed, so users' checkers read them)."""

import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pml_divide_conquer

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.md"
MYPY_SECONDS = 60  # from a cold cache, as CI starts, on a loaded 2-core machine (about 15 s alone)


def test_mypy_passes_over_the_package(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: pip install -e '.[dev]' (bash scripts/setup.sh) installs it")
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=10 * MYPY_SECONDS,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "no issues found" in done.stdout, done.stdout[-2000:]
    assert seconds < MYPY_SECONDS, f"mypy took {seconds:.0f} s from a cold cache"


def test_the_package_ships_its_types():
    assert (Path(pml_divide_conquer.__file__).parent / "py.typed").is_file()


# ---------------------------------------------------------------------------------------------- the public API


def _api_page_objects():
    """What docs/api.md documents (``::: target`` blocks): classes whole, modules by the ``members:`` they list."""
    out, target, members, in_members = [], None, [], False

    def close():
        if target is not None:
            out.append((target, list(members)))

    for line in API_PAGE.read_text().splitlines():
        if line.startswith("::: "):
            close()
            target, members, in_members = line[4:].strip(), [], False
        elif target is not None and line.strip() == "members:":
            in_members = True
        elif in_members and re.match(r"^\s+- \w+$", line):
            members.append(line.strip()[2:])
        elif line.strip():
            in_members = False
    close()
    found = []
    for dotted, listed in out:
        module_name, _, attr = dotted.rpartition(".")
        try:
            obj = importlib.import_module(dotted)
        except ImportError:
            obj = getattr(importlib.import_module(module_name), attr)
        if inspect.ismodule(obj):
            found += [(f"{dotted}.{name}", getattr(obj, name)) for name in listed]
        else:
            found.append((dotted, obj))
    return found


def public_api():
    """(name, function) of every public function, method, classmethod and property (``__init__`` included) of the
    classes in ``__all__``, DivideConquerCallback and everything the API page documents, and its functions."""
    lightning = pytest.importorskip("pytorch_lightning", reason="the Lightning callback needs pytorch-lightning")
    del lightning
    from pml_divide_conquer.integrations.lightning import DivideConquerCallback

    objects = [(f"pml_divide_conquer.{n}", getattr(pml_divide_conquer, n)) for n in pml_divide_conquer.__all__]
    objects += [("pml_divide_conquer.integrations.lightning.DivideConquerCallback", DivideConquerCallback)]
    objects += [o for o in _api_page_objects() if o[1] not in {obj for _, obj in objects}]
    out = {}
    for dotted, obj in objects:
        if inspect.isfunction(obj):
            out[dotted] = obj
            continue
        for name, member in vars(obj).items():
            if name.startswith("_") and name != "__init__":
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                member = member.fget
            if inspect.isfunction(member):
                out[f"{dotted}.{name}"] = member
    return out


def missing_annotations(functions):
    """``name(parameter)`` and ``name -> ?`` for every parameter and return without an annotation."""
    missing = []
    for name, function in functions.items():
        signature = inspect.signature(function)
        missing += [
            f"{name}({p})"
            for p, param in signature.parameters.items()
            if p not in ("self", "cls") and param.annotation is inspect.Parameter.empty
        ]
        if not name.endswith(".__init__") and signature.return_annotation is inspect.Signature.empty:
            missing.append(f"{name} -> ?")
    return missing


def test_every_parameter_and_return_of_the_public_api_is_annotated():
    functions = public_api()
    assert len(functions) > 100  # (the API is found: the classes, their methods, the documented functions)
    assert {"pml_divide_conquer.ClusterSampler.__init__", "pml_divide_conquer.clustering.kmeans"} <= set(functions)
    assert missing_annotations(functions) == []


def test_the_count_sees_a_missing_annotation():
    def half(x: int, y, *args, **kwargs: int):
        return x

    assert missing_annotations({"half": half}) == ["half(y)", "half(args)", "half -> ?"]
