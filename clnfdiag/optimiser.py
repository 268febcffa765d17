"""NU-RLMS building blocks of OpenFace 2.x CLNF, vectorised over landmarks.

Everything here reproduces ``CLNF::NU_RLMS`` and its helpers
(``NonVectorisedMeanShift_precalc_kde``, ``GetWeightMatrix``) of OpenFace 2.x
at float32 rounding level. The arithmetic follows the C++ operation by
operation where the rounding matters:

* OpenFace stores every matrix as ``float``. Small OpenCV matrix products
  (``cv::gemm``) multiply float inputs in double and round the result once, so
  those are done here in float64 and cast to float32.
* Loops that accumulate into a ``float`` (KDE sums, the likelihood) are
  sequential; they are compiled loops (numba) adding in order in float32,
  the same values as ``np.cumsum(..., dtype=float32)[:, -1]`` (``np.sum``
  would add pairwise).
* The KDE table uses the C library's single-precision ``expf`` (the C++
  calls ``exp`` on a float), see :func:`expf32`.
* The right-hand side ``J^T W ms - R p`` is one OpenCV gemm expression: double
  sums, one rounding. Near convergence the two terms cancel to 1e-5 of their
  size, so this detail decides the update there.
* The Hessian is an OpenBLAS ``sgemm`` (the SkylakeX small-matrix kernel),
  emulated element by element in :mod:`clnfdiag.numerics.sgemm`: float32
  fused multiply-add chains over the 2n rows or 16 FMA lanes and an addition
  tree, by position, then ``+ R`` (:func:`hessian_sgemm`).
* ``cv::solve(..., DECOMP_CHOLESKY)`` runs OpenCV's own small-matrix Cholesky
  (double accumulators, float storage, reciprocal diagonal), emulated in
  :mod:`clnfdiag.numerics.cholesky` (:func:`cholesky_solve`); the Python port
  :func:`cholesky_solve_opencv` documents the arithmetic and is bit-identical
  to it on the golden cases' Hessians.

Measured on the ten golden cases (``python tests/test_optimiser.py``): window
offsets, mean-shifts (both frames), likelihoods and shape-change norms are
bit-identical to the C++, and so are the parameter updates fed the golden
Jacobians, weights and mean-shifts (``tests/test_sgemm.py``).

Layout conventions: landmark arrays are ``(n, 2)`` with columns ``(x, y)``;
vectors indexed like OpenFace's column vectors are ``(2n,)`` with the n x
entries first, then the n y entries.

The known faults' variants (exact-kernel KDE, float64 sums) are the faults'
own code (:mod:`clnfdiag.faults`); the fit loop is :mod:`clnfdiag.clnf.loop`.
"""
from __future__ import annotations

import functools

import numba
import numpy as np

from .numerics import libm
from .numerics.cholesky import solve_cholesky
from .numerics.cvlinalg import norm_l2_f32
from .numerics.sgemm import hessian_nb

__all__ = [
    "KDE_STEP",
    "kde_grid_size",
    "kde_kernel_table",
    "kde_exponent",
    "expf32",
    "window_offsets",
    "mean_shift",
    "kde_sums",
    "kernel_values",
    "clamp_to_window",
    "visible_mask",
    "to_image_frame",
    "weight_matrix_diag",
    "regularisation_diag",
    "regularisation_vector",
    "hessian_sgemm",
    "cholesky_solve_opencv",
    "cholesky_solve",
    "solve_update",
    "landmark_likelihoods",
    "model_likelihood",
    "shape_change_norm",
    "UpdateSolver",
]

F32 = np.float32
F64 = np.float64

#: Grid step of OpenFace's precalculated KDE kernel (a C++ ``float`` 0.1).
KDE_STEP = F32(0.1)


# --------------------------------------------------------------------------- kernels
# Compiled loops for the float32 accumulations whose operation order decides
# the last bit (numba, no fastmath: every ``np.float32(...)`` below is one
# IEEE rounding, as in the C++). A float32 sum or product computed in double
# and rounded once is the float32 operation itself (double has more than
# 2 x 24 + 2 bits), so the kernels widen explicitly where it keeps the code
# readable. ``cache=True`` compiles once per machine (``__pycache__``).
_njit = numba.njit(cache=True, nogil=True)


@_njit
def _kde_sums_grid_nb(resp, idx, table, ix, iy, cols, rows, out):
    """Sequential float32 sums of ``v``, ``v * cols`` and ``v * rows`` (the first
    term starts each sum, as the C++ loop) for ``v = resp[idx[i]] * table[ix[i], iy[i]]``
    (float32 products): ``out`` is (3, m).

    Every landmark's three sums run cell by cell in the C++ order; the landmarks
    are independent, so they advance together (one vector lane each): each
    landmark's response and kernel row are first copied cell-major, ``(w·w, m)``.
    """
    m = idx.shape[0]
    ww = cols.shape[0]
    r_t = np.empty((ww, m), np.float32)
    k_t = np.empty((ww, m), np.float32)
    for i in range(m):
        r = resp[idx[i]].reshape(ww)
        kk = table[ix[i], iy[i]].reshape(ww)
        for c in range(ww):
            r_t[c, i] = r[c]
            k_t[c, i] = kk[c]
    t = out[0]
    sx = out[1]
    sy = out[2]
    r0 = r_t[0]
    k0 = k_t[0]
    c0 = cols[0]
    w0 = rows[0]
    for i in range(m):
        x = np.float32(r0[i] * k0[i])
        t[i] = x
        sx[i] = np.float32(x * c0)
        sy[i] = np.float32(x * w0)
    for c in range(1, ww):
        rc = r_t[c]
        kc = k_t[c]
        cc = cols[c]
        wc = rows[c]
        for i in range(m):
            x = np.float32(rc[i] * kc[i])
            t[i] = np.float32(np.float64(t[i]) + np.float64(x))
            sx[i] = np.float32(np.float64(sx[i]) + np.float64(np.float32(x * cc)))
            sy[i] = np.float32(np.float64(sy[i]) + np.float64(np.float32(x * wc)))


