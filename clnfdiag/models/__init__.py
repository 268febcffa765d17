"""OpenFace model files: locating them, checking them, and reading them into a :class:`Model`.

>>> from clnfdiag.models import load_model
>>> model = load_model()                 # $OPENFACE_MODELS_DIR or the XDG cache
>>> model.main.pdm.n_points, [s.patch_scaling for s in model.main.scales]
(68, [0.25, 0.35, 0.5])
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..parameters import FitParameters, part_parameters
from .ccnf_file import CCNFExpert, CCNFScale, read_ccnf
from .config import read_clnf_config, read_main_config
from .locate import MAIN_CONFIG, ModelChecksumWarning, find_model_dir, verify_file
from .pdm_file import PDMData, read_pdm

__all__ = ["Model", "CLNFModel", "PartModel", "load_model", "find_model_dir", "PDMData",
           "CCNFScale", "CCNFExpert", "ModelChecksumWarning"]


@dataclass
class CLNFModel:
    """One CLNF: a PDM and its CCNF patch experts for every patch scale.

    Attributes
    ----------
    name : str
        ``main`` or the part's name.
    pdm : PDMData
    scales : list[CCNFScale]
        In the order of the config (increasing patch scaling).
    files : dict[str, str]
        Every file read, relative to the model folder, with its SHA-256.
    """

    name: str
    pdm: PDMData
    scales: list[CCNFScale]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def patch_scales(self) -> list[float]:
        return [s.patch_scaling for s in self.scales]


@dataclass
class PartModel:
    """A hierarchical part model (inner face, an eye) and how it maps to the main points.

    Attributes
    ----------
    mapping : (k, 2) int64
        Columns: index in the main model, index in the part model.
    parameters : FitParameters
        The settings OpenFace gives this part.
    """

    name: str
    model: CLNFModel
    mapping: np.ndarray
    parameters: FitParameters


@dataclass
class Model:
    """Everything read from an OpenFace model folder."""

    model_dir: Path
    main: CLNFModel
    parts: list[PartModel]

    @property
    def files(self) -> dict[str, str]:
        out = dict(self.main.files)
        for p in self.parts:
            out.update(p.model.files)
        return out


def _rel(path: Path, model_dir: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(model_dir)).as_posix()
    except ValueError:
        return str(path)


def _checked(path: Path, model_dir: Path, strict: bool, files: dict[str, str]) -> Path:
    if not path.is_file():
        raise ModelError("model file is missing", path)
    files[_rel(path, model_dir)] = verify_file(path, model_dir, strict)
    return path


def _load_clnf(name: str, clnf_cfg_path: Path, model_dir: Path, strict: bool,
               files: dict[str, str]) -> CLNFModel:
    cfg = read_clnf_config(_checked(clnf_cfg_path, model_dir, strict, files))
    pdm = read_pdm(_checked(cfg.pdm_file, model_dir, strict, files))
    scales = [read_ccnf(_checked(f, model_dir, strict, files)) for f in cfg.ccnf_files]
    for f, s in zip(cfg.ccnf_files, scales):
        s.sha256 = files[_rel(f, model_dir)]
    for s in scales:
        if s.n_points != pdm.n_points:
            raise ModelError(f"patch experts are for {s.n_points} points, the PDM has "
                             f"{pdm.n_points}", s.path)
    return CLNFModel(name, pdm, scales, files)


def load_model(models: str | Path | None = None, strict: bool = False,
               parts: bool = True) -> Model:
    """Locate, verify and read OpenFace's CLNF model (and its part models).

    Parameters
    ----------
    models : str or Path, optional
        Model folder (``--models``); otherwise ``$OPENFACE_MODELS_DIR``, then
        ``$XDG_DATA_HOME/OpenFaceModels``.
    strict : bool
        Unknown or modified files are errors instead of warnings.
    parts : bool
        Also read the hierarchical part models named in the main config.

    Raises
    ------
    ModelError
        One line naming the file and what is wrong with it.
    """
    model_dir = find_model_dir(models)
    files: dict[str, str] = {}
    main_path = _checked(model_dir / MAIN_CONFIG, model_dir, strict, files)
    main_cfg = read_main_config(main_path)
    main = _load_clnf("main", main_cfg.clnf_file, model_dir, strict, files)
    part_models = []
    if parts:
        for entry in main_cfg.parts:
            part_files: dict[str, str] = {}
            part_main = read_main_config(_checked(entry.main_file, model_dir, strict, part_files))
            part = _load_clnf(entry.name, part_main.clnf_file, model_dir, strict, part_files)
            mapping = np.array(entry.mapping, dtype=np.int64).reshape(-1, 2)
            if mapping.size and (mapping[:, 0].max() >= main.pdm.n_points
                                 or mapping[:, 1].max() >= part.pdm.n_points):
                raise ModelError(f"landmark mapping of part {entry.name!r} is out of range",
                                 main_path)
            part_models.append(PartModel(entry.name, part, mapping, part_parameters(entry.name)))
    return Model(model_dir, main, part_models)
