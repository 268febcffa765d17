"""Reader for OpenFace's binary CCNF patch-expert files (``ccnf_patches_*.txt``).

Layout (all little-endian): float64 patch scaling; int32 number of views; per
view a 3x1 matrix of view centre angles in degrees; per view a (n, 1) int32
visibility column; int32 number of window sizes, then per window size the
window (int32), the number of sigma components (int32) and those (w², w²)
float32 matrices; then for every view and landmark one patch expert:
marker 5, width, height, number of neurons (0: invisible, followed by one
padding int32), the neurons (marker 2, type, float64 norm_weights, bias,
alpha, a weights matrix), the float64 betas (one per sigma component) and a
float64 patch confidence.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .matio import _MAX_SIDE, CV_DTYPES, BinaryReader, read_bytes

#: Largest patch-expert side accepted (OpenFace's are 11); guards against reading garbage as a size.
_MAX_PATCH = 1024


@dataclass(frozen=True)
class CCNFExpert:
    """One landmark's CCNF patch expert in one view.

    Attributes
    ----------
    width, height : int
        Support of the expert (11 x 11 for the general model).
    neuron_types : (k,) int32
    norm_weights, biases, alphas : (k,) float64
        As stored (OpenFace keeps them as double).
    weights : (k, height, width) float32
        Neuron filters, as stored.
    betas : (b,) float64
        Weights of the sigma components (edge potentials).
    patch_confidence : float
        Reliability of the expert; NU-RLMS weights use it.
    """

    width: int
    height: int
    neuron_types: np.ndarray
    norm_weights: np.ndarray
    biases: np.ndarray
    alphas: np.ndarray
    weights: np.ndarray
    betas: np.ndarray
    patch_confidence: float

    @property
    def n_neurons(self) -> int:
        return int(self.alphas.shape[0])

    @property
    def empty(self) -> bool:
        return self.n_neurons == 0


@dataclass
class CCNFScale:
    """All CCNF patch experts of one patch scale.

    Attributes
    ----------
    path : Path
    patch_scaling : float
        Scale of the reference frame (0.25, 0.35, 0.5 for the general model).
    centers : (V, 3) float64
        View centres (pitch, yaw, roll) in radians (converted like OpenFace: degrees * pi / 180).
    visibility : (V, n) int32
        1 where the landmark has an expert in that view.
    sigma_components : dict[int, (b, w², w²) float32]
        Sigma components per response window size.
    experts : list[list[CCNFExpert]]
        ``experts[view][landmark]``.
    sha256 : str
        SHA-256 of the file's bytes when the loader knows it ("" otherwise): what is
        derived from the file alone (the Sigma matrices) is kept under it, once per process.
    """

    path: Path
    patch_scaling: float
    centers: np.ndarray
    visibility: np.ndarray
    sigma_components: dict[int, np.ndarray]
    experts: list[list[CCNFExpert]] = field(repr=False)
    sha256: str = ""

    @property
    def n_views(self) -> int:
        return self.centers.shape[0]

    @property
    def n_points(self) -> int:
        return self.visibility.shape[1]


#: A neuron's fixed head: marker, type, norm_weights, bias, alpha, then its weights' rows, cols, type.
_NEURON_HEAD = struct.Struct("<iidddiii")


def _read_neuron(rd: BinaryReader, where: str) -> tuple:
    """One neuron: ``(type, norm_weights, bias, alpha, (h, w) float32 weights)``.

    A well-formed neuron is read with one unpack of its fixed head and one view
    of its weights (a model has about 11,500 of them, so field-by-field reading
    was half of the model's load time); anything unusual is left to
    :func:`_read_neuron_checked`, which names the field and byte that are wrong.
    The values are the same either way.
    """
    data, start = rd.data, rd.offset
    end_head = start + _NEURON_HEAD.size
    if end_head <= len(data):
        marker, ntype, norm_w, bias, alpha, rows, cols, cv_type = _NEURON_HEAD.unpack_from(data, start)
        dtype = CV_DTYPES.get(cv_type)
        if (marker == 2 and ntype == 0 and dtype is not None and 0 <= rows <= _MAX_SIDE
                and 0 <= cols <= _MAX_SIDE and end_head + rows * cols * dtype.itemsize <= len(data)):
            w = np.frombuffer(data, dtype, rows * cols, end_head).reshape(rows, cols)
            with np.errstate(over="ignore", invalid="ignore"):
                w32 = w.astype(np.float32)
            if np.isfinite(w32).all() and np.isfinite((norm_w, bias, alpha)).all():
                rd.offset = end_head + rows * cols * dtype.itemsize
                return ntype, norm_w, bias, alpha, w32
    return _read_neuron_checked(rd, where)


def _read_neuron_checked(rd: BinaryReader, where: str) -> tuple:
    """:func:`_read_neuron` field by field, raising a :class:`ModelError` at the first bad one."""
    rd.expect_marker(2, f"neuron of {where}")
    ntype = rd.int32(f"neuron type of {where}")
    norm_w = rd.float64(f"norm_weights of {where}")
    bias = rd.float64(f"bias of {where}")
    alpha = rd.float64(f"alpha of {where}")
    start = rd.offset
    w = rd.mat(f"neuron weights of {where}")
    if ntype not in (0,):
        # Only intensity neurons (type 0) reach the OpenBLAS response path OpenFace uses.
        raise ModelError(f"unsupported neuron type {ntype} in {where}", rd.path, f"byte {start - 32}")
    with np.errstate(over="ignore", invalid="ignore"):
        w32 = w.astype(np.float32, copy=False)
    if not (np.isfinite(w32).all() and all(np.isfinite(v) for v in (norm_w, bias, alpha))):
        # A NaN or a weight beyond float32 would give NaN responses: the file is damaged.
        raise ModelError(f"non-finite value (or beyond float32) in {where}", rd.path, f"byte {start - 32}")
    return ntype, norm_w, bias, alpha, w32


def _read_expert(rd: BinaryReader, n_betas: int, where: str) -> CCNFExpert:
    rd.expect_marker(5, f"patch expert {where}")
    width = rd.int32(f"width of {where}")
    height = rd.int32(f"height of {where}")
    n_neurons = rd.int32(f"neuron count of {where}")
    if not (0 <= width <= _MAX_PATCH and 0 <= height <= _MAX_PATCH):
        raise ModelError(f"implausible patch size {width}x{height} for {where}", rd.path, f"byte {rd.offset - 12}")
    if n_neurons < 0 or n_neurons > 10_000:
        raise ModelError(f"implausible neuron count {n_neurons} for {where}", rd.path,
                         f"byte {rd.offset - 4}")
    if n_neurons == 0:
        rd.int32(f"padding of empty {where}")
        z = np.zeros(0)
        return CCNFExpert(width, height, z.astype(np.int32), z, z, z,
                          np.zeros((0, height, width), np.float32), z, 0.0)
    neurons = [_read_neuron(rd, f"{where} neuron {i}") for i in range(n_neurons)]
    shapes = {n[4].shape for n in neurons}
    if shapes != {(height, width)}:
        raise ModelError(f"neuron filters of {where} are {sorted(shapes)}, expected "
                         f"{(height, width)}", rd.path, f"byte {rd.offset}")
    betas = np.array([rd.float64(f"beta {b} of {where}") for b in range(n_betas)])
    confidence = rd.float64(f"patch confidence of {where}")
    cols = list(zip(*neurons))
    return CCNFExpert(width, height, np.array(cols[0], np.int32), np.array(cols[1]),
                      np.array(cols[2]), np.array(cols[3]), np.stack(cols[4]), betas, confidence)


def read_ccnf(path: str | Path) -> CCNFScale:
    """Read one CCNF patch-expert file.

    Raises
    ------
    ModelError
        Missing or truncated file, a wrong type marker, or inconsistent sizes,
        with the byte offset where reading failed.
    """
    p = Path(path)
    rd = BinaryReader(p, read_bytes(p))
    scaling = rd.float64("patch scaling")
    n_views = rd.int32("number of views")
    if not (0 < n_views <= 1000) or not (0 < scaling < 100):
        raise ModelError(f"not a CCNF patch-expert file (scaling {scaling!r}, {n_views} views)",
                         p, "byte 0")
    centers = np.stack([rd.mat(f"centre of view {v}").reshape(-1) for v in range(n_views)])
    if centers.shape[1] != 3:
        raise ModelError(f"view centres must have 3 angles, found {centers.shape[1]}", p)
    centers = centers.astype(np.float64) * np.pi / 180.0
    vis = [rd.mat(f"visibility of view {v}") for v in range(n_views)]
    n_points = vis[0].shape[0]
    if any(v.shape != (n_points, 1) for v in vis):
        raise ModelError("visibility columns differ in length between views", p)
    visibility = np.stack([v.reshape(-1) for v in vis]).astype(np.int32)

    n_windows = rd.int32("number of sigma window sizes")
    if not 0 <= n_windows <= 100:
        raise ModelError(f"implausible number of window sizes {n_windows}", p, f"byte {rd.offset - 4}")
    sigma_components: dict[int, np.ndarray] = {}
    n_betas = None
    for _ in range(n_windows):
        win = rd.int32("window size")
        n_comp = rd.int32(f"number of sigma components for window {win}")
        comps = [rd.mat(f"sigma component {s} of window {win}") for s in range(n_comp)]
        if any(c.shape != (win * win, win * win) for c in comps):
            raise ModelError(f"sigma components of window {win} are not {win*win}x{win*win}", p)
        sigma_components[win] = (np.stack(comps).astype(np.float32) if comps
                                 else np.zeros((0, win * win, win * win), np.float32))
        n_betas = n_comp if n_betas is None else n_betas
    # OpenFace reads as many betas as the first window size has components.
    n_betas = n_betas or 0
    experts = [[_read_expert(rd, n_betas, f"view {v} landmark {i}") for i in range(n_points)]
               for v in range(n_views)]
    if not rd.at_end():
        raise ModelError(f"{len(rd.data) - rd.offset} unexpected trailing bytes", p, f"byte {rd.offset}")
    return CCNFScale(p, scaling, centers, visibility, sigma_components, experts)