_njit_np = numba.njit(cache=True, nogil=True, error_model="numpy")


@_njit_np
def _mul_2x2_t_nb(p, mat):
    """``p @ mat.T`` of float32 (n, 2) and (2, 2), products and sum in double,
    one rounding: the two products are exact in double, so any summation
    order (or an FMA) gives ``round(p0 + p1)``, as the BLAS product does."""
    n = p.shape[0]
    out = np.empty((n, 2), dtype=np.float32)
    m00, m01 = np.float64(mat[0, 0]), np.float64(mat[0, 1])
    m10, m11 = np.float64(mat[1, 0]), np.float64(mat[1, 1])
    for i in range(n):
        x, y = np.float64(p[i, 0]), np.float64(p[i, 1])
        out[i, 0] = np.float32(x * m00 + y * m01)
        out[i, 1] = np.float32(x * m10 + y * m11)
    return out


@_njit_np
def _window_offsets_nb(cur, base, mat, half):
    """:func:`window_offsets`: float32 difference, 2x2 product in double (one
    rounding), ``+ half`` in float32."""
    n = cur.shape[0]
    diff = np.empty((n, 2), dtype=np.float32)
    for i in range(n):
        diff[i, 0] = cur[i, 0] - base[i, 0]
        diff[i, 1] = cur[i, 1] - base[i, 1]
    off = _mul_2x2_t_nb(diff, mat)
    dxs = np.empty(n, dtype=np.float32)
    dys = np.empty(n, dtype=np.float32)
    for i in range(n):
        dxs[i] = off[i, 0] + half
        dys[i] = off[i, 1] + half
    return dxs, dys


@_njit_np
def _to_image_frame_nb(ms_ref, mat, vis):
    out = _mul_2x2_t_nb(ms_ref, mat)
    for i in range(out.shape[0]):
        if not vis[i]:
            out[i, 0] = 0
            out[i, 1] = 0
    return out


@_njit_np
def _mean_shift_grid_nb(resp, vis_idx, dxs, dys, table, cols, rows, hi, out):
    """The grid branch of :func:`mean_shift` for finite offsets: clamp to
    ``[0, hi]``, grid index ``floor(float64(d / 0.1f) + 0.5)``, the sequential
    float32 sums of :func:`_kde_sums_grid_nb`, then ``m / total - d`` in float32.
    Returns False (nothing written) when an offset is not finite."""
    m = vis_idx.shape[0]
    step = np.float32(0.1)
    zero = np.float32(0)
    dx = np.empty(m, dtype=np.float32)
    dy = np.empty(m, dtype=np.float32)
    ix = np.empty(m, dtype=np.intp)
    iy = np.empty(m, dtype=np.intp)
    for t in range(m):
        i = vis_idx[t]
        a, b = dxs[i], dys[i]
        if not (np.isfinite(a) and np.isfinite(b)):
            return False
        # np.minimum(np.maximum(d, 0), hi) (keeps a -0.0, as numpy does)
        if a < zero:
            a = zero
        if a > hi:
            a = hi
        if b < zero:
            b = zero
        if b > hi:
            b = hi
        dx[t], dy[t] = a, b
        ix[t] = np.intp(np.floor(np.float64(np.float32(a / step)) + 0.5))
        iy[t] = np.intp(np.floor(np.float64(np.float32(b / step)) + 0.5))
    sums = np.empty((3, m), dtype=np.float32)
    _kde_sums_grid_nb(resp, vis_idx, table, ix, iy, cols, rows, sums)
    for t in range(m):
        i = vis_idx[t]
        out[i, 0] = np.float32(sums[1, t] / sums[0, t]) - dx[t]
        out[i, 1] = np.float32(sums[2, t] / sums[0, t]) - dy[t]
    return True


@_njit_np
def jtw_ms_nb(jw, ms):
    """``J_w_t · ms`` as OpenCV's own gemm computes it (``cv::gemm`` of the (k, 2n)
    ``J_w_t`` and the (2n, 1) mean-shifts; fewer than 100 rows, so no BLAS).

    A one-column product takes OpenCV's ``A·Bᵀ`` branch: per output, four double
    accumulators take the products of rows ``r ≡ 0, 1, 2, 3 (mod 4)`` of the
    unrolled part (``r <= 2n - 4`` in steps of 4), the leftover rows go to the
    first; then ``((s0 + s1) + s2) + s3`` rounded once to float32 (what
    :func:`~clnfdiag.numerics.cvlinalg.gemm_f32` does for this shape). Here the k
    outputs advance together (``jw`` is read row by row, no transpose).

    Parameters
    ----------
    jw : (2n, k) float32
        The weighted Jacobian (``J_w_t`` transposed).
    ms : (2n,) float32

    Returns
    -------
    (k,) float32
    """
    rn, k = jw.shape
    s = np.zeros((4, k), np.float64)
    r = 0
    while r <= rn - 4:
        for q in range(4):
            x = np.float64(ms[r + q])
            row = jw[r + q]
            acc = s[q]
            for c in range(k):
                acc[c] += np.float64(row[c]) * x
        r += 4
    acc = s[0]
    while r < rn:
        x = np.float64(ms[r])
        row = jw[r]
        for c in range(k):
            acc[c] += np.float64(row[c]) * x
        r += 1
    out = np.empty(k, np.float32)
    for c in range(k):
        out[c] = np.float32(((s[0, c] + s[1, c]) + s[2, c]) + s[3, c])
    return out


