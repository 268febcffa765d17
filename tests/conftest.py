"""Shared locations for the tests.

The repository is cloned next to ``shared/`` (read-only reference material:
OpenFace models, golden cases). Tests that need ``shared/`` build their
parameters from :func:`shared_cases`, which yields nothing when it is absent,
so those tests are not generated rather than silently skipped.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests change the working folder (pyproject.toml look-ups, outputs); a relative model folder
# (the README's OPENFACE_MODELS_DIR=../shared/OpenFaceModels) must keep meaning the same one.
if os.environ.get("OPENFACE_MODELS_DIR"):
    os.environ["OPENFACE_MODELS_DIR"] = str(Path(os.environ["OPENFACE_MODELS_DIR"]).resolve())

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_GOLDEN = SHARED / "golden"
SHARED_GOLDEN_H = SHARED / "golden-hierarchical"
PROJECT_GOLDEN = REPO / "golden"


def case_dirs(folder: Path) -> list[Path]:
    """Case folders (holding manifest.json) directly under ``folder``; [] if it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file())


def project_cases() -> list[Path]:
    """The golden cases committed in the project (``golden/``)."""
    return case_dirs(PROJECT_GOLDEN)


def shared_cases() -> list[Path]:
    """Every golden case in ``shared/golden`` and ``shared/golden-hierarchical`` (none without shared/)."""
    return case_dirs(SHARED_GOLDEN) + case_dirs(SHARED_GOLDEN_H)


def golden_passes(case_dir: Path, stage: str) -> list[int]:
    """The passes 0, 1, ... of a golden case that hold ``pass<k>/<stage>`` (read from the archive index)."""
    import zipfile
    with zipfile.ZipFile(case_dir / "stages.npz") as z:
        names = set(z.namelist())
    out: list[int] = []
    while f"pass{len(out)}/{stage}.npy" in names:
        out.append(len(out))
    return out


def case_pass_id(item) -> str:
    """pytest id of a (case folder, pass) parameter: ``project/golden/astronaut_default`` / ``pass0``."""
    if isinstance(item, Path):
        where = "project" if item.parent == PROJECT_GOLDEN else "shared"
        return f"{where}/{item.parent.name}/{item.name}"
    return f"pass{item}"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def project_golden() -> Path:
    return PROJECT_GOLDEN
