"""CCNF patch experts: response maps for all visible landmarks of a (scale, view) at once.

The three instrumented stages, per landmark (float32, as OpenFace):

* **raw** — every ``h x w`` window of the area of interest is contrast
  normalised (mean removed, divided by its L2 norm), a leading 1 added for
  the bias, and each neuron gives ``2·alpha·sigmoid(weights·x)``; the sum over
  neurons (those with alpha > 1e-4) is the raw map;
* **post-Sigma** — ``Sigma @ vec(raw)`` with
  ``Sigma = inv(2·(sum(alpha)·I + Σ_b beta_b·S_b))``;
* **post-shift** — the post-Sigma map minus its minimum when that is negative.

All landmarks' windows are stacked (im2col over a batch) and multiplied by
their neuron weights in one batched GEMM; Sigma matrices are built once per
(scale, view, window) and cached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import ThreadpoolController

from .faults import NO_FAULTS
from .models import CCNFScale
from .optimiser import expf32

@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def _single_thread_blas():
    """Pin every loaded BLAS (numpy's and OpenCV's own OpenBLAS) to one thread.

    OpenCV hands a Cholesky of 100 x 100 or more (the Sigma of windows 11, 13
    and 15) to LAPACK, whose threaded blocking changes the last bits of the
    inverse with the number of cores; the fit then amplifies them. One thread
    gives the same Sigma on every machine (and is how the C++ reference ran).
    """
    return _blas_controller().limit(limits=1, user_api="blas")


# Compiled loops (numba, no fastmath: each ``np.float32(...)`` is one float32
# rounding, as in the C++).
_njit = numba.njit(cache=True, nogil=True)

#: Neurons with alpha at or below this are skipped by OpenFace.
ALPHA_EPS = 1e-4


@dataclass
class ResponseStages:
    """Responses of the visible landmarks of one (scale, view).

    Attributes
    ----------
    landmarks : (v,) int64
        Indices of the visible landmarks, in increasing order.
    raw, sigma, response : (v, w, w) float32
        Raw (sum of neurons), post-Sigma and post-shift maps, row-major (y, x).
    """

    landmarks: np.ndarray
    raw: np.ndarray
    sigma: np.ndarray
    response: np.ndarray

    def full(self, stage: str, n_points: int) -> np.ndarray:
        """One stage as ``(n_points, w, w)`` with zeros for invisible landmarks."""
        maps = getattr(self, stage)
        out = np.zeros((n_points,) + maps.shape[1:], dtype=maps.dtype)
        out[self.landmarks] = maps
        return out


class _RawScratch:
    """Preallocated work arrays of the compiled raw-response path for one response size.

    cols : (K, nb) float32 — one landmark's windows, component-major, during
    normalisation; cols64 : (K, nb) float64 — the normalised windows widened
    (row 0 the bias input 1); wsum, wsq, inv : (nb,) float32 — mean, sum of
    squares, 1/norm; acc : (nb,) float32 — one neuron's FMA chains;
    neg_act, exp : (v, n, nb) float64 — ``-activation`` and ``exp(-activation)``.
    """

    __slots__ = ("cols", "cols64", "wsum", "wsq", "inv", "acc", "neg_act", "exp")

    def __init__(self, v: int, n: int, k: int, nb: int):
        self.cols = np.empty((k, nb), np.float32)
        self.cols64 = np.empty((k, nb), np.float64)
        self.wsum = np.empty(nb, np.float32)
        self.wsq = np.empty(nb, np.float32)
        self.inv = np.empty(nb, np.float32)
        self.acc = np.empty(nb, np.float32)
        self.neg_act = np.empty((v, n, nb), np.float64)
        self.exp = np.empty((v, n, nb), np.float64)


class ExpertBank:
    """The visible experts of one (scale, view), stacked for batched evaluation.

    Attributes
    ----------
    landmarks : (v,) int64
        Visible landmarks (those with neurons).
    weights : (v, k, 1 + h·w) float32
        Row ``j``: neuron ``j``'s bias, then its filter times norm_weights,
        flattened column-major (OpenFace's im2col order ``x·h + y``).
    two_alpha : (v, k) float64
        ``2·alpha`` per neuron, 0 for skipped neurons (and padding).
    sum_alpha : (v,) float32
        Sum of all alphas (skipped neurons included, as OpenFace).
    betas : (v, b) float64
    confidence : (v,) float64
        Patch confidences.
    """

    def __init__(self, scale: CCNFScale, view: int):
        experts = scale.experts[view]
        vis = [i for i, e in enumerate(experts) if not e.empty and scale.visibility[view, i]]
        self.landmarks = np.array(vis, dtype=np.int64)
        self.height = experts[vis[0]].height if vis else 11
        self.width = experts[vis[0]].width if vis else 11
        k = max((experts[i].n_neurons for i in vis), default=0)
        hw = self.height * self.width
        v = len(vis)
        self.weights = np.zeros((v, k, 1 + hw), np.float32)
        self.two_alpha = np.zeros((v, k), np.float64)
        self.sum_alpha = np.zeros(v, np.float32)
        nb = max((experts[i].betas.size for i in vis), default=0)
        self.betas = np.zeros((v, nb), np.float64)
        self.confidence = np.zeros(v, np.float64)
        for row, i in enumerate(vis):
            e = experts[i]
            n = e.n_neurons
            # Filters flattened column-major; scaled by norm_weights in float32 like OpenCV's Mat*double.
            flat = e.weights.transpose(0, 2, 1).reshape(n, hw)
            self.weights[row, :n, 1:] = flat * e.norm_weights.astype(np.float32)[:, None]
            self.weights[row, :n, 0] = e.biases.astype(np.float32)
            keep = e.alphas > ALPHA_EPS
            self.two_alpha[row, :n] = np.where(keep, 2.0 * e.alphas, 0.0)
            acc = np.float32(0)
            # OpenFace adds each double alpha to a float running sum: the addition is in
            # double, then rounded (rounding alpha first changes the last bit: with it,
            # window 13's Sigma = (2 sum alpha)^-1 I matches the C++ on every landmark).
            for a in e.alphas:
                acc = np.float32(np.float64(acc) + np.float64(a))
            self.sum_alpha[row] = acc
            self.betas[row, :e.betas.size] = e.betas
            self.confidence[row] = e.patch_confidence
        self._sigmas: dict = {}
        self._scale = scale
        self._buffers: dict[tuple[type, int], np.ndarray] = {}
        self._scratch: dict[tuple[int, int], _RawScratch] = {}
        self._sgemv_lanes: dict[int, np.ndarray] = {}

    def raw_scratch(self, rh: int, rw: int) -> "_RawScratch":
        """Work arrays of :func:`raw_response` for ``rh x rw`` windows, allocated once.

        Reused by every call with that response size (so one bank must not be
        evaluated from two threads at once).
        """
        key = (rh, rw)
        s = self._scratch.get(key)
        if s is None:
            s = self._scratch[key] = _RawScratch(
                len(self.landmarks), self.weights.shape[1], 1 + self.height * self.width, rh * rw)
        return s

    def sigma_t(self, window: int) -> np.ndarray:
        """:meth:`sigma` with each landmark's matrix transposed, ``[i, j, o] = Sigma_i[o, j]``.

        The same array when every Sigma is bit-exactly symmetric (no copy),
        otherwise a cached float32 copy. Read-only.
        """
        key = (window, "T")
        cached = self._sigmas.get(key)
        if cached is None:
            sig = self.sigma(window)
            if np.array_equal(sig, sig.transpose(0, 2, 1)):
                cached = sig
            else:
                cached = np.ascontiguousarray(sig.transpose(0, 2, 1))
                cached.flags.writeable = False
            self._sigmas[key] = cached
        return cached

    def buffer(self, dtype: type, n_windows: int) -> np.ndarray:
        """A reusable im2col buffer ``(v, n_windows, 1 + hw)`` per dtype and window count."""
        key = (dtype, n_windows)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = np.empty(
                (len(self.landmarks), n_windows, 1 + self.height * self.width), dtype)
        return buf

    def sigma(self, window: int) -> np.ndarray:
        """Sigma matrices ``(v, w², w²)`` float32 for a response window, cached.

        Window sizes without stored sigma components (13 in OpenFace's files)
        degenerate to ``(2·Σalpha)⁻¹·I``, as in OpenFace.
        """
        cached = self._sigmas.get(window)
        if cached is not None:
            return cached
        n = window * window
        comps = self._scale.sigma_components.get(window)
        if comps is None:
            comps = np.zeros((0, n, n), np.float32)
        comps64 = comps.astype(np.float64)
        out = np.empty((len(self.landmarks), n, n), np.float32)
        eye = np.eye(n, dtype=np.float32)
        for row in range(len(self.landmarks)):
            # OpenFace's ``q2 = q2 + (float)beta * S_b`` is OpenCV's scaleAdd, which the
            # AVX2 build evaluates as one fused multiply-add per element: emulated as the
            # exact double product plus q2, rounded once (with it, windows 7 and 9 are
            # bit-identical to the C++; the separately rounded product is not).
            q2 = np.zeros((n, n), np.float32)
            for b in range(comps.shape[0]):
                beta = np.float64(np.float32(self.betas[row, b]))
                q2 = (q2.astype(np.float64) + beta * comps64[b]).astype(np.float32)
            inv_sigma = np.float32(2) * (self.sum_alpha[row] * eye + q2)
            with _single_thread_blas():
                ok, out[row] = cv2.invert(inv_sigma, flags=cv2.DECOMP_CHOLESKY)
        out.flags.writeable = False
        self._sigmas[window] = out
        return out


def _im2col_kmajor(areas: np.ndarray, height: int, width: int) -> np.ndarray:
    """Contrast-normalised windows, component-major: ``(1 + h·w, v, n_windows)`` float32.

    Slab ``1 + xx·h + yy`` holds pixel ``(yy, xx)`` of every window (windows
    row-major by top-left corner ``(y, x)``), slab 0 is the bias input 1.
    OpenFace's float arithmetic, in its order, for every window at once: the
    sum for the mean is a sequential float32 sum in row-major window order
    (``yy`` outer, ``xx`` inner); ``mean = sum / (h·w)``; the squares are
    summed sequentially in column-major (``xx·h + yy``) order, each product
    rounded before the add (no FMA, measured against the goldens);
    ``norm = sqrt(sum_sq)`` in float32 (0 -> 1), ``1.0 / norm`` in double
    stored as float32, and each value multiplied by it in float32.
    """
    v, a_h, a_w = areas.shape
    rh, rw = a_h - height + 1, a_w - width + 1
    hw = height * width
    a = areas.astype(np.float32, copy=False)
    out = np.empty((1 + hw, v, rh, rw), np.float32)
    out[0] = 1
    acc = np.zeros((v, rh, rw), np.float32)
    for yy in range(height):
        for xx in range(width):
            slab = out[1 + xx * height + yy]
            np.copyto(slab, a[:, yy:yy + rh, xx:xx + rw])
            np.add(acc, slab, out=acc)
    mean = acc / np.float32(hw)
    body = out[1:]
    np.subtract(body, mean, out=body)
    acc[...] = 0
    sq = np.empty_like(acc)
    for t in range(1, 1 + hw):
        np.multiply(out[t], out[t], out=sq)
        np.add(acc, sq, out=acc)
    norm = np.sqrt(acc)
    norm[norm == 0] = 1
    inv = (1.0 / norm.astype(np.float64)).astype(np.float32)
    np.multiply(body, inv, out=body)
    return out.reshape(1 + hw, v, rh * rw)


def im2col_normalised(areas: np.ndarray, height: int, width: int,
                      dtype: type = np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """Contrast-normalised windows of every area, with a leading 1 for the bias.

    Parameters
    ----------
    areas : (v, A, A) float32
        Areas of interest, ``A = window + support - 1``.
    height, width : int
        Expert support (11 x 11).
    out : (v, w·w, 1 + height·width) array of ``dtype``, optional
        Buffer to fill.

    Returns
    -------
    (v, w·w, 1 + height·width) float32
        Row ``y·w + x``: the window whose top-left corner is ``(x, y)``,
        flattened column-major, mean-subtracted and scaled to unit L2 norm
        (a zero norm is treated as 1). In float32 the arithmetic is
        OpenFace's, bit for bit (see :func:`_im2col_kmajor`); in float64
        (the ``float64`` fault) numpy's pairwise sums are used.
    """
    v, a_h, a_w = areas.shape
    rh, rw = a_h - height + 1, a_w - width + 1
    hw = height * width
    if out is None or out.shape != (v, rh * rw, 1 + hw) or out.dtype != dtype:
        out = np.empty((v, rh * rw, 1 + hw), dtype)
    if dtype is np.float32:
        np.copyto(out, _im2col_kmajor(areas, height, width).transpose(1, 2, 0))
        return out
    win = sliding_window_view(areas.astype(dtype, copy=False), (height, width), axis=(1, 2))
    out[..., 0] = 1
    body = out[..., 1:]
    np.copyto(body.reshape(v, rh, rw, width, height), win.transpose(0, 1, 2, 4, 3))
    mean = body.sum(axis=2, dtype=dtype, keepdims=True) / dtype(hw)
    np.subtract(body, mean, out=body)
    norm = np.sqrt(np.einsum("vbk,vbk->vb", body, body, dtype=dtype))[..., None]
    norm[norm == 0] = 1
    np.multiply(body, (1.0 / norm.astype(np.float64)).astype(dtype), out=body)
    return out


@_njit
def _fma_chains(cols, weights, out):  # pragma: no cover - compiled
    k, v, nb = cols.shape
    n = weights.shape[1]
    acc = np.empty(nb, np.float64)
    for i in range(v):
        for j in range(n):
            for b in range(nb):
                acc[b] = 0.0
            for t in range(k):
                w = np.float64(weights[i, j, t])
                for b in range(nb):
                    # float32 a*b is exact in double: one rounding = one FMA.
                    acc[b] = np.float64(np.float32(acc[b] + np.float64(cols[t, i, b]) * w))
            for b in range(nb):
                out[i, j, b] = np.float32(acc[b])


def _fma_gemm(cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """OpenBLAS sgemm's sums: ``act[v, n, b] = Σ_k weights[v, n, k]·cols[k, v, b]``.

    Every output is one float32 fused multiply-add chain over ``k = 0..K-1``
    in order (the Haswell/Zen ``sgemm_kernel_16x4`` keeps one accumulator per
    output and ``vfmadd231ps`` each k in turn; K = 122 is one K block). The FMA
    is emulated exactly: the product of two float32 is exact in double, the
    double sum is rounded once to float32 (equal to a true FMA except in
    double-rounding ties, which are vanishingly rare).

    cols : (K, v, nb) float32; weights : (v, n, K) float32. Returns (v, n, nb) float32.
    """
    k, v, nb = cols.shape
    out = np.empty((v, weights.shape[1], nb), np.float32)
    _fma_chains(np.ascontiguousarray(cols), np.ascontiguousarray(weights, np.float32), out)
    return out


@_njit
def _ccnf_neg_activations(areas, weights, height, width, rh, rw,
                          cols, cols64, wsum, wsq, inv, acc, neg_act):  # pragma: no cover - compiled
    """``neg_act[i, j, b] = -(weights[i, j] · window_b)`` in float64 (float32 values).

    Per landmark, one pass: the im2col with OpenFace's contrast normalisation
    (:func:`_im2col_kmajor`'s float32 arithmetic in its order, vectorised over
    the windows: float32 ``+ - * /`` and ``sqrt`` are IEEE float32 operations
    here, no fastmath so no contraction to FMA), then the sgemm as the FMA
    chains of :func:`_fma_chains` (``t = 0..K-1``, exact product in double,
    one float32 rounding per step).
    """
    v = areas.shape[0]
    n = weights.shape[1]
    k = weights.shape[2]
    nb = rh * rw
    fhw = np.float32(height * width)
    for b in range(nb):
        cols64[0, b] = 1.0
    for i in range(v):
        for b in range(nb):
            wsum[b] = 0.0
            wsq[b] = 0.0
        # Pixels to slab 1 + xx*h + yy; sequential float32 sum, yy outer, xx inner.
        for yy in range(height):
            for xx in range(width):
                row = cols[1 + xx * height + yy]
                for y in range(rh):
                    base = y * rw
                    src = areas[i, y + yy, xx:xx + rw]
                    for x in range(rw):
                        p = src[x]
                        row[base + x] = p
                        wsum[base + x] = wsum[base + x] + p
        for b in range(nb):
            wsum[b] = wsum[b] / fhw                                   # the mean
        # Mean removed; rounded squares summed in column-major order t = 1..hw.
        for t in range(1, k):
            row = cols[t]
            for b in range(nb):
                d = row[b] - wsum[b]
                row[b] = d
                wsq[b] = wsq[b] + d * d
        for b in range(nb):
            nrm = np.sqrt(wsq[b])
            if nrm == np.float32(0.0):
                nrm = np.float32(1.0)
            inv[b] = np.float32(1.0 / np.float64(nrm))                # 1.0 / norm in double
        for t in range(1, k):
            row = cols[t]
            out = cols64[t]
            for b in range(nb):
                out[b] = np.float64(row[b] * inv[b])
        # sgemm: one float32 FMA chain per output (float32 a*b is exact in double).
        for j in range(n):
            for b in range(nb):
                acc[b] = 0.0
            for t in range(k):
                c = cols64[t]
                w = np.float64(weights[i, j, t])
                for b in range(nb):
                    acc[b] = np.float32(np.float64(acc[b]) + c[b] * w)
            o = neg_act[i, j]
            for b in range(nb):
                o[b] = -np.float64(acc[b])


@_njit
def _sum_neurons(e, two_alpha, out):  # pragma: no cover - compiled
    """``out[i, b] = float(... float(float(0 + t_0) + t_1) ... + t_n-1)`` with the
    double term ``t_j = two_alpha[i, j] / (double(float(e[i, j, b])) + 1)``."""
    v, n, nb = e.shape
    for i in range(v):
        for b in range(nb):
            out[i, b] = 0.0
        for j in range(n):
            ta = two_alpha[i, j]
            for b in range(nb):
                term = ta / (np.float64(np.float32(e[i, j, b])) + 1.0)
                out[i, b] = np.float32(np.float64(out[i, b]) + term)


@_njit
def _expf_sum_neurons(neg_act, two_alpha, out):  # pragma: no cover - compiled
    """:func:`_sum_neurons` with ``e = expf(float(neg_act))`` computed in place.

    A float32 ``math.exp`` is lowered by numba to the C library's ``expf``
    (no SVML), which is what :func:`expf32` returns: used only when
    :func:`_fused_expf_ok` confirmed that on this machine."""
    v, n, nb = neg_act.shape
    for i in range(v):
        for b in range(nb):
            out[i, b] = 0.0
        for j in range(n):
            ta = two_alpha[i, j]
            src = neg_act[i, j]
            for b in range(nb):
                e = math.exp(np.float32(src[b]))
                term = ta / (np.float64(e) + 1.0)
                out[i, b] = np.float32(np.float64(out[i, b]) + term)


@lru_cache(maxsize=1)
def _fused_expf_ok() -> bool:
    """True when numba's float32 ``math.exp`` is the C library's ``expf`` and
    agrees with :func:`expf32` (correct rounding outside the hard band) on a
    dense sample of the activation range, so :func:`_expf_sum_neurons` gives
    the values of ``expf32`` + :func:`_sum_neurons` bit for bit."""
    from .optimiser import _numba_expf_is_libm
    if not _numba_expf_is_libm():
        return False
    x = np.linspace(-60.0, 60.0, 200_001).astype(np.float32)
    got = np.empty((1, 1, x.size), np.float32)
    _expf_each(x.reshape(1, 1, -1).astype(np.float64), got)
    return bool(np.array_equal(got.reshape(-1), expf32(x)))


@_njit
def _expf_each(neg_act, out):  # pragma: no cover - compiled
    """``out = expf(float(neg_act))`` elementwise (the exponential of :func:`_expf_sum_neurons`)."""
    v, n, nb = neg_act.shape
    for i in range(v):
        for j in range(n):
            for b in range(nb):
                out[i, j, b] = math.exp(np.float32(neg_act[i, j, b]))


def _raw_response_numpy(bank: ExpertBank, areas: np.ndarray, two_alpha: np.ndarray,
                        dtype: type) -> np.ndarray:
    """The reference formulation of :func:`raw_response` (stacked im2col, batched
    GEMM, vectorised sigmoid). Used for the ``float64`` fault and for banks with
    a single landmark or neuron; same values as the compiled path."""
    v, a_h, a_w = areas.shape
    rh, rw = a_h - bank.height + 1, a_w - bank.width + 1
    if dtype is np.float64:
        cols = im2col_normalised(areas, bank.height, bank.width, dtype, out=bank.buffer(dtype, rh * rw))
        act = np.matmul(cols, bank.weights.astype(dtype).transpose(0, 2, 1)).transpose(2, 0, 1)
        e = np.exp(-act)
    else:
        # Bit-exact with OpenFace's ResponseOpenBlas (measured on the goldens; see
        # bench/response_bits.py): im2col sums in its order, the sgemm as FMA
        # chains, exp as glibc's expf on the float activation.
        cols = _im2col_kmajor(areas, bank.height, bank.width)
        act = _fma_gemm(cols, bank.weights).transpose(1, 0, 2)      # (n, v, nb)
        e = expf32(np.negative(act)).astype(np.float64)
    # The term in double, added to the float map neuron by neuron (neurons with
    # alpha <= 1e-4 have two_alpha 0 and add nothing): float(map + term) each time.
    terms = np.add(e, 1.0, dtype=np.float64)
    np.divide(two_alpha.T[:, :, None], terms, out=terms)
    acc = np.zeros((v, rh * rw), dtype)
    for term in terms:
        np.add(acc, term, out=acc, dtype=np.float64, casting="unsafe")
    return acc.reshape(v, rh, rw)


def raw_response(bank: ExpertBank, areas: np.ndarray, faults: frozenset[str] = NO_FAULTS) -> np.ndarray:
    """Sum over neurons of ``2·alpha·sigmoid(w·x + b)`` for every visible landmark.

    float32 (default): bit-exact with OpenFace's ResponseOpenBlas on 99.54% of
    the golden values (bench/response_bits.py). One compiled pass per landmark
    does the im2col with contrast normalisation in OpenFace's float order
    (:func:`_im2col_kmajor`) and the sgemm as float32 FMA chains
    (:func:`_fma_gemm`); the exponential is glibc's ``expf`` of the float
    activation (:func:`expf32`), as the C++ ``exp(float)``; then the double
    terms ``2·alpha / (1 + e)`` are added to the float map neuron by neuron.

    Parameters
    ----------
    bank : ExpertBank
    areas : (v, A, A) float32
        Areas of interest of ``bank.landmarks``, in that order.

    Returns
    -------
    (v, w, w) float32
    """
    v, a_h, a_w = areas.shape
    rh, rw = a_h - bank.height + 1, a_w - bank.width + 1
    two_alpha = bank.two_alpha
    if "sigmoid-no-double-alpha" in faults:
        two_alpha = two_alpha / 2.0
    if "float64" in faults:
        return _raw_response_numpy(bank, areas, two_alpha, np.float64)
    n = bank.weights.shape[1]
    if v <= 1 or n <= 1 or rh <= 0 or rw <= 0:
        return _raw_response_numpy(bank, areas, two_alpha, np.float32)
    a = np.ascontiguousarray(areas, dtype=np.float32)
    s = bank.raw_scratch(rh, rw)
    _ccnf_neg_activations(a, bank.weights, bank.height, bank.width, rh, rw,
                          s.cols, s.cols64, s.wsum, s.wsq, s.inv, s.acc, s.neg_act)
    out = np.empty((v, rh, rw), np.float32)
    ta = two_alpha if two_alpha.dtype == np.float64 and two_alpha.flags.c_contiguous \
        else np.ascontiguousarray(two_alpha, np.float64)
    if _fused_expf_ok():
        # glibc's expf on the float activation, fused with the neuron sum.
        _expf_sum_neurons(s.neg_act, ta, out.reshape(v, rh * rw))
        return out
    # exp of a float in the C++ is glibc's expf, which is not always correctly rounded.
    s.exp[...] = expf32(s.neg_act.astype(np.float32))
    _sum_neurons(s.exp, ta, out.reshape(v, rh * rw))
    return out


def sigma_response(bank: ExpertBank, raw: np.ndarray, faults: frozenset[str] = NO_FAULTS) -> np.ndarray:
    """``Sigma @ vec(raw)`` per landmark, row-major vectorisation.

    float32 maps follow OpenFace's ``sgemm_`` with M = 1, which OpenBLAS forwards
    to ``sgemv_t``: each output is a dot product of one stored Sigma row with the
    map, accumulated by fused multiply-adds in 16 lanes (element ``j`` in lane
    ``j % 16``), then reduced by a pairwise tree: adjacent lanes first for the
    columns of the 4-column kernel, halves folded for the leftover columns.
    Bit-identical to the C++ for windows 7 and 9 (whose Sigma is OpenCV's own
    Cholesky inverse); 11 and 15 invert through LAPACK and differ in Sigma itself.

    Parameters
    ----------
    raw : (v, w, w) float32

    Returns
    -------
    (v, w, w) float32
    """
    v, h, w = raw.shape
    if "skip-sigma" in faults:
        return raw.copy()
    sig = bank.sigma(h)
    if raw.dtype != np.float32:
        sig = sig.astype(raw.dtype)
    # transpose-sigma: the map vectorised column-major and the result read back
    # row-major, i.e. the post-Sigma map comes out transposed (Sigma itself is
    # symmetric, and so are its components under x<->y, so only the layout slip shows).
    vec = raw.transpose(0, 2, 1) if "transpose-sigma" in faults else raw
    if raw.dtype != np.float32:
        out = np.einsum("vij,vj->vi", sig, vec.reshape(v, h * w))
        return out.reshape(v, h, w)
    n = h * w
    out = np.empty((v, n), np.float32)
    lanes = bank._sgemv_lanes.get(n)
    if lanes is None:
        lanes = bank._sgemv_lanes[n] = np.empty((16, n), np.float32)
    _sgemv_t_lanes(bank.sigma_t(h), np.ascontiguousarray(vec, np.float32).reshape(v, n), lanes, out)
    return out.reshape(v, h, w)


@_njit
def _sgemv_t_lanes(sig_t, vec, lanes, out):  # pragma: no cover - compiled
    """OpenBLAS ``sgemv_t`` as the C++ ran it: ``out[i] = Sigma_i @ vec[i]``.

    Per output, element ``j`` is fused-multiply-added into lane ``j % 16``
    (float32, one rounding: a float32 product is exact in double); then the 16
    lanes are reduced, adjacent pairs first for outputs in the 4-column kernel
    (``o < n - n % 4``), upper half onto lower half for the leftover columns,
    each add rounded to float32. ``sig_t[i, j, o] = Sigma_i[o, j]``; ``lanes``
    is a ``(16, n)`` float32 scratch, ``lanes[l, o]`` output ``o``'s lane ``l``,
    so all outputs advance together.
    """
    v, n, _ = sig_t.shape
    n4 = n - n % 4
    for i in range(v):
        for l in range(16):
            row = lanes[l]
            for o in range(n):
                row[o] = 0.0
        for j in range(n):
            row = lanes[j % 16]
            s = sig_t[i, j]
            x = np.float64(vec[i, j])
            for o in range(n):
                row[o] = np.float32(np.float64(row[o]) + np.float64(s[o]) * x)
        half = 8
        while half >= 1:
            for l in range(half):
                dst = lanes[l]
                # 4-column kernel (outputs < n4): adjacent lanes summed first.
                lo = lanes[2 * l]
                hi = lanes[2 * l + 1]
                for o in range(n4):
                    dst[o] = lo[o] + hi[o]
                # 1-column kernel for the leftover outputs: upper half onto lower half.
                up = lanes[l + half]
                for o in range(n4, n):
                    dst[o] = dst[o] + up[o]
            half //= 2
        row = lanes[0]
        for o in range(n):
            out[i, o] = row[o]


def shift_response(sigma_maps: np.ndarray, faults: frozenset[str] = NO_FAULTS) -> np.ndarray:
    """Shift each map up by its minimum when that minimum is negative; nothing else.

    Parameters
    ----------
    sigma_maps : (v, w, w) float32

    Returns
    -------
    (v, w, w) float32
    """
    if "clip-instead-of-shift" in faults:
        out = np.maximum(sigma_maps, 0)
    else:
        mins = sigma_maps.min(axis=(1, 2), keepdims=True)
        out = np.where(mins < 0, sigma_maps - mins, sigma_maps)
    if "normalize-response" in faults:
        peak = out.max(axis=(1, 2), keepdims=True)
        out = out / np.where(peak > 0, peak, 1)
    return out.astype(sigma_maps.dtype, copy=False)


class PatchExperts:
    """CCNF experts of a CLNF model, per scale and view, with cached banks and Sigmas."""

    def __init__(self, scales: list[CCNFScale]):
        self.scales = scales
        self._banks: dict[tuple[int, int], ExpertBank] = {}

    @property
    def patch_scales(self) -> list[float]:
        return [s.patch_scaling for s in self.scales]

    def bank(self, scale: int, view: int) -> ExpertBank:
        key = (scale, view)
        b = self._banks.get(key)
        if b is None:
            b = self._banks[key] = ExpertBank(self.scales[scale], view)
        return b

    def view_index(self, params_global: np.ndarray, scale: int) -> int:
        """Closest view centre to the current (pitch, yaw, roll), in float32 as OpenFace."""
        rot = np.asarray(params_global, np.float32)[1:4]
        d = rot[None, :] - self.scales[scale].centers.astype(np.float32)
        dist = np.einsum("vk,vk->v", d, d, dtype=np.float32)
        return int(np.argmin(dist))  # first minimum wins, as OpenFace's strict '<'

    def support(self, scale: int, view: int) -> tuple[int, int]:
        b = self.bank(scale, view)
        return b.height, b.width

    def responses(self, areas: np.ndarray, scale: int, view: int,
                  faults: frozenset[str] = NO_FAULTS) -> ResponseStages:
        """All three response stages for the visible landmarks of (scale, view).

        Parameters
        ----------
        areas : (v, A, A) or (n, A, A) float32
            Areas of interest for the bank's visible landmarks, or for all n
            landmarks (then the visible ones are picked).
        """
        bank = self.bank(scale, view)
        if areas.shape[0] != len(bank.landmarks):
            areas = areas[bank.landmarks]
        raw = raw_response(bank, areas, faults)
        sig = sigma_response(bank, raw, faults)
        resp = shift_response(sig, faults)
        return ResponseStages(bank.landmarks, raw, sig, resp)