@_njit_np
def _rhs_reg_nb(rhs, reg, p):
    """``rhs[6:] - R p`` in double (exact products), one rounding to float32."""
    for j in range(reg.shape[0]):
        rhs[6 + j] = np.float32(np.float64(rhs[6 + j]) - np.float64(reg[j]) * np.float64(p[j]))


# --------------------------------------------------------------------------- helpers
def visible_mask(visible, n: int) -> np.ndarray:
    """``(n,)`` bool mask; ``None`` means every landmark is visible."""
    if visible is None:
        return np.ones(n, dtype=bool)
    if type(visible) is np.ndarray and visible.dtype == np.bool_ and visible.shape == (n,):
        return visible                               # already a mask (never written to)
    v = np.asarray(visible).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"visible has {v.shape[0]} entries, expected {n}")
    return v != 0


@_njit_np
def _expf_nb(x, out):
    """``out = expf(x)`` elementwise over flat float32 arrays (:func:`clnfdiag.numerics.libm.expf`)."""
    for i in range(x.shape[0]):
        out[i] = libm.expf(x[i])


def expf32(x) -> np.ndarray:
    """Single-precision exponential as the C++ ``exp(float)``: glibc's ``expf``.

    OpenFace's KDE table and CCNF sigmoid call ``exp`` on a ``float``, i.e.
    ``expf``, which is not always correctly rounded; :func:`clnfdiag.numerics.libm.expf`
    is that call, with the same bits on every CPU.

    Parameters
    ----------
    x : array_like float32

    Returns
    -------
    numpy.ndarray float32, same shape as ``x``
    """
    x = np.ascontiguousarray(x, dtype=F32)
    out = np.empty(x.shape, F32)
    _expf_nb(x.reshape(-1), out.reshape(-1))
    return out


def kde_exponent(sigma) -> np.float32:
    """The KDE exponent factor ``a = -0.5 / sigma**2`` as NU_RLMS stores it.

    ``sigma`` is a C++ ``float``: ``sigma * sigma`` is a float product, the
    division by the double literal ``-0.5`` happens in double and the result
    is stored in a ``float``.

    Returns
    -------
    numpy.float32
    """
    s = F32(sigma)
    return F32(-0.5 / F64(s * s))


def kde_grid_size(window_size: int) -> int:
    """Number of 0.1-pixel grid positions per axis of the KDE table.

    OpenFace iterates ``x < window_size / 0.1f`` (a float division) and uses
    ``int(window_size / 0.1f + 0.5)`` as the row stride; the two agree for
    every window size used (checked here).

    Returns
    -------
    int
        ``N`` with ``N == 10 * window_size`` for the window sizes OpenFace uses.
    """
    w = int(window_size)
    limit = F32(w) / KDE_STEP                       # float32 division, as in C++
    count = int(np.ceil(F64(limit)))                # ints x with x < limit
    stride = int(np.floor(F64(limit) + 0.5))
    if count != stride:                              # pragma: no cover - never for w <= 99
        raise ValueError(f"inconsistent KDE grid for window size {w}: {count} vs {stride}")
    return stride


# --------------------------------------------------------------------------- KDE table
def kernel_values(dx: np.ndarray, dy: np.ndarray, a: np.float32, window_size: int) -> np.ndarray:
    """``exp(a * ((dy - ii)**2 + (dx - jj)**2))`` as float32, for every response
    cell ``(ii, jj)`` (row, column) and every ``(dx, dy)`` pair.

    dx, dy : (...,) float32. Returns (..., w, w) float32. The squares and their
    sum are float32 operations, the exponential is ``expf`` (:func:`expf32`).
    """
    w = int(window_size)
    cells = np.arange(w, dtype=F32)
    ddy = (dy[..., None] - cells) ** 2                # (..., w) over ii (rows)
    ddx = (dx[..., None] - cells) ** 2                # (..., w) over jj (cols)
    arg = F32(a) * (ddy[..., :, None] + ddx[..., None, :])   # float32 sum and product
    return expf32(arg)


@_njit_np
def _kde_table_nb(grid, a, w):
    """:func:`kernel_values` of every grid pair, compiled: ``table[ix, iy, ii, jj] =
    expf(a * ((g[iy] - ii)² + (g[ix] - jj)²))`` with the same float32 operations
    (difference, square, sum with the row term first, product), then ``expf``."""
    n = grid.shape[0]
    sq = np.empty((n, w), np.float32)                 # (g[i] - c)² per grid point and cell
    for i in range(n):
        for c in range(w):
            d = grid[i] - np.float32(c)
            sq[i, c] = d * d
    table = np.empty((n, n, w, w), np.float32)
    for ix in range(n):
        for iy in range(n):
            for ii in range(w):
                ry = sq[iy, ii]
                for jj in range(w):
                    table[ix, iy, ii, jj] = libm.expf(a * (ry + sq[ix, jj]))
    return table


