"""The library of known port faults, injected with ``--inject FAULT``.

Each fault is a real way a CLNF port has drifted (or could drift) from
OpenFace, written as a typed wrapper around the stage of the
:class:`~clnfdiag.clnf.protocol.StageOps` protocol it corrupts: the wrapper
replaces that one method and hands every other stage to the implementation it
wraps. The numerics themselves have no fault branches, and a fault name exists
only as a key of :data:`FAULTS` (an unknown name is an :class:`InputError`).

The variants a fault needs that OpenFace never computes (the exact-kernel KDE,
the float64 normal equations ...) are the fault's own code, here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import optimiser as opt
from .errors import InputError
from .experts import all_landmarks, im2col_normalised

F32 = np.float32
F64 = np.float64


class _Wrapper:
    """A StageOps that hands every stage to ``inner`` unless a subclass replaces it."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# --------------------------------------------------------------------------- the faults
class _NormalizeResponse(_Wrapper):
    def response(self, sigma_maps, scale, view):
        out = self.inner.response(sigma_maps, scale, view)
        peak = out.max(axis=(1, 2), keepdims=True)
        return (out / np.where(peak > 0, peak, 1)).astype(out.dtype, copy=False)


class _SkipSigma(_Wrapper):
    def response_sigma(self, raw, scale, view):
        return np.array(raw, copy=True)


class _TransposeSigma(_Wrapper):
    # The map vectorised column-major and the result read back row-major: the post-Sigma
    # map comes out transposed (Sigma and its components are symmetric under x<->y, so
    # only this layout slip shows).
    def response_sigma(self, raw, scale, view):
        return self.inner.response_sigma(np.asarray(raw).transpose(0, 2, 1), scale, view)


class _ClipInsteadOfShift(_Wrapper):
    def response(self, sigma_maps, scale, view):
        return np.maximum(sigma_maps, 0).astype(np.asarray(sigma_maps).dtype, copy=False)


class _NoKdeGrid(_Wrapper):
    def mean_shifts_ref(self, responses, dxs, dys, visible, sigma):
        return mean_shift_exact_kernel(responses, dxs, dys, visible, sigma)


class _Float64(_Wrapper):
    # Wraps clnfdiag's own OpenFaceOps (it reads its experts and PDM).
    def response_raw(self, areas, scale, view):
        bank = self.inner.experts.bank(scale, view)
        raw = raw_response_float64(bank, np.asarray(areas)[bank.landmarks])
        return all_landmarks(raw, bank.landmarks, self.inner.n_points)

    def response_sigma(self, raw, scale, view):
        raw = np.asarray(raw)
        if raw.dtype != F64:
            return self.inner.response_sigma(raw, scale, view)
        bank = self.inner.experts.bank(scale, view)
        idx, w = bank.landmarks, raw.shape[1]
        sig = bank.sigma(w).astype(F64)
        vec = raw[idx].reshape(idx.shape[0], w * w)
        return all_landmarks(np.einsum("vij,vj->vi", sig, vec).reshape(-1, w, w), idx, self.inner.n_points)

    def mean_shifts_ref(self, responses, dxs, dys, visible, sigma):
        return mean_shift_float64(responses, dxs, dys, visible, sigma)

    def update_solver(self, weights, visible, reg_factor, rigid):
        eig = self.inner.pdm.eigen_values

        def solve(jac, ms, loc):
            return solve_update_float64(jac, weights, ms, loc, eig, reg_factor, rigid, visible)
        return solve


class _NoRegularisation(_Wrapper):
    # R = 0: the regulariser's diagonal reg / eigenvalue is exactly 0 with reg = 0, so
    # both the Hessian term and ``- R p`` vanish.
    def update_solver(self, weights, visible, reg_factor, rigid):
        return self.inner.update_solver(weights, visible, 0.0, rigid)


