"""OpenFace's model files for the tests: found once, and a clear failure (never a skip) without them.

Tests look for the models in ``$OPENFACE_MODELS_DIR`` or, by default, in
``shared/OpenFaceModels`` next to the repository (the pyclnf/pyfaceau cache
layout, ``2.2.0/originals/lib/local/LandmarkDetector/model/``).

Model files are OpenFace's (non-commercial licence): never copy them into the
repository; tests that need corrupted copies make them under ``tmp_path``.
"""
from __future__ import annotations

import os
import shutil
import stat
from functools import lru_cache
from pathlib import Path

import pytest

from clnfdiag.errors import ModelError
from clnfdiag.models import Model, find_model_dir, load_model

from conftest import SHARED

#: Where the shared copy of the model cache lives (root of the cache layout).
SHARED_MODELS = SHARED / "OpenFaceModels"

HOW_TO = ("OpenFace 2.2.0 model files are needed for this test: set OPENFACE_MODELS_DIR to the "
          "pyclnf/pyfaceau cache root (holding 2.2.0/originals/lib/local/LandmarkDetector/model/) "
          "or to OpenFace's own lib/local/LandmarkDetector/model/ folder "
          f"(default looked at: {SHARED_MODELS})")


def models_root() -> Path:
    """``$OPENFACE_MODELS_DIR`` when set, else ``shared/OpenFaceModels``."""
    env = os.environ.get("OPENFACE_MODELS_DIR")
    return Path(env) if env else SHARED_MODELS


def model_dir_or_fail() -> Path:
    """The folder holding ``main_clnf_general.txt``; fails the test with the how-to if absent."""
    try:
        return find_model_dir(models_root())
    except ModelError as err:
        pytest.fail(f"{HOW_TO}\n{err}", pytrace=False)


@lru_cache(maxsize=2)
def _load(root: str) -> Model:
    return load_model(root)


def model_or_fail() -> Model:
    """The whole model (main and parts), loaded once per session."""
    try:
        return _load(str(models_root()))
    except ModelError as err:
        pytest.fail(f"{HOW_TO}\n{err}", pytrace=False)


def writable_copy(src: Path, dst: Path) -> Path:
    """Copy a model folder to ``dst`` (under tmp_path) and make everything writable.

    The shared cache is read-only, and ``copytree`` keeps modes.
    """
    shutil.copytree(src, dst, symlinks=False)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return dst