#: KDE tables kept: every (sigma, window) of the default and wild presets and of the
#: part models (10, about 52 MB in all; a w = 15 table is 20 MB), with room to spare.
KDE_TABLES_KEPT = 16


@functools.lru_cache(maxsize=KDE_TABLES_KEPT)
def _kde_table_cached(sigma32: float, window_size: int) -> np.ndarray:
    n_grid = kde_grid_size(window_size)
    grid = np.arange(n_grid, dtype=F32) * KDE_STEP    # float(x) * 0.1f, in float32
    a = kde_exponent(sigma32)
    table = _kde_table_nb(grid, F32(a), int(window_size))
    table.flags.writeable = False
    return table


def kde_kernel_table(sigma, window_size: int) -> np.ndarray:
    """OpenFace's precalculated KDE kernel on the 0.1-pixel grid.

    For every grid position ``dx = ix * 0.1f``, ``dy = iy * 0.1f``
    (``ix, iy = 0 .. N-1``, ``N = 10 * window_size``) the Gaussian kernel
    ``exp(a * ((dy - ii)**2 + (dx - jj)**2))`` over the response cells, row
    ``ii`` and column ``jj``, with ``a = -0.5 / sigma**2`` (see
    :func:`kde_exponent`). In the C++ this is the ``(N*N, w*w)`` matrix
    ``kde_resp_precalc[w]`` whose row ``ix * N + iy`` is the flattened kernel.

    Cached per ``(float32(sigma), window_size)``. Note that OpenFace caches it
    per window size only, keeping the sigma of the first call: the two agree as
    long as a window size is always used with the same sigma (true for one
    model and preset; the default and wild presets both use sigma 1.5 with
    window 11).

    Parameters
    ----------
    sigma : float
        KDE sigma (rounded to float32 as OpenFace's parameter is a float).
    window_size : int
        Response window size ``w``.

    Returns
    -------
    numpy.ndarray, (N, N, w, w) float32, read-only
        Indexed ``[ix (dx), iy (dy), ii (row, y), jj (column, x)]``.
    """
    return _kde_table_cached(float(F32(sigma)), int(window_size))