class _UniformWeights(_Wrapper):
    # Every expert's confidence taken as 1: W = weight_factor * I (OpenFace's own identity when
    # the factor is 0, so the default preset is unchanged).
    def weights(self, scale, view, weight_factor):
        return opt.weight_matrix_diag(np.ones(self.inner.n_points, F64), None, weight_factor)


class _MeanShapeReference(_Wrapper):
    # The reference frame from the mean shape (local parameters 0) instead of the current ones.
    def reference_shape(self, params_local, scale):
        return self.inner.reference_shape(np.zeros_like(np.asarray(params_local)), scale)


class _SigmoidNoDoubleAlpha(_Wrapper):
    # alpha·sigmoid instead of 2·alpha·sigmoid: every term, hence (binary scaling is
    # exact) every raw value, is halved.
    def response_raw(self, areas, scale, view):
        raw = self.inner.response_raw(areas, scale, view)
        return raw * raw.dtype.type(0.5)


class _WrongView(_Wrapper):
    def view(self, params_global, scale):
        return (self.inner.view(params_global, scale) + 1) % self.inner.experts.scales[scale].n_views


class _NearestWarp(_Wrapper):
    def area_of_interest(self, gray_f32, landmarks, sim_ref_to_img, scale, view, window):
        return self.inner.area_of_interest(gray_f32, landmarks, sim_ref_to_img, scale, view, window,
                                           interpolation="nearest")


@dataclass(frozen=True)
class Fault:
    """A named, documented deviation from OpenFace.

    Attributes
    ----------
    name : str
        The ``--inject`` value.
    stage : str
        Stage kind it corrupts first in isolated mode (golden vocabulary, the
        last part of the key).
    reaches_landmarks : bool or None
        Whether the corruption moves the final landmarks beyond the case's
        rounding noise; None where that depends on the case.
    description : str
        What a port does wrong.
    wrapper : callable
        ``wrapper(ops) -> ops``: the StageOps with this fault.
    reaches_mean_shifts : bool
        Whether it changes the image-frame mean-shifts beyond float32 rounding.
    first_pass : int
        The first pass it changes anything in: 0, unless it acts only through the
        local parameters, which are 0 entering pass 0.
    """

    name: str
    stage: str
    reaches_landmarks: bool | None
    description: str
    wrapper: Callable[[Any], Any]
    reaches_mean_shifts: bool = True
    first_pass: int = 0

    def wrap(self, ops: Any) -> Any:
        """``ops`` with this fault injected."""
        return self.wrapper(ops)


