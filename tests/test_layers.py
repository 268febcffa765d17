"""The package's layers (``.importlinter``) hold: lint-imports passes, and a violation is caught."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_layer_contracts_kept():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " 0 broken" in res.stdout


def test_an_upward_import_is_caught(tmp_path):
    # A copy of the package where the exact numerics import the comparator must fail.
    shutil.copytree(REPO / "clnfdiag", tmp_path / "clnfdiag",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    fma = tmp_path / "clnfdiag" / "numerics" / "fma.py"
    fma.write_text(fma.read_text() + "\nfrom ..compare import comparator  # noqa\n")
    res = _lint(tmp_path)
    assert res.returncode != 0
    assert "clnfdiag.numerics" in res.stdout and "BROKEN" in res.stdout