# --------------------------------------------------------------------------- offsets
def _mul_2x2_t(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """``points @ mat.T`` as ``cv::Mat`` float gemm does it: float32 inputs,
    products and sum in double, one rounding to float32. (n,2) -> (n,2)."""
    return (np.asarray(points, dtype=F32).astype(F64)
            @ np.asarray(mat, dtype=F32).astype(F64).T).astype(F32)


def window_offsets(current_shape, base_shape, sim_img_to_ref, window_size: int):
    """Landmark positions inside the response windows (reference frame).

    ``offsets = (current - base) @ sim_img_to_ref.T`` with ``current - base``
    in float32 and the 2x2 product accumulated in double (OpenCV gemm), then
    the integer ``(w - 1) // 2`` is added in float32.

    Parameters
    ----------
    current_shape : (n, 2) float32
        Landmarks at the start of the iteration.
    base_shape : (n, 2) float32
        Landmarks around which the responses were computed (start of the pass).
    sim_img_to_ref : (2, 2) float32
        Image -> reference similarity of the pass.
    window_size : int

    Returns
    -------
    dxs, dys : (n,) float32
    """
    cur = np.ascontiguousarray(current_shape, dtype=F32)
    base = np.ascontiguousarray(base_shape, dtype=F32)
    half = F32((int(window_size) - 1) // 2)
    if cur.ndim == 2 and cur.shape[1] == 2 and base.shape == cur.shape:
        return _window_offsets_nb(cur, base, np.ascontiguousarray(sim_img_to_ref, dtype=F32)
                                  .reshape(2, 2), half)
    diff = cur - base
    off = _mul_2x2_t(diff, sim_img_to_ref)
    return off[:, 0] + half, off[:, 1] + half


# --------------------------------------------------------------------------- mean-shift
def clamp_to_window(d: np.ndarray, window_size: int) -> np.ndarray:
    hi = F32(window_size) - KDE_STEP                 # float32 ``w - 0.1f``
    return np.minimum(np.maximum(d, F32(0)), hi)


def _grid_index(d: np.ndarray) -> np.ndarray:
    """``int(d / 0.1f + 0.5)``: float32 quotient, the ``+ 0.5`` in double, truncation."""
    q = (d / KDE_STEP).astype(F64)
    return np.floor(q + 0.5).astype(np.intp)


_CELL_INDEX_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _cell_index(w: int) -> tuple[np.ndarray, np.ndarray]:
    """(jj, ii) float32 of every cell of a w x w window in row-major order."""
    got = _CELL_INDEX_CACHE.get(w)
    if got is None:
        cols = np.tile(np.arange(w, dtype=F32), w)       # jj for every cell (x)
        rows = np.repeat(np.arange(w, dtype=F32), w)     # ii for every cell (y)
        got = _CELL_INDEX_CACHE[w] = (cols, rows)
    return got


def mean_shift(responses, dxs, dys, visible, sigma) -> np.ndarray:
    """KDE mean-shift per landmark in the reference frame.

    As ``NonVectorisedMeanShift_precalc_kde``: ``dx, dy`` are clamped to
    ``[0, w - 0.1]``, the kernel row of the 0.1-px grid nearest to them
    (``int(d / 0.1 + 0.5)``) weights the response, and the mean-shift is the
    weighted centroid minus the clamped ``(dx, dy)``. All sums are sequential
    float32 accumulations, as in the C++ loop.

    Parameters
    ----------
    responses : (n, w, w) float32
        Final (post-shift) response maps, row-major (row = y).
    dxs, dys : (n,) float32
        Positions inside the windows (see :func:`window_offsets`).
    visible : (n,) bool or int, or None
        Landmarks with a patch expert in the current view; others get 0.
    sigma : float
        KDE sigma of the pass.

    Returns
    -------
    (n, 2) float32
        ``(msx, msy)`` per landmark, reference frame.
    """
    resp = np.asarray(responses, dtype=F32)
    n, w, w2 = resp.shape
    if w != w2:
        raise ValueError(f"response maps must be square, got {resp.shape}")
    vis = visible_mask(visible, n)
    out = np.zeros((n, 2), dtype=F32)
    if not vis.any():
        return out
    dxs32 = np.ascontiguousarray(dxs, dtype=F32).reshape(-1)
    dys32 = np.ascontiguousarray(dys, dtype=F32).reshape(-1)
    cols, rows = _cell_index(w)
    if _mean_shift_grid_nb(np.ascontiguousarray(resp), np.flatnonzero(vis), dxs32, dys32,
                           kde_kernel_table(sigma, w), cols, rows, F32(w) - KDE_STEP, out):
        return out
    # A non-finite offset: numpy's clamp and division rules, same table and sums.
    dx = clamp_to_window(np.asarray(dxs, dtype=F32)[vis], w)
    dy = clamp_to_window(np.asarray(dys, dtype=F32)[vis], w)
    total, mx, my = kde_sums(resp, np.flatnonzero(vis), kde_kernel_table(sigma, w),
                             _grid_index(dx), _grid_index(dy))
    with np.errstate(divide="ignore", invalid="ignore"):
        out[vis, 0] = mx / total - dx
        out[vis, 1] = my / total - dy
    return out


def kde_sums(resp: np.ndarray, vis_idx: np.ndarray, table: np.ndarray, ix: np.ndarray,
             iy: np.ndarray) -> np.ndarray:
    """OpenFace's three sequential float32 KDE sums per visible landmark.

    Parameters
    ----------
    resp : (n, w, w) float32
    vis_idx : (m,) int
        The landmarks to sum.
    table : (A, B, w, w) float32
        Kernels; landmark ``t`` uses ``table[ix[t], iy[t]]``.
    ix, iy : (m,) int

    Returns
    -------
    (3, m) float32
        ``sum v``, ``sum v * column``, ``sum v * row`` with ``v = resp * kernel``.
    """
    w = resp.shape[1]
    cols, rows = _cell_index(w)
    sums = np.empty((3, vis_idx.shape[0]), dtype=F32)
    _kde_sums_grid_nb(np.ascontiguousarray(resp), vis_idx, table, ix, iy, cols, rows, sums)
    return sums


def to_image_frame(mean_shifts_ref, sim_ref_to_img, visible=None) -> np.ndarray:
    """Map reference-frame mean-shifts to the image frame.

    ``mean_shifts_ref @ sim_ref_to_img.T`` (float32 inputs, double
    accumulation, float32 result, as the OpenCV product in NU_RLMS), then the
    invisible landmarks are set to 0.

    Parameters
    ----------
    mean_shifts_ref : (n, 2) float32
    sim_ref_to_img : (2, 2) float32
    visible : (n,) bool or int, or None

    Returns
    -------
    (n, 2) float32
    """
    ms = np.ascontiguousarray(mean_shifts_ref, dtype=F32)
    vis = visible_mask(visible, ms.shape[0])
    if ms.ndim == 2 and ms.shape[1] == 2:
        return _to_image_frame_nb(ms, np.ascontiguousarray(sim_ref_to_img, dtype=F32)
                                  .reshape(2, 2), vis)
    ms = _mul_2x2_t(ms, sim_ref_to_img)
    ms[~vis] = 0
    return ms


# --------------------------------------------------------------------------- weights
def weight_matrix_diag(patch_confidences, visible, weight_factor) -> np.ndarray:
    """Diagonal of the NU-RLMS weight matrix (``GetWeightMatrix``).

    Identity when ``weight_factor <= 0`` (OpenFace tests ``> 0``). Otherwise
    each landmark's patch confidence (a double in the model, stored into the
    float matrix) times ``weight_factor`` in float32, on its x row and its y
    row. Like the C++, visibility does not enter here: the same matrix serves
    the rigid and the non-rigid phase (no phase dependence), and invisible
    landmarks are removed later by zeroing their Jacobian rows and
    mean-shifts (see :func:`solve_update`); their experts have confidence 0
    in the model files anyway.

    Parameters
    ----------
    patch_confidences : (n,) float64 or None
        ``patch_confidence`` of each landmark's expert for the pass's scale and
        view (0 for experts missing in the view). May be None when
        ``weight_factor <= 0`` if ``visible`` is given.
    visible : (n,) array or None
        Only used for its length when ``patch_confidences`` is None.
    weight_factor : float
        Per-pass weight factor (a C++ float).

    Returns
    -------
    (2n,) float32
        x rows then y rows.
    """
    wf = F32(weight_factor)
    if not wf > 0:
        sized = patch_confidences if patch_confidences is not None else visible
        if sized is None:
            raise ValueError("pass patch_confidences or visible so that n is known")
        n = np.asarray(sized).reshape(-1).shape[0]
        return np.ones(2 * n, dtype=F32)
    conf = np.asarray(patch_confidences, dtype=F64).reshape(-1).astype(F32)
    w = conf * wf                                    # float32 product (convertTo with scale)
    return np.concatenate([w, w])


# --------------------------------------------------------------------------- solve
def regularisation_diag(eigen_values, reg_factor) -> np.ndarray:
    """Non-rigid part of the regularisation diagonal, ``reg_factor / eigenvalue``,
    divided in float32 as ``cv::Mat(reg_factor / E)`` does.

    Returns
    -------
    (m,) float32
    """
    return F32(reg_factor) / np.asarray(eigen_values, dtype=F32).reshape(-1)


def regularisation_vector(eigen_values, reg_factor, rigid: bool) -> np.ndarray:
    """The diagonal of NU-RLMS's ``R``: zeros for the 6 global parameters, then
    :func:`regularisation_diag` (the non-rigid phase; none at all for the rigid one).

    Returns
    -------
    (6,) or (6 + m,) float32
    """
    m = 0 if rigid else np.asarray(eigen_values).reshape(-1).shape[0]
    reg = np.zeros(6 + m, dtype=F32)
    if not rigid:
        reg[6:] = regularisation_diag(eigen_values, reg_factor)[:m]
    return reg


def hessian_sgemm(jw: np.ndarray, j: np.ndarray, reg_diag: np.ndarray | None = None) -> np.ndarray:
    """``J_w_t @ J + R`` as OpenFace's ``sgemm_`` (OpenBLAS's SkylakeX small kernel) computes it.

    OpenFace calls ``sgemm_(N, N, k, k, 2n, J, k, J_w_t, 2n, 1, H, k)`` with H
    holding R, so the kernel's row index is the *column* of the row-major
    Hessian: columns below ``lane_row_start(k, 2n)`` are float32 FMA chains
    over the 2n rows in order, the others (k = 6: all; k = 40: 32-39; k = 38:
    32-37) sum in 16 FMA lanes reduced by one of two addition trees; then
    ``R + sum`` rounded once. See :func:`clnfdiag.numerics.sgemm.hessian_nb`.
    The result is not exactly symmetric for k = 38 or 40 (a chain above the
    diagonal, lanes below it). Bit-identical to the C++ on the goldens.

    Parameters
    ----------
    jw : (2n, k) float32
        Weighted Jacobian ``W J`` (i.e. ``J_w_t.T``).
    j : (2n, k) float32
        Jacobian.
    reg_diag : (k,) float32, optional
        Diagonal of R (zeros or None for the rigid phase).

    Returns
    -------
    (k, k) float32
    """
    j = np.ascontiguousarray(j, dtype=F32)
    jw = np.ascontiguousarray(jw, dtype=F32)
    k = j.shape[1]
    reg = (np.zeros(k, dtype=F32) if reg_diag is None
           else np.ascontiguousarray(reg_diag, dtype=F32).reshape(k))
    return hessian_nb(j, jw, reg)


def cholesky_solve_opencv(a, b):
    """Solve ``a x = b`` as ``cv::solve(a, b, x, DECOMP_CHOLESKY)`` for float32.

    Port of OpenCV's small-matrix Cholesky (used below 100 x 100): the factor
    is stored in float with the reciprocal of its diagonal, every accumulator
    is a double, the off-diagonal products ``L[i,k] * L[j,k]`` and ``L * y``
    are float products, the diagonal squares double ones. Columns are computed
    in order, all rows of a column at once (each entry gets the same inputs as
    in OpenCV's row-by-row loop). The double sums are pairwise instead of
    sequential: that changes nothing at float32 output precision on the
    golden cases.

    Parameters
    ----------
    a : (k, k) float32, symmetric positive definite (lower triangle used)
    b : (k,) float32

    Returns
    -------
    x : (k,) float32
        All zeros when a pivot falls below float epsilon (not positive
        definite), as ``cv::solve`` leaves it then.
    ok : bool
    """
    a = np.asarray(a, dtype=F32)
    a64 = a.astype(F64)
    k = a.shape[0]
    L = np.zeros((k, k), dtype=F32)
    eps = F64(np.finfo(F32).eps)
    for j in range(k):
        lj = L[j, :j]
        lj64 = lj.astype(F64)
        s = a64[j, j] - lj64 @ lj64
        if not s >= eps:
            return np.zeros(k, dtype=F32), False
        d = F32(1.0 / np.sqrt(s))
        L[j, j] = d
        if j + 1 < k:
            s_col = a64[j + 1:, j] - (L[j + 1:, :j] * lj).astype(F64).sum(axis=1)
            L[j + 1:, j] = s_col * F64(d)            # rounded to float on store
    diag = np.diag(L).astype(F64)
    x = np.asarray(b, dtype=F32).reshape(-1).copy()
    for i in range(k):                               # L y = b
        x[i] = (F64(x[i]) - (L[i, :i] * x[:i]).astype(F64).sum()) * diag[i]
    for i in range(k - 1, -1, -1):                   # L^T x = y
        x[i] = (F64(x[i]) - (L[i + 1:, i] * x[i + 1:]).astype(F64).sum()) * diag[i]
    return x, True


def cholesky_solve(a, b):
    """Solve ``a x = b`` as OpenCV's own ``cv::solve(..., DECOMP_CHOLESKY)``.

    :func:`clnfdiag.numerics.cholesky.solve_cholesky`: OpenCV's small-matrix
    Cholesky (``CholImpl<float>``, sequential double sums) in compiled code,
    bit-identical to ``cv2.solve`` (and to :func:`cholesky_solve_opencv`, the
    Python port kept as the documented reference, on the golden cases'
    Hessians) without calling OpenCV.
    Only the lower triangle of ``a`` is read; on a non positive definite
    ``a`` the solution is all zeros, as the port returns.

    Parameters
    ----------
    a : (k, k) float32
    b : (k,) float32

    Returns
    -------
    x : (k,) float32
    ok : bool
    """
    x, ok = solve_cholesky(np.asarray(a, dtype=F32), np.asarray(b, dtype=F32).reshape(-1))
    return x, ok


def solve_update(J, w_diag, mean_shifts, params_local, eigen_values, reg_factor,
                 rigid: bool, visible=None) -> np.ndarray:
    """One NU-RLMS parameter update ``delta_p`` (before UpdateModelParameters).

    ``(J^T W J + R) delta_p = J^T W ms - R p`` with, as in OpenFace:

    * ``J_w_t = (J * w).T`` (float products); rows of invisible landmarks are
      zeroed in both ``J`` and ``J_w_t`` and their mean-shifts are 0;
    * ``J^T W ms`` accumulated in double and rounded to float (OpenCV gemm);
    * ``R = diag(0 x 6, reg_factor / eigenvalues)`` for the non-rigid phase,
      all zeros for the rigid one; ``R p`` is subtracted from the non-rigid
      rows of the right-hand side in double with one rounding to float (an
      OpenCV gemm expression with beta = 1: near convergence the two terms
      cancel to 1e-5 of their size, so a float32 subtraction would cost up
      to 5e-4 of the update);
    * the Hessian as OpenBLAS sgemm (:func:`hessian_sgemm`);
    * OpenCV's float Cholesky solve (:func:`cholesky_solve`, ``cv::solve`` emulated).

    Parameters
    ----------
    J : (2n, k) float32
        Jacobian, rows x0..x(n-1) then y0..y(n-1); k = 6 (rigid) or 6 + m.
    w_diag : (2n,) float32
        Weight-matrix diagonal (:func:`weight_matrix_diag`).
    mean_shifts : (n, 2) float32
        Image-frame mean-shifts (invisible ones are zeroed here anyway).
    params_local : (m,) float32
        Local parameters at the start of the iteration (unused when rigid).
    eigen_values : (m,) float32
        PDM eigenvalues.
    reg_factor : float
        Regularisation factor of the pass (a C++ float).
    rigid : bool
        Rigid phase: k = 6, no regularisation.
    visible : (n,) bool or int, optional
        None means all visible.

    Returns
    -------
    (k,) float32
        Zeros if the Hessian is not positive definite (as ``cv::solve``).
    """
    k = np.shape(J)[1]
    solver = UpdateSolver(w_diag, visible, np.asarray(eigen_values)[:max(k - 6, 0)], reg_factor,
                          rigid)
    return solver.solve(J, mean_shifts, params_local)


class UpdateSolver:
    """The NU-RLMS normal equations of one phase, with what its iterations share fixed once.

    Weights, visibility and the regulariser do not change within a phase;
    :meth:`solve` then does the per-iteration part of :func:`solve_update`.

    Parameters
    ----------
    w_diag : (2n,) float32
        Weight-matrix diagonal (:func:`weight_matrix_diag`).
    visible : (n,) bool or int, or None
    eigen_values : (m,) float32
        PDM eigenvalues (ignored when ``rigid``).
    reg_factor : float
    rigid : bool
    """

    def __init__(self, w_diag, visible, eigen_values, reg_factor, rigid: bool):
        w = np.asarray(w_diag, dtype=F32).reshape(-1)
        self.unit_w = bool(np.all(w == 1))            # J * 1 == J: J^T J, computed half
        self.w_col = w[:, None]
        vis = visible_mask(visible, w.shape[0] // 2)
        self.invisible = ~np.concatenate([vis, vis])
        self.any_invisible = bool(self.invisible.any())
        self.reg = regularisation_vector(eigen_values, reg_factor, rigid)
        self.subtract_reg = not rigid

    def solve(self, J, mean_shifts, params_local) -> np.ndarray:
        """``delta_p`` for one iteration (see :func:`solve_update`).

        Parameters
        ----------
        J : (2n, k) float32
            Jacobian; k must be 6 (rigid) or 6 + m.
        mean_shifts : (n, 2) float32
            Image-frame mean-shifts.
        params_local : (m,) float32

        Returns
        -------
        (k,) float32
        """
        J = np.asarray(J, dtype=F32)
        ms = np.asarray(mean_shifts, dtype=F32)
        if J.shape != (2 * ms.shape[0], self.reg.shape[0]):
            raise ValueError(f"Jacobian is {J.shape}, expected {(2 * ms.shape[0], self.reg.shape[0])}")
        ms_vec = np.concatenate([ms[:, 0], ms[:, 1]])
        if self.any_invisible:
            J = J.copy()
            J[self.invisible] = 0
            ms_vec[self.invisible] = 0
        jw = J if self.unit_w else J * self.w_col    # float products; rows = columns of J_w_t
        # ``J_w_t * mean_shifts``: OpenCV's own gemm (J_w_t has fewer than 100 rows),
        # double sums over four accumulators, one rounding per element (:func:`jtw_ms_nb`).
        rhs = jtw_ms_nb(np.ascontiguousarray(jw), ms_vec)
        if self.subtract_reg:
            # ``J_w_t_m - R * p`` is one OpenCV gemm expression (alpha -1, beta 1):
            # the exact products and the difference in double, one rounding.
            _rhs_reg_nb(rhs, self.reg[6:], np.asarray(params_local, dtype=F32).reshape(-1))
        dp, _ok = cholesky_solve(hessian_sgemm(jw, J, self.reg), rhs)
        return dp


# --------------------------------------------------------------------------- likelihood
def landmark_likelihoods(responses, dxs, dys, visible, sigma) -> np.ndarray:
    """Per-landmark KDE likelihood at ``(dxs, dys)``, as NU_RLMS computes it
    after the last iteration of the last pass's non-rigid phase.

    The C++ uses the ``dxs, dys`` of the last iteration that computed a
    mean-shift (not recomputed from the final parameters), unclamped and
    without the 0.1-px grid: ``sum_ij resp[i,j] * exp(-0.5 * d2 / sigma**2)``
    where ``d2`` is a float32 sum of float32 squares, the exponential is in
    double, each term is rounded to float and the sum is a sequential float32
    accumulation.

    Parameters
    ----------
    responses : (n, w, w) float32
    dxs, dys : (n,) float32
    visible : (n,) bool or int, or None
    sigma : float

    Returns
    -------
    (n,) float32
        Invisible landmarks get ``-1e8`` (OpenFace's fill value).
    """
    resp = np.asarray(responses, dtype=F32)
    n, w, _ = resp.shape
    vis = visible_mask(visible, n)
    out = np.full(n, F32(-1e8), dtype=F32)
    if not vis.any():
        return out
    dx = np.asarray(dxs, dtype=F32)[vis]
    dy = np.asarray(dys, dtype=F32)[vis]
    s = F32(sigma)
    out[vis] = _likelihood_sums_nb(np.ascontiguousarray(resp[vis]), dx, dy, F64(s * s))
    return out


@_njit_np
def _likelihood_sums_nb(resp, dx, dy, s2):
    """Sequential float32 sums of ``float(resp * exp(-0.5 * d2 / s2))`` per map: ``d2`` a
    float32 sum of float32 squares, the exponential glibc's double ``exp``."""
    m, w, _ = resp.shape
    out = np.empty(m, dtype=np.float32)
    for i in range(m):
        t = np.float32(0)
        for ii in range(w):
            vx = (dy[i] - np.float32(ii)) * (dy[i] - np.float32(ii))
            for jj in range(w):
                vy = (dx[i] - np.float32(jj)) * (dx[i] - np.float32(jj))
                k = libm.exp(-0.5 * np.float64(vx + vy) / s2)
                t = t + np.float32(np.float64(resp[i, ii, jj]) * k)
        out[i] = t
    return out


def model_likelihood(landmark_lhoods, visible=None) -> np.float32:
    """Model log-likelihood returned by NU_RLMS: mean over visible landmarks
    of ``log(lhood + 1e-8)``.

    OpenFace adds each double log to a float accumulator (rounding to float
    after every addition, in landmark order) and divides by the number of
    visible landmarks in double, storing a float. This runs once per fit; the
    short loop over visible landmarks reproduces that rounding.

    Parameters
    ----------
    landmark_lhoods : (n,) float32
        From :func:`landmark_likelihoods`.
    visible : (n,) bool or int, or None

    Returns
    -------
    numpy.float32
    """
    lh = np.ascontiguousarray(landmark_lhoods, dtype=F32).reshape(-1)
    vis = np.ascontiguousarray(visible_mask(visible, lh.shape[0]))
    return F32(_model_likelihood_nb(lh, vis))


@_njit_np
def _model_likelihood_nb(lh, vis):
    """:func:`model_likelihood`: ``float(acc + log(double(v) + 1e-8))`` landmark by landmark
    (glibc's ``log``), then ``double(acc) / count`` (NaN or inf for no visible landmark)."""
    acc = np.float32(0)
    count = 0
    for i in range(lh.shape[0]):
        if vis[i]:
            acc = np.float32(np.float64(acc) + libm.log(np.float64(lh[i]) + 1e-8))
            count += 1
    return np.float32(np.float64(acc) / np.float64(count))


def shape_change_norm(shape, previous) -> float:
    """``cv::norm(shape, previous)``: L2 norm of the 2n-vector difference.

    Differences are taken in float32, squared and summed in double, as
    OpenCV's ``normDiffL2_32f``.

    Parameters
    ----------
    shape, previous : (n, 2) float32

    Returns
    -------
    float
        float64 value (the golden ``shape_change_norm``).
    """
    d = np.asarray(shape, dtype=F32) - np.asarray(previous, dtype=F32)   # float32 differences
    return float(norm_l2_f32(np.concatenate([d[:, 0], d[:, 1]])))       # OpenFace's (x..., y...)