#: Every known fault, by name, in the order they are applied (outermost first).
FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("normalize-response", "response", False,
          "divide every post-shift response map by its own maximum (the seed bug): every "
          "landmark gets peak 1.0; the mean-shift is a weighted centroid, so landmarks do not move "
          "beyond rounding noise",
          _NormalizeResponse, reaches_mean_shifts=False),
    Fault("skip-sigma", "response_sigma", True,
          "leave out the CCNF edge potentials: use the raw response instead of Sigma @ raw",
          _SkipSigma),
    Fault("transpose-sigma", "response_sigma", True,
          "vectorise the raw map column-major before Sigma and read the result back row-major: "
          "the post-Sigma map comes out transposed", _TransposeSigma),
    Fault("clip-instead-of-shift", "response", True,
          "clip negative post-Sigma values to 0 instead of shifting the map up by its minimum",
          _ClipInsteadOfShift),
    Fault("no-kde-grid", "mean_shifts_ref", None,
          "exact Gaussian kernel at the landmark offset instead of OpenFace's 0.1-pixel table",
          _NoKdeGrid),
    Fault("float64", "mean_shifts_ref", None,
          "compute in float64 where OpenFace uses float (patch responses, KDE mean-shift, the "
          "NU-RLMS solve): a difference of float32 rounding (~1e-5 px in the mean-shift), caught "
          "at the first stage clnfdiag reproduces bit for bit; whether it then moves the "
          "landmarks beyond the case's rounding noise depends on how chaotic the fit is",
          _Float64, reaches_mean_shifts=False),
    Fault("no-regularisation", "param_update", None,
          "solve the non-rigid update without the PDM eigenvalue prior: the shape runs off its "
          "model; end to end it moves the landmarks by up to 31 px (multi4_wild), far beyond every "
          "public golden's rounding noise",
          _NoRegularisation),
    Fault("uniform-weights", "weights", None,
          "NU-RLMS weights all equal to the weight factor, every patch expert's confidence taken as 1, "
          "instead of weight factor x confidence (pyclnf 0.4.1 does this); with the default "
          "preset's factor 0 OpenFace itself weights every landmark 1, so only the wild preset and "
          "part models see it", _UniformWeights),
    Fault("mean-shape-reference", "reference_shape", None,
          "build each pass's reference shape (the frame the patch experts see) from the mean shape "
          "instead of the current local parameters (pyclnf 0.4.1 does this): identical in the first "
          "pass, whose local parameters are 0", _MeanShapeReference, first_pass=1),
    Fault("sigmoid-no-double-alpha", "response_raw", False,
          "neuron output alpha·sigmoid instead of 2·alpha·sigmoid: every map is halved, which "
          "the weighted-centroid mean-shift cannot see", _SigmoidNoDoubleAlpha,
          reaches_mean_shifts=False),
    Fault("wrong-view", "view_id", True,
          "use the patch experts of the next view instead of the closest one", _WrongView),
    Fault("nearest-warp", "area_of_interest", True,
          "warp the area of interest with nearest-neighbour instead of bilinear interpolation",
          _NearestWarp),
]}


def parse_faults(names: list[str] | tuple[str, ...] | frozenset[str] | None) -> frozenset[str]:
    """Validate ``--inject`` values; unknown names are an :class:`InputError`."""
    out = set()
    for n in names or ():
        if n not in FAULTS:
            raise InputError(f"unknown fault {n!r}; known faults: {', '.join(FAULTS)}")
        out.add(n)
    return frozenset(out)


def with_faults(ops: Any, names) -> Any:
    """``ops`` with the named faults injected (validated; none: ``ops`` itself)."""
    chosen = parse_faults(names)
    for name in reversed(FAULTS):          # the first listed ends up outermost
        if name in chosen:
            ops = FAULTS[name].wrap(ops)
    return ops


NO_FAULTS: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- the faults' own arithmetic
def mean_shift_exact_kernel(responses, dxs, dys, visible, sigma) -> np.ndarray:
    """The ``no-kde-grid`` fault's KDE mean-shift: the exact Gaussian at the clamped
    ``(dx, dy)`` instead of OpenFace's 0.1-pixel table; every sum as OpenFace's
    (sequential float32), so only the kernel differs. (n, w, w), (n,), (n,) -> (n, 2) float32."""
    resp = np.asarray(responses, dtype=F32)
    n, w, _ = resp.shape
    vis = opt.visible_mask(visible, n)
    out = np.zeros((n, 2), dtype=F32)
    if not vis.any():
        return out
    dx = opt.clamp_to_window(np.asarray(dxs, dtype=F32)[vis], w)
    dy = opt.clamp_to_window(np.asarray(dys, dtype=F32)[vis], w)
    # Each landmark's exact kernel is its own one-entry "table".
    kern = np.ascontiguousarray(opt.kernel_values(dx, dy, opt.kde_exponent(sigma), w))[:, None]
    m = dx.shape[0]
    total, mx, my = opt.kde_sums(resp, np.flatnonzero(vis), kern, np.arange(m),
                                 np.zeros(m, dtype=np.intp))
    with np.errstate(divide="ignore", invalid="ignore"):
        out[vis, 0] = mx / total - dx
        out[vis, 1] = my / total - dy
    return out


