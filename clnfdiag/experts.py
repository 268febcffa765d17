"""CCNF patch experts: response maps for all visible landmarks of a (scale, view) at once.

The three instrumented stages, per landmark (float32, as OpenFace):

* **raw** — every ``h x w`` window of the area of interest is contrast
  normalised (mean removed, divided by its L2 norm), a leading 1 added for
  the bias, and each neuron gives ``2·alpha·sigmoid(weights·x)``; the sum over
  neurons (those with alpha > 1e-4) is the raw map;
* **post-Sigma** — ``Sigma @ vec(raw)`` with
  ``Sigma = inv(2·(sum(alpha)·I + Σ_b beta_b·S_b))``;
* **post-shift** — the post-Sigma map minus its minimum when that is negative.

One compiled call per (scale, view) computes every landmark's im2col and
neuron activations (8 windows x 8 neurons per block of FMA chains in vector
registers), and one the warps of all areas of interest; Sigma matrices are
built once per (patch file, view, window) in a process and cached.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2

import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .models import CCNFScale
from .numerics import libm
from .numerics.cholesky import invert_cholesky
from .numerics.fma import CHAIN_BLOCK, copy_f32x8, fma32, fma_chains_8x8
from .numerics.sgemm import lane_row_start, lanes16_dot, uses_tree_a
from .optimiser import expf32


F32 = np.float32

# Compiled loops (numba, no fastmath: each ``np.float32(...)`` is one float32
# rounding, as in the C++).
_njit = numba.njit(cache=True, nogil=True)


@_njit
def _scale_add_fma(beta, comp, q2):  # pragma: no cover - compiled
    """In place ``q2 = fma(beta, comp, q2)`` per element (float32, one rounding each).

    OpenCV's ``scaleAdd`` as the C++ build ran it; a correctly rounded FMA
    (never "double product plus add, rounded": that differs on ties).
    """
    n0, n1 = q2.shape
    for i in range(n0):
        for j in range(n1):
            q2[i, j] = fma32(beta, comp[i, j], q2[i, j])


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
        return all_landmarks(getattr(self, stage), self.landmarks, n_points)


def all_landmarks(maps: np.ndarray, landmarks: np.ndarray, n_points: int) -> np.ndarray:
    """Per-landmark arrays of some landmarks spread over all of them.

    Parameters
    ----------
    maps : (v, ...) array
        Values of the landmarks ``landmarks`` (a bank's visible ones), in that order.
    landmarks : (v,) int
    n_points : int

    Returns
    -------
    (n_points, ...) array of ``maps``' dtype
        Zeros for the other landmarks (the golden layout of invisible ones).
    """
    out = np.zeros((n_points,) + maps.shape[1:], dtype=maps.dtype)
    out[landmarks] = maps
    return out


class _RawScratch:
    """Preallocated work arrays of the compiled raw-response path for one response size.

    cols : (K, nbw) float32 — one landmark's windows, component-major, normalised
    in place (row 0 the bias input 1); wsum, wsq, inv : (nbw,) float32 — mean,
    sum of squares, 1/norm; acc : (nb,) float32 — one neuron's FMA chains;
    lanes : (16,) float32 — the sgemm's 16-lane accumulators;
    neg_act : (v, n, nb) float64 — ``-activation``; blk : (8, 8) float32 — one
    block of :func:`~clnfdiag.numerics.fma.fma_chains_8x8`; apad : one area,
    flat, with 16 values to spare (the 16-pixel row copies may read past it).

    The window count ``nb = rh·rw`` is rounded up to ``nbw``, a multiple of
    :data:`VECTOR_ROUND` covering the last row's 16-pixel copy, so that every
    per-window loop runs in whole vectors (the extra columns are computed and
    never read).
    """

    __slots__ = ("cols", "wsum", "wsq", "inv", "acc", "lanes", "neg_act", "blk", "apad")

    def __init__(self, v: int, n: int, k: int, rh: int, rw: int, a_h: int, a_w: int):
        nb = rh * rw
        nbw = -(-max(nb, (rh - 1) * rw + 16) // VECTOR_ROUND) * VECTOR_ROUND
        self.cols = np.zeros((k, nbw), np.float32)
        self.blk = np.empty((CHAIN_BLOCK, CHAIN_BLOCK), np.float32)
        self.lanes = np.empty(16, np.float32)
        self.wsum = np.empty(nbw, np.float32)
        self.wsq = np.empty(nbw, np.float32)
        self.inv = np.empty(nbw, np.float32)
        self.acc = np.empty(nb, np.float32)
        self.neg_act = np.empty((v, n, nb), np.float64)
        self.apad = np.zeros(a_h * a_w + 16, np.float32)


#: Per-window loops are padded to a multiple of this many windows: the vector loop
#: LLVM makes (8 lanes, unrolled 4 times) then has no scalar remainder.
VECTOR_ROUND = 32


#: Sigma sets of every patch file met by this process: ``{sha256: {view: {window: array}}}``
#: (see :meth:`ExpertBank.sigma`); a pure function of the file's bytes.
_SIGMA_SETS: dict[str, dict] = {}


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
        #: Neurons per landmark: the N of OpenFace's activation sgemm (skipped ones included).
        self.n_neurons = np.zeros(v, np.int64)
        self.sum_alpha = np.zeros(v, np.float32)
        nb = max((experts[i].betas.size for i in vis), default=0)
        self.betas = np.zeros((v, nb), np.float64)
        self.confidence = np.zeros(v, np.float64)
        for row, i in enumerate(vis):
            e = experts[i]
            n = e.n_neurons
            self.n_neurons[row] = n
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
        #: ``weights`` t-major with the neurons padded to 8, ``(v, K, 8)``: the operand of
        #: :func:`~clnfdiag.numerics.fma.fma_chains_8x8` (``(0, K, 8)`` above 8 neurons).
        nw = 0 if k > CHAIN_BLOCK else v
        self.weights_t8 = np.zeros((nw, 1 + hw, CHAIN_BLOCK), np.float32)
        self.weights_t8[:, :, :k] = self.weights[:nw].transpose(0, 2, 1)
        # Sigma matrices depend only on the patch file's contents, the view and the window:
        # kept per file (its SHA-256, once per process: every Fitter, every load of the same
        # model) or, for a scale read without one, on the scale object.
        per_file = (_SIGMA_SETS.setdefault(scale.sha256, {}) if scale.sha256
                    else scale.__dict__.setdefault("_sigma_cache", {}))
        self._sigmas: dict = per_file.setdefault(view, {})
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
                len(self.landmarks), self.weights.shape[1], 1 + self.height * self.width, rh, rw,
                rh + self.height - 1, rw + self.width - 1)
        return s

    def sigma_t(self, window: int) -> np.ndarray:
        """:meth:`sigma` with each landmark's matrix transposed, ``[i, j, o] = Sigma_i[o, j]``.

        The same array when every Sigma is bit-exactly symmetric (no copy),
        otherwise a cached float32 copy. Read-only.
        """
        key = (window, "T")
        cached = self._sigmas.get(key)
        if cached is not None:
            return cached
        with self._sigma_lock(key):
            cached = self._sigmas.get(key)
            if cached is None:
                # The fit reads only the transposed set; :meth:`sigma` transposes it back
                # when asked (the same bits: a copy) and then keeps that too.
                sig = self._sigmas.get(window)
                if sig is None:
                    sig = self._compute_sigma(window)
                if np.array_equal(sig, sig.transpose(0, 2, 1)):
                    cached = sig
                else:
                    cached = np.ascontiguousarray(sig.transpose(0, 2, 1))
                    cached.flags.writeable = False
                self._sigmas[key] = cached
        return cached

    def _sigma_lock(self, key) -> threading.Lock:
        """The lock of one cached Sigma set: computed once even when the load-time warm-up
        (:mod:`clnfdiag.clnf.warm`) and a fit ask for it at the same time."""
        return self._sigmas.setdefault(("lock",) + key, threading.Lock())

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
        with self._sigma_lock((window,)):
            cached = self._sigmas.get(window)
            if cached is None:
                sig_t = self._sigmas.get((window, "T"))
                if sig_t is None:
                    cached = self._compute_sigma(window)
                else:
                    cached = np.ascontiguousarray(sig_t.transpose(0, 2, 1))
                    cached.flags.writeable = False
                self._sigmas[window] = cached
        return cached

    def _compute_sigma(self, window: int) -> np.ndarray:
        """:meth:`sigma` without the cache (read-only result)."""
        n = window * window
        comps = self._scale.sigma_components.get(window)
        if comps is None:
            comps = np.zeros((0, n, n), np.float32)
        comps = np.ascontiguousarray(comps, dtype=np.float32)
        out = np.empty((len(self.landmarks), n, n), np.float32)
        eye = np.eye(n, dtype=np.float32)
        for row in range(len(self.landmarks)):
            # OpenFace's ``q2 = q2 + (float)beta * S_b`` is OpenCV's scaleAdd, which the
            # AVX2 build evaluates as one fused multiply-add per element (with it, windows
            # 7 and 9 are bit-identical to the C++; the separately rounded product is not).
            q2 = np.zeros((n, n), np.float32)
            for b in range(comps.shape[0]):
                _scale_add_fma(np.float32(self.betas[row, b]), comps[b], q2)
            inv_sigma = np.float32(2) * (self.sum_alpha[row] * eye + q2)
            # cv::invert(DECOMP_CHOLESKY) of the C++ build (LAPACK sposv over OpenBLAS
            # 0.3.21 for n >= 100, OpenCV's own Cholesky below), emulated in fixed-order
            # float32 code: the same bits on every CPU, no BLAS involved.
            out[row], _ok = invert_cholesky(inv_sigma)
        out.flags.writeable = False
        return out


def extract_areas(gray_f32: np.ndarray, landmarks: np.ndarray, sim_ref_to_img: np.ndarray,
                  indices: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    """Warp each landmark's surroundings into the reference frame.

    Parameters
    ----------
    gray_f32 : (H, W) float32
    landmarks : (n, 2) float32
    sim_ref_to_img : (2, 2) float32
    indices : (v,) int
        Landmarks to extract (the visible ones).
    side : int
        ``A = window + support - 1``.
    nearest : bool
        Nearest-neighbour instead of bilinear (the ``nearest-warp`` fault).

    Returns
    -------
    (v, A, A) float32
        ``cv2.warpAffine`` with WARP_INVERSE_MAP and a zero constant border:
        OpenCV's fixed-point bilinear sampling is part of what the goldens
        contain. The bilinear warp of every landmark runs in one compiled call
        (:func:`_warp_areas_nb`, OpenCV's arithmetic); the nearest-neighbour
        one (a fault) calls OpenCV per landmark.
    """
    a1 = F32(sim_ref_to_img[0, 0])
    b1 = F32(-sim_ref_to_img[0, 1])
    half = (F32(side) - F32(1.0)) / F32(2.0)
    flags = cv2.WARP_INVERSE_MAP | (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    idx = np.asarray(indices, dtype=np.intp).reshape(-1)
    out = np.zeros((idx.shape[0], side, side), F32)
    # Every landmark's 2x3 matrix [[a1, -b1, x - a1 h + b1 h], [b1, a1, y - a1 h - b1 h]]
    # at once (the same float32 operations, left to right), then one warp each.
    lm = np.asarray(landmarks)[idx]
    mats = np.empty((idx.shape[0], 2, 3), F32)
    mats[:, 0, 0] = a1
    mats[:, 0, 1] = -b1
    mats[:, 0, 2] = lm[:, 0] - a1 * half + b1 * half
    mats[:, 1, 0] = b1
    mats[:, 1, 1] = a1
    mats[:, 1, 2] = lm[:, 1] - a1 * half - b1 * half
    if not nearest and gray_f32.dtype == np.float32 and gray_f32.ndim == 2:
        _warp_areas_nb(np.ascontiguousarray(gray_f32), mats.astype(np.float64), _BILINEAR_TAB, out)
        return out
    warp, size = cv2.warpAffine, (side, side)
    for row in range(idx.shape[0]):
        warp(gray_f32, mats[row], size, dst=out[row], flags=flags,
             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


#: OpenCV's warp sub-pixel resolution: coordinates in 1/32 px (``INTER_BITS``) ...
_INTER_BITS = 5
#: ... computed in 1/1024 px (``AB_BITS``), rounded to the nearest 1/32 by adding half of it.
_AB_BITS = 10
_AB_SCALE = float(1 << _AB_BITS)
_ROUND_DELTA = (1 << _AB_BITS) // (1 << _INTER_BITS) // 2


def _bilinear_table() -> np.ndarray:
    """OpenCV's ``BilinearTab_f``: (32·32, 4) float32, row ``ky·32 + kx`` the weights
    ``(1-y)(1-x), (1-y)x, y(1-x), yx`` of the taps at ``(x, y) = (kx, ky)/32`` (float32
    products of the 1-D weights ``1 - t, t``; all exact)."""
    n = 1 << _INTER_BITS
    t = np.arange(n, dtype=F32) * (F32(1) / F32(n))
    one = F32(1)
    tab = np.empty((n, n, 4), F32)
    tab[:, :, 0] = ((one - t)[:, None] * (one - t)[None, :])
    tab[:, :, 1] = ((one - t)[:, None] * t[None, :])
    tab[:, :, 2] = (t[:, None] * (one - t)[None, :])
    tab[:, :, 3] = (t[:, None] * t[None, :])
    return tab.reshape(n * n, 4)


_BILINEAR_TAB = _bilinear_table()


@_njit
def _warp_areas_nb(src, mats, tab, out):  # pragma: no cover - compiled
    """``cv::warpAffine(src, dst, M, size, WARP_INVERSE_MAP | INTER_LINEAR, BORDER_CONSTANT, 0)``
    of float32 ``src`` for every ``M = mats[i]`` (float64, as OpenCV converts it) into ``out[i]``.

    OpenCV's ``WarpAffineInvoker`` and ``remapBilinear``: per destination pixel
    ``(x, y)`` the source position in 1/1024 px, ``X = cvRound((M01·y + M02)·1024) + 16
    + cvRound(M00·x·1024)`` (and ``Y`` with ``M1*``), shifted to 1/32 px; its integer
    part (saturated to 16 bits) is the top-left tap, its fraction picks the weights
    of :data:`_BILINEAR_TAB`; ``D = ((s00·w0 + s01·w1) + s10·w2) + s11·w3`` in float32,
    a tap outside the image reading 0, and 0 when all four are outside. Bit-identical
    to ``cv2.warpAffine`` (tests/test_warp.py) and independent of the CPU (integer
    coordinates, float32 operations in a fixed order).
    """
    h, w = src.shape
    v, side, _ = out.shape
    shift = _AB_BITS - _INTER_BITS
    mask = (1 << _INTER_BITS) - 1
    zero = np.float32(0.0)
    adelta = np.empty(side, np.int64)
    bdelta = np.empty(side, np.int64)
    for i in range(v):
        m00, m01, m02 = mats[i, 0, 0], mats[i, 0, 1], mats[i, 0, 2]
        m10, m11, m12 = mats[i, 1, 0], mats[i, 1, 1], mats[i, 1, 2]
        for x in range(side):                      # OpenCV's per-column deltas
            adelta[x] = _sat_int(np.rint(m00 * x * _AB_SCALE))
            bdelta[x] = _sat_int(np.rint(m10 * x * _AB_SCALE))
        dst = out[i]
        for y in range(side):
            x0 = _sat_int(np.rint((m01 * y + m02) * _AB_SCALE)) + _ROUND_DELTA
            y0 = _sat_int(np.rint((m11 * y + m12) * _AB_SCALE)) + _ROUND_DELTA
            for x in range(side):
                xx = (x0 + adelta[x]) >> shift
                yy = (y0 + bdelta[x]) >> shift
                sx = _sat_short(xx >> _INTER_BITS)
                sy = _sat_short(yy >> _INTER_BITS)
                wt = tab[(yy & mask) * (mask + 1) + (xx & mask)]
                if 0 <= sx < w - 1 and 0 <= sy < h - 1:
                    dst[y, x] = (src[sy, sx] * wt[0] + src[sy, sx + 1] * wt[1]
                                 + src[sy + 1, sx] * wt[2] + src[sy + 1, sx + 1] * wt[3])
                elif sx >= w or sx + 1 < 0 or sy >= h or sy + 1 < 0:
                    dst[y, x] = zero
                else:
                    in_x0 = 0 <= sx < w
                    in_x1 = 0 <= sx + 1 < w
                    in_y0 = 0 <= sy < h
                    in_y1 = 0 <= sy + 1 < h
                    v0 = src[sy, sx] if in_x0 and in_y0 else zero
                    v1 = src[sy, sx + 1] if in_x1 and in_y0 else zero
                    v2 = src[sy + 1, sx] if in_x0 and in_y1 else zero
                    v3 = src[sy + 1, sx + 1] if in_x1 and in_y1 else zero
                    dst[y, x] = v0 * wt[0] + v1 * wt[1] + v2 * wt[2] + v3 * wt[3]


@_njit
def _sat_int(d):  # pragma: no cover - compiled
    """``saturate_cast<int>`` of an already rounded double (NaN: x86's INT_MIN)."""
    if d != d:
        return np.int64(-2147483648)
    if d >= 2147483647.0:
        return np.int64(2147483647)
    if d <= -2147483648.0:
        return np.int64(-2147483648)
    return np.int64(d)


@_njit
def _sat_short(k):  # pragma: no cover - compiled
    """``saturate_cast<short>``."""
    if k > 32767:
        return 32767
    if k < -32768:
        return -32768
    return k


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
def _lane_windows(cols, w, n_neurons, rh, rw, lanes, res, sign):  # pragma: no cover - compiled
    """The windows OpenBLAS's small sgemm kernel sums in 16 FMA lanes.

    The activation sgemm has M = rh·rw windows in OpenFace's order ``x·rh + y``
    (im2col's column-major walk), N = ``n_neurons``, K = 1 + h·w. Its kernel
    rows from :func:`~clnfdiag.numerics.sgemm.lane_row_start` on (the last
    window when M = 16k + 1: w = 7, 9, 15) are 16 lanes and a tree (tree A for
    neurons 0-3, tree B after), not the FMA chain every other window gets.
    ``cols`` (K, nb) holds window ``y·rw + x`` in column ``y·rw + x``, ``w``
    (n, K) the neurons' weights; ``res[j, b] = sign·sum`` for those windows.
    """
    k = w.shape[1]
    nb = rh * rw
    for i in range(lane_row_start(nb, k), nb):
        x = i // rh
        y = i - x * rh
        b = y * rw + x
        col = cols[:, b]
        for j in range(w.shape[0]):
            s = lanes16_dot(col, w[j], uses_tree_a(i, j, nb, n_neurons), lanes)
            res[j, b] = sign * np.float64(s)


@_njit
def _fma_chains(cols, weights, n_neurons, rh, rw, out):  # pragma: no cover - compiled
    k, v, nb = cols.shape
    n = weights.shape[1]
    acc = np.empty(nb, np.float32)
    lanes = np.empty(16, np.float32)
    for i in range(v):
        for j in range(n):
            for b in range(nb):
                acc[b] = 0.0
            for t in range(k):
                w = weights[i, j, t]
                c = cols[t, i]
                for b in range(nb):
                    acc[b] = fma32(c[b], w, acc[b])
            for b in range(nb):
                out[i, j, b] = acc[b]
        _lane_windows(cols[:, i, :], weights[i], n_neurons[i], rh, rw, lanes, out[i], 1.0)


def _fma_gemm(cols: np.ndarray, weights: np.ndarray, n_neurons: np.ndarray,
              rh: int, rw: int) -> np.ndarray:
    """OpenFace's activation sgemm: ``act[v, n, b] = Σ_k weights[v, n, k]·cols[k, v, b]``.

    OpenBLAS's SkylakeX small-matrix kernel (M = rh·rw windows, N = neurons,
    K = 122, beta 0): every window is one correctly rounded float32 FMA chain
    over ``k = 0..K-1`` in order, except the kernel's 16-lane rows
    (:func:`_lane_windows`: the last window of w = 7, 9, 15).

    cols : (K, v, nb) float32, windows ``y·rw + x``; weights : (v, n, K)
    float32; n_neurons : (v,) int. Returns (v, n, nb) float32.
    """
    k, v, nb = cols.shape
    out = np.empty((v, weights.shape[1], nb), np.float32)
    _fma_chains(np.ascontiguousarray(cols), np.ascontiguousarray(weights, np.float32),
                np.ascontiguousarray(n_neurons, np.int64), rh, rw, out)
    return out


@_njit
def _ccnf_neg_activations(areas, weights, weights_t8, n_neurons, height, width, rh, rw,
                          cols, wsum, wsq, inv, acc, lanes, neg_act, blk,
                          apad):  # pragma: no cover - compiled
    """``neg_act[i, j, b] = -(weights[i, j] · window_b)`` in float64 (float32 values).

    Per landmark, one pass: the im2col with OpenFace's contrast normalisation
    (:func:`_im2col_kmajor`'s float32 arithmetic in its order, vectorised over
    the windows: float32 ``+ - * /`` and ``sqrt`` are IEEE float32 operations
    here, no fastmath so no contraction to FMA), then the sgemm as
    :func:`_fma_gemm` computes it (correctly rounded FMA chains over
    ``t = 0..K-1``, vectorised over the windows; :func:`_lane_windows`).
    """
    v = areas.shape[0]
    n = weights.shape[1]
    k = weights.shape[2]
    nb = rh * rw
    nbw = cols.shape[1]                 # nb rounded up (see _RawScratch): the vector width
    a_h = areas.shape[1]
    a_w = areas.shape[2]
    fhw = np.float32(height * width)
    # Window rows copied 8 or 16 pixels at a time (one or two vector moves; what a row
    # copies beyond its rw windows lands on the next row's, rewritten next), then the
    # sums over whole rows of cols: every window gets the same operations in the same
    # order as pixel by pixel, and the padded columns are never read back.
    fast = rw <= 16 and (rh - 1) * rw + 16 <= nbw and apad.shape[0] >= a_h * a_w + 16
    for b in range(nbw):
        cols[0, b] = 1.0
    for i in range(v):
        for b in range(nbw):
            wsum[b] = 0.0
            wsq[b] = 0.0
        # Pixels to slab 1 + xx*h + yy; sequential float32 sum, yy outer, xx inner.
        if fast:
            src = areas[i]
            for y in range(a_h):
                for x in range(a_w):
                    apad[y * a_w + x] = src[y, x]
            for yy in range(height):
                for xx in range(width):
                    row = cols[1 + xx * height + yy]
                    for y in range(rh):
                        o = (y + yy) * a_w + xx
                        copy_f32x8(row, y * rw, apad, o)
                        if rw > 8:
                            copy_f32x8(row, y * rw + 8, apad, o + 8)
            for yy in range(height):
                for xx in range(width):
                    row = cols[1 + xx * height + yy]
                    for b in range(nbw):
                        wsum[b] = wsum[b] + row[b]
        else:
            for yy in range(height):
                for xx in range(width):
                    row = cols[1 + xx * height + yy]
                    for y in range(rh):
                        base = y * rw
                        for x in range(rw):
                            p = areas[i, y + yy, xx + x]
                            row[base + x] = p
                            wsum[base + x] = wsum[base + x] + p
        for b in range(nbw):
            wsum[b] = wsum[b] / fhw                                   # the mean
        # Mean removed; rounded squares summed in column-major order t = 1..hw.
        for t in range(1, k):
            row = cols[t]
            for b in range(nbw):
                d = row[b] - wsum[b]
                row[b] = d
                wsq[b] = wsq[b] + d * d
        for b in range(nbw):
            nrm = np.sqrt(wsq[b])
            if nrm == np.float32(0.0):
                nrm = np.float32(1.0)
            inv[b] = np.float32(1.0 / np.float64(nrm))                # 1.0 / norm in double
        for t in range(1, k):
            row = cols[t]
            for b in range(nbw):
                row[b] = row[b] * inv[b]
        # sgemm: one float32 FMA chain per window, then the kernel's 16-lane windows.
        if weights_t8.shape[0] > 0:
            # 8 windows x 8 neurons per block, the 64 chains in registers.
            for b0 in range(0, nb, 8):
                fma_chains_8x8(cols, weights_t8[i], b0, blk)
                for j in range(n):
                    o = neg_act[i, j]
                    for l in range(min(8, nb - b0)):
                        o[b0 + l] = -np.float64(blk[j, l])
        else:
            for j in range(n):
                for b in range(nb):
                    acc[b] = 0.0
                for t in range(k):
                    c = cols[t]
                    w = weights[i, j, t]
                    for b in range(nb):
                        acc[b] = fma32(c[b], w, acc[b])
                o = neg_act[i, j]
                for b in range(nb):
                    o[b] = -np.float64(acc[b])
        _lane_windows(cols, weights[i], n_neurons[i], rh, rw, lanes, neg_act[i], -1.0)


@_njit
def _expf_sum_neurons(neg_act, two_alpha, out):  # pragma: no cover - compiled
    """``out[i, b] = float(... float(float(0 + t_0) + t_1) ... + t_n-1)`` with the
    double term ``t_j = two_alpha[i, j] / (double(expf(float(neg_act[i, j, b]))) + 1)``:
    OpenFace's sigmoid with glibc's ``expf`` (:func:`clnfdiag.numerics.libm.expf`),
    each term added to the float map in neuron order."""
    v, n, nb = neg_act.shape
    for i in range(v):
        for b in range(nb):
            out[i, b] = 0.0
        for j in range(n):
            ta = two_alpha[i, j]
            src = neg_act[i, j]
            for b in range(nb):
                e = libm.expf(src[b])
                term = ta / (np.float64(e) + 1.0)
                out[i, b] = np.float32(np.float64(out[i, b]) + term)


def _raw_response_numpy(bank: ExpertBank, areas: np.ndarray) -> np.ndarray:
    """The reference formulation of :func:`raw_response` (stacked im2col, batched
    GEMM, vectorised sigmoid) for banks with a single landmark or neuron; same
    values as the compiled path. ``areas`` are those of the bank's first ``v``
    landmarks."""
    v, a_h, a_w = areas.shape
    rh, rw = a_h - bank.height + 1, a_w - bank.width + 1
    # Bit-exact with OpenFace's ResponseOpenBlas (measured on the goldens; see
    # bench/response_bits.py): im2col sums in its order, the sgemm as FMA
    # chains, exp as glibc's expf on the float activation.
    cols = _im2col_kmajor(areas, bank.height, bank.width)
    act = _fma_gemm(cols, bank.weights, bank.n_neurons, rh, rw).transpose(1, 0, 2)  # (n, v, nb)
    e = expf32(np.negative(act)).astype(np.float64)
    # The term in double, added to the float map neuron by neuron (neurons with
    # alpha <= 1e-4 have two_alpha 0 and add nothing): float(map + term) each time.
    terms = np.add(e, 1.0, dtype=np.float64)
    np.divide(bank.two_alpha[:v].T[:, :, None], terms, out=terms)
    acc = np.zeros((v, rh * rw), np.float32)
    for term in terms:
        np.add(acc, term, out=acc, dtype=np.float64, casting="unsafe")
    return acc.reshape(v, rh, rw)


def raw_response(bank: ExpertBank, areas: np.ndarray) -> np.ndarray:
    """Sum over neurons of ``2·alpha·sigmoid(w·x + b)`` for every visible landmark.

    float32 (default): bit-exact with OpenFace's ResponseOpenBlas on every
    golden value (bench/response_bits.py, tests/test_sgemm.py). One compiled
    pass per landmark does the im2col with contrast normalisation in
    OpenFace's float order (:func:`_im2col_kmajor`) and the sgemm as OpenBLAS's
    small-matrix kernel sums it (:func:`_fma_gemm`: float32 FMA chains, and 16
    FMA lanes for the last window of w = 7, 9, 15); the exponential is
    glibc's ``expf`` of the float activation (:func:`expf32`), as the C++
    ``exp(float)``; then the double terms ``2·alpha / (1 + e)`` are added to
    the float map neuron by neuron.

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
    n = bank.weights.shape[1]
    if v <= 1 or n <= 1 or rh <= 0 or rw <= 0:
        return _raw_response_numpy(bank, areas)
    a = np.ascontiguousarray(areas, dtype=np.float32)
    s = bank.raw_scratch(rh, rw)
    _ccnf_neg_activations(a, bank.weights, bank.weights_t8, bank.n_neurons, bank.height,
                          bank.width, rh, rw, s.cols, s.wsum, s.wsq, s.inv, s.acc, s.lanes,
                          s.neg_act, s.blk, s.apad)
    out = np.empty((v, rh, rw), np.float32)
    ta = two_alpha if two_alpha.dtype == np.float64 and two_alpha.flags.c_contiguous \
        else np.ascontiguousarray(two_alpha, np.float64)
    # glibc's expf on the float activation, fused with the neuron sum.
    _expf_sum_neurons(s.neg_act, ta, out.reshape(v, rh * rw))
    return out


def sigma_response(bank: ExpertBank, raw: np.ndarray) -> np.ndarray:
    """``Sigma @ vec(raw)`` per landmark, row-major vectorisation.

    float32 maps follow OpenFace's ``sgemm_`` with M = 1, which OpenBLAS forwards
    to ``sgemv_t``: each output is a dot product of one stored Sigma row with the
    map, accumulated by fused multiply-adds in 16 lanes (element ``j`` in lane
    ``j % 16``), then reduced by a pairwise tree: adjacent lanes first for the
    columns of the 4-column kernel, halves folded for the leftover columns.
    With Sigma from :func:`~clnfdiag.numerics.cholesky.invert_cholesky` (OpenCV's
    own Cholesky below 100 x 100, the emulated LAPACK ``sposv`` of the C++ build
    above), bit-identical to the C++ for every window of the golden cases when
    fed their raw maps, on any CPU.

    Parameters
    ----------
    raw : (v, w, w) float32

    Returns
    -------
    (v, w, w) float32
    """
    v, h, w = raw.shape
    n = h * w
    out = np.empty((v, n), np.float32)
    lanes = bank._sgemv_lanes.get(n)
    if lanes is None:
        lanes = bank._sgemv_lanes[n] = np.empty((16, n), np.float32)
    _sgemv_t_lanes(bank.sigma_t(h), np.ascontiguousarray(raw, np.float32).reshape(v, n), lanes, out)
    return out.reshape(v, h, w)


@_njit
def _sgemv_t_lanes(sig_t, vec, lanes, out):  # pragma: no cover - compiled
    """OpenBLAS ``sgemv_t`` as the C++ ran it: ``out[i] = Sigma_i @ vec[i]``.

    Per output, element ``j`` is fused-multiply-added into lane ``j % 16``
    (correctly rounded float32 FMA, :func:`~clnfdiag.numerics.fma.fma32`); then the 16
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
            x = vec[i, j]
            for o in range(n):
                row[o] = fma32(s[o], x, row[o])
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


def shift_response(sigma_maps: np.ndarray) -> np.ndarray:
    """Shift each map up by its minimum when that minimum is negative; nothing else.

    Parameters
    ----------
    sigma_maps : (v, w, w) float32

    Returns
    -------
    (v, w, w) float32
    """
    if sigma_maps.dtype == np.float32 and sigma_maps.ndim == 3:
        out = np.empty(sigma_maps.shape, np.float32)
        _shift_nb(np.ascontiguousarray(sigma_maps), out)
        return out
    mins = sigma_maps.min(axis=(1, 2), keepdims=True)
    out = np.where(mins < 0, sigma_maps - mins, sigma_maps)
    return out.astype(sigma_maps.dtype, copy=False)


@_njit
def _shift_nb(maps, out):  # pragma: no cover - compiled
    """:func:`shift_response` of float32 maps: the minimum as numpy's (NaN when a value is
    NaN, so no shift), then ``map - min`` in float32 when it is negative, else a copy."""
    v, h, w = maps.shape
    for i in range(v):
        src = maps[i].reshape(h * w)
        dst = out[i].reshape(h * w)
        m = src[0]
        for j in range(h * w):
            x = src[j]
            if np.isnan(x):
                m = x
                break
            if x < m:
                m = x
        if m < 0:
            for j in range(h * w):
                dst[j] = src[j] - m
        else:
            for j in range(h * w):
                dst[j] = src[j]


@_njit
def _view_index_nb(g, centers):  # pragma: no cover - compiled
    """``GetViewIdx``: per view ``v_k = float(double(g[1 + k]) - centre[k])`` (a float
    parameter minus a double centre, stored in a float), ``d = v1*v1 + v2*v2 + v3*v3``
    in float32; the first strict minimum wins."""
    best = np.float32(0)
    idx = 0
    for i in range(centers.shape[0]):
        v1 = np.float32(np.float64(g[1]) - centers[i, 0])
        v2 = np.float32(np.float64(g[2]) - centers[i, 1])
        v3 = np.float32(np.float64(g[3]) - centers[i, 2])
        d = v1 * v1 + v2 * v2 + v3 * v3
        if i == 0 or d < best:
            best = d
            idx = i
    return idx


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
        """Closest view centre to the current (pitch, yaw, roll), as OpenFace's ``GetViewIdx``."""
        return _view_index_nb(np.asarray(params_global, np.float32),
                              np.asarray(self.scales[scale].centers, np.float64))

    def support(self, scale: int, view: int) -> tuple[int, int]:
        b = self.bank(scale, view)
        return b.height, b.width

    def responses(self, areas: np.ndarray, scale: int, view: int) -> ResponseStages:
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
        raw = raw_response(bank, areas)
        sig = sigma_response(bank, raw)
        resp = shift_response(sig)
        return ResponseStages(bank.landmarks, raw, sig, resp)
