"""Installing: scripts/setup.sh passes TORCH_INDEX_URL on to pip, and the package metadata has the extras the docs
name.

The script runs for real, in a copy of the repository whose ``.venv/bin/python`` is a shim that records its
arguments (so pip is never run), with a ``dpkg`` shim on PATH that says every data package is installed.
"""

import configparser
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _shim(path, body):
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def run_setup(tmp_path, **env):
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    (repo / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls.txt"
    # one line per call: the arguments, separated by tabs
    _shim(repo / ".venv" / "bin" / "python", f'(IFS=$\'\\t\'; echo "$*") >> "{log}"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _shim(bin_dir / "dpkg", "exit 0\n")
    base = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX_URL", "TORCH_SPEC", "PYTHON")}
    env = {**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [line.split("\t") for line in log.read_text().splitlines()]
    return [c for c in calls if c[:3] == ["-m", "pip", "install"]], calls


def test_setup_default_installs_the_pinned_torch_and_the_package_in_one_pip_call(tmp_path):
    pip_calls, calls = run_setup(tmp_path)
    assert len(pip_calls) == 1, calls
    (call,) = pip_calls
    assert "torch==2.13.0" in call and "-e" in call and ".[dev]" in call
    assert not any(a in ("--index-url", "--extra-index-url") for a in call)
    assert any(c[0] == "-c" and "import torch" in c[1] for c in calls)  # the "ready:" check runs


def test_setup_installs_torch_from_TORCH_INDEX_URL_first(tmp_path):
    pip_calls, calls = run_setup(tmp_path, TORCH_INDEX_URL=CPU_INDEX)
    assert len(pip_calls) == 2, calls
    torch_call, package_call = pip_calls
    i = torch_call.index("--index-url")
    assert torch_call[i + 1] == CPU_INDEX
    assert "torch==2.13.0" in torch_call and ".[dev]" not in torch_call
    # the package's own install gets neither the index (its other requirements come from the usual index) nor a
    # torch requirement of its own, so torch stays the build from TORCH_INDEX_URL
    assert package_call[-2:] == ["-e", ".[dev]"]
    assert "--index-url" not in package_call and not any(a.startswith("torch") for a in package_call)


def test_setup_passes_TORCH_SPEC_on(tmp_path):
    pip_calls, _ = run_setup(tmp_path, TORCH_INDEX_URL=CPU_INDEX, TORCH_SPEC="torch==2.14.1")
    assert "torch==2.14.1" in pip_calls[0]


def test_extras_logging_and_dev():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = cfg["options"]["install_requires"].split()
    extras = {k: v.split() for k, v in cfg["options.extras_require"].items()}
    # the library imports faiss (k-means) but not record-keeper: that is only for PML's logging_presets
    assert any(r.startswith("faiss-cpu") for r in requires)
    assert not any(r.startswith("record-keeper") for r in requires)
    for extra in ("logging", "dev"):  # dev pulls what the tests need, logging included
        assert any(r.startswith("record-keeper") for r in extras[extra]), extra
        assert any(r.startswith("tensorboard") for r in extras[extra]), extra
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert cfg["metadata"]["license_expression"] == "MIT"  # (SPDX: the license classifier is deprecated)
    assert not any("License ::" in c for c in cfg["metadata"]["classifiers"].splitlines())