def raw_response_float64(bank, areas: np.ndarray) -> np.ndarray:
    """The ``float64`` fault's raw maps: OpenFace's formula in double (numpy's im2col,
    batched GEMM and exp). (v, A, A) areas of the bank's landmarks -> (v, w, w) float64."""
    v, a_h, a_w = areas.shape
    rh, rw = a_h - bank.height + 1, a_w - bank.width + 1
    cols = im2col_normalised(areas, bank.height, bank.width, F64, out=bank.buffer(F64, rh * rw))
    act = np.matmul(cols, bank.weights.astype(F64).transpose(0, 2, 1)).transpose(2, 0, 1)
    terms = np.add(np.exp(-act), 1.0)
    np.divide(bank.two_alpha.T[:, :, None], terms, out=terms)
    acc = np.zeros((v, rh * rw), F64)
    for term in terms:                       # neuron by neuron, as OpenFace
        acc += term
    return acc.reshape(v, rh, rw)


def mean_shift_float64(responses, dxs, dys, visible, sigma) -> np.ndarray:
    """The ``float64`` fault's KDE mean-shift: OpenFace's grid, kernel and sums in
    double (numpy's defaults), rounded to float32 at the end. -> (n, 2) float32."""
    resp = np.asarray(responses, dtype=F64)
    n, w, _ = resp.shape
    vis = opt.visible_mask(visible, n)
    out = np.zeros((n, 2), dtype=F32)
    hi = F64(w) - 0.1
    cx = np.clip(np.asarray(dxs, F64)[vis], 0.0, hi)
    cy = np.clip(np.asarray(dys, F64)[vis], 0.0, hi)
    dx, dy = np.floor(cx / 0.1 + 0.5) * 0.1, np.floor(cy / 0.1 + 0.5) * 0.1
    cells = np.arange(w, dtype=F64)
    a = -0.5 / F64(sigma) ** 2
    kern = np.exp(a * ((dy[:, None, None] - cells[None, :, None]) ** 2
                       + (dx[:, None, None] - cells[None, None, :]) ** 2))
    v = resp[vis] * kern
    total = v.sum(axis=(1, 2))
    out[vis, 0] = (v * cells[None, None, :]).sum(axis=(1, 2)) / total - cx
    out[vis, 1] = (v * cells[None, :, None]).sum(axis=(1, 2)) / total - cy
    return out


def solve_update_float64(J, w_diag, mean_shifts, params_local, eigen_values, reg_factor,
                         rigid, visible) -> np.ndarray:
    """The ``float64`` fault's NU-RLMS update: the normal equations built and solved in
    double, as numpy does by default. (2n, k) Jacobian -> (k,) float32."""
    J64 = np.asarray(J, dtype=F64).copy()
    ms = np.asarray(mean_shifts, dtype=F32)
    k = J64.shape[1]
    vis = opt.visible_mask(visible, ms.shape[0])
    vis2 = np.concatenate([vis, vis])
    J64[~vis2] = 0
    ms_vec = np.concatenate([ms[:, 0], ms[:, 1]]).astype(F64)
    ms_vec[~vis2] = 0
    w64 = np.asarray(w_diag, dtype=F32).reshape(-1).astype(F64)
    rhs64 = (J64 * w64[:, None]).T @ ms_vec
    reg64 = np.zeros(k)
    if not rigid:
        reg64[6:] = F64(reg_factor) / np.asarray(eigen_values, F64)[:k - 6]
        rhs64[6:] -= reg64[6:] * np.asarray(params_local, F64).reshape(-1)[:k - 6]
    h64 = (J64 * w64[:, None]).T @ J64 + np.diag(reg64)
    return np.linalg.solve(h64, rhs64).astype(F32)


__all__ = ["Fault", "FAULTS", "NO_FAULTS", "parse_faults", "with_faults",
           "mean_shift_exact_kernel", "mean_shift_float64", "solve_update_float64"]
