"""Finding OpenFace's model folder and checking its files against known SHA-256 values."""
from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import ClnfdiagWarning, ModelError

#: Where the pyclnf/pyfaceau cache keeps OpenFace 2.2.0's landmark models.
CACHE_SUBDIR = Path("2.2.0/originals/lib/local/LandmarkDetector/model")
MAIN_CONFIG = "main_clnf_general.txt"

HOW_TO_PROVIDE = ("point --models or $OPENFACE_MODELS_DIR at a folder holding "
                  f"{CACHE_SUBDIR}/ (the pyclnf/pyfaceau cache) or OpenFace's own model/ folder")


class ModelChecksumWarning(ClnfdiagWarning):
    """A model file is unknown or differs from OpenFace 2.2.0's."""


def default_root() -> Path:
    """``$XDG_DATA_HOME/OpenFaceModels`` (``~/.local/share/OpenFaceModels`` by default)."""
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "OpenFaceModels"


def _model_dir_in(root: Path) -> Path | None:
    for cand in (root / CACHE_SUBDIR, root / "originals/lib/local/LandmarkDetector/model",
                 root / "lib/local/LandmarkDetector/model", root / "model", root):
        if (cand / MAIN_CONFIG).is_file():
            return cand
    return None


def find_model_dir(explicit: str | Path | None = None) -> Path:
    """The folder holding ``main_clnf_general.txt``; first match wins.

    Order: ``explicit`` (``--models``), ``$OPENFACE_MODELS_DIR``,
    ``$XDG_DATA_HOME/OpenFaceModels``. Each may be the cache root, the
    ``2.2.0`` folder, or a plain OpenFace ``model/`` folder.

    Raises
    ------
    ModelError
        No candidate holds the models (the message says how to provide them).
    """
    if explicit is not None:
        cands = [("--models", Path(explicit))]
    else:
        cands = []
        env = os.environ.get("OPENFACE_MODELS_DIR")
        if env:
            cands.append(("$OPENFACE_MODELS_DIR", Path(env)))
        cands.append(("default location", default_root()))
    for label, root in cands:
        if not root.exists():
            if label != "default location" or len(cands) == 1:
                raise ModelError(f"model folder does not exist ({label}); {HOW_TO_PROVIDE}", root)
            continue
        found = _model_dir_in(root.resolve())
        if found is not None:
            return found
        if label != "default location":
            raise ModelError(f"no {MAIN_CONFIG} found in this folder ({label}); {HOW_TO_PROVIDE}",
                             root)
    raise ModelError(f"OpenFace model files not found; {HOW_TO_PROVIDE}", cands[-1][1])


@lru_cache(maxsize=1)
def known_checksums() -> dict[str, str]:
    """Known SHA-256 of OpenFace 2.2.0's model files, keyed by path relative to ``model/``."""
    text = resources.files("clnfdiag").joinpath("data/openface-2.2.0-models.sha256").read_text()
    out = {}
    for line in text.splitlines():
        if line.strip():
            digest, rel = line.split(None, 1)
            out[rel.strip()] = digest
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, model_dir: Path, strict: bool = False) -> str:
    """Check one model file's SHA-256 against OpenFace 2.2.0's.

    Returns the digest. An unknown or modified file gives a
    :class:`ModelChecksumWarning` naming it, or a :class:`ModelError` when ``strict``.
    """
    digest = sha256_file(path)
    try:
        # abspath, not resolve: a folder of per-file symlinks must keep its own names.
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(model_dir)).as_posix()
    except ValueError:
        rel = path.name
    expected = known_checksums().get(rel)
    if expected == digest:
        return digest
    msg = ("unknown model file (not part of OpenFace 2.2.0)" if expected is None
           else f"differs from OpenFace 2.2.0 (SHA-256 {digest[:12]}…, expected {expected[:12]}…)")
    if strict:
        raise ModelError(msg, path)
    warnings.warn(f"{path}: {msg}", ModelChecksumWarning, stacklevel=2)
    return digest
