"""Reader for OpenFace's PDM text files (mean shape, principal components, eigenvalues)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .matio import TextReader, read_text


@dataclass(frozen=True)
class PDMData:
    """A 3D point distribution model as stored by OpenFace.

    Attributes
    ----------
    mean_shape : (3n,) float32
        ``[x0..xn-1, y0..yn-1, z0..zn-1]``.
    princ_comp : (3n, m) float32
        Modes of variation, rows ordered like ``mean_shape``.
    eigen_values : (m,) float32
        Variance of each mode.
    path : Path
        File it was read from.
    """

    mean_shape: np.ndarray
    princ_comp: np.ndarray
    eigen_values: np.ndarray
    path: Path

    @property
    def n_points(self) -> int:
        return self.mean_shape.shape[0] // 3

    @property
    def n_modes(self) -> int:
        return self.princ_comp.shape[1]


def read_pdm(path: str | Path) -> PDMData:
    """Read a PDM text file; OpenFace keeps all three matrices as float32.

    Raises
    ------
    ModelError
        File missing, unreadable, truncated, or with inconsistent sizes.
    """
    p = Path(path)
    rd = TextReader(p, read_text(p))
    mean = rd.mat("the mean shape")
    pcs = rd.mat("the principal components")
    eig = rd.mat("the eigenvalues")
    if mean.ndim != 2 or mean.shape[1] != 1 or mean.shape[0] % 3 or mean.shape[0] == 0:
        raise ModelError(f"mean shape must be a (3n, 1) column, found {mean.shape}", p)
    if pcs.shape[0] != mean.shape[0]:
        raise ModelError(f"principal components have {pcs.shape[0]} rows, "
                         f"mean shape has {mean.shape[0]}", p)
    if eig.size != pcs.shape[1]:
        raise ModelError(f"{eig.size} eigenvalues for {pcs.shape[1]} modes", p)
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (mean.ravel(), pcs, eig.ravel())]
    for name, a in zip(("mean shape", "principal components", "eigenvalues"), arrays):
        if not np.all(np.isfinite(a)):
            raise ModelError(f"{name} contain NaN or infinite values", p)
    if np.any(arrays[2] <= 0):
        raise ModelError("eigenvalues must be positive", p)
    return PDMData(arrays[0], arrays[1], arrays[2], p)
