"""OpenCV 4.6's own small-matrix linear algebra, operation for operation (compiled, CPU-independent).

The goldens' OpenCV (Debian 4.6, built with LAPACK) runs these calls on matrices
too small for its LAPACK/BLAS hooks (``HAL_SVD_SMALL_MATRIX_THRESH`` 25 rows,
``HAL_GEMM_SMALL_MATRIX_THRESH`` 100 rows of A), i.e. in OpenCV's own C++:

* ``cv::SVD::compute`` -> one-sided Jacobi SVD (``JacobiSVDImpl_`` in
  ``modules/core/src/lapack.cpp``) on the transposed matrix, in the matrix's
  own type with float64 column norms and rotation angles
  (:func:`svd_f32`, :func:`svd_f64`);
* ``cv::gemm`` -> ``gemmImpl`` of ``matmul.simd.hpp``, compiled for the
  baseline only in LAPACK builds (``CV_GEMM_BASELINE_ONLY``): with flags = 0
  and an inner size of 2-4 an unrolled float32 product, otherwise
  ``GEMMSingleMul`` summing exact float64 products (four interleaved
  accumulators when B is used transposed) and rounding once
  (:func:`gemm_f32`);
* ``cv::determinant`` of 2x2 / 3x3 float32 matrices (float64 cofactors);
* ``Matx`` products (``Matx_MatMulOp``: the sum starts at 0 in the element type);
* ``cv::mean`` of a float32 column, ``cv::sum`` of continuous float32 data
  (the AVX2 kernel the goldens' machine dispatched to, lane by lane) and
  ``cv::norm(NORM_L2)`` of a float32 vector.

Every operation here is one IEEE float32/float64 operation in a fixed order
(numba, no fastmath, so nothing is contracted into an FMA or reassociated):
the results are the same on every CPU and equal the library's bits. None of
these OpenCV paths uses FMA in the golden build (baseline SSE2/SSE3 code, or
a fused multiply-add with a zero addend, which is exact).

Sizes beyond OpenCV's own path (gemm with 100+ rows in A, block gemm,
SVD with 25+ rows) are rejected: there the library hands over to BLAS/LAPACK.
"""
from __future__ import annotations

import math

import numpy as np

from .fma import njit_np

__all__ = ["svd_f32", "svd_f64", "gemm_f32", "det2", "det3", "matx_mul", "mean_col_f32",
           "sum_f32", "norm_l2_f32", "GEMM_1_T", "GEMM_2_T", "GEMM_3_T"]

#: ``cv::GEMM_1_T``, ``GEMM_2_T``, ``GEMM_3_T``.
GEMM_1_T, GEMM_2_T, GEMM_3_T = 1, 2, 4

_FLT_EPS2 = np.float32(2.0 ** -22)            # FLT_EPSILON * 2
_FLT_MIN = float(np.finfo(np.float32).tiny)
_DBL_EPS10 = float(np.finfo(np.float64).eps) * 10.0
_DBL_MIN = float(np.finfo(np.float64).tiny)
_RNG_COEFF = np.uint64(4164903690)            # CV_RNG_COEFF
_MASK32 = np.uint64(0xFFFFFFFF)


# ----------------------------------------------------------------- SVD
@njit_np
def _hypot64(a, b):
    """OpenCV's ``hypot`` template (lapack.cpp) in float64: the larger magnitude
    times ``sqrt(1 + ratio^2)``."""
    a = abs(a)
    b = abs(b)
    if a > b:
        b /= a
        return a * math.sqrt(1.0 + b * b)
    if b > 0:
        a /= b
        return b * math.sqrt(1.0 + a * a)
    return 0.0


@njit_np
def _rng_next(state):
    """``cv::RNG::next`` (multiply-with-carry): new state and the 32-bit output."""
    state = (state & _MASK32) * _RNG_COEFF + (state >> np.uint64(32))
    return state, state & _MASK32


@njit_np
def _jacobi_svd(at, vt, m, n, n1, minval, eps, tmp):
    """``JacobiSVDImpl_`` on the rows of ``at`` (n rows of length m, modified in
    place: it ends as the left singular vectors), ``vt`` (n x n, filled).

    ``tmp`` is a 1-element array of the element type: assigning to it rounds a
    float64 value to that type (OpenCV's ``(_Tp)`` casts); ``eps`` has the
    element type too. Returns the singular values (float64, before the cast).
    """
    w = np.empty(n)
    max_iter = max(m, 30)
    for i in range(n):
        sd = 0.0
        for k in range(m):
            t = at[i, k]
            sd += np.float64(t) * t
        w[i] = sd
        for k in range(n):
            vt[i, k] = 0
        vt[i, i] = 1
    for _it in range(max_iter):
        changed = False
        for i in range(n - 1):
            for j in range(i + 1, n):
                a = w[i]
                b = w[j]
                p = 0.0
                for k in range(m):
                    p += np.float64(at[i, k]) * at[j, k]
                if abs(p) <= eps * math.sqrt(a * b):
                    continue
                p *= 2.0
                beta = a - b
                gamma = _hypot64(p, beta)
                if beta < 0:
                    delta = (gamma - beta) * 0.5
                    tmp[0] = math.sqrt(delta / gamma)
                    s = tmp[0]
                    tmp[0] = p / (gamma * s * 2.0)
                    c = tmp[0]
                else:
                    tmp[0] = math.sqrt((gamma + beta) / (gamma * 2.0))
                    c = tmp[0]
                    tmp[0] = p / (gamma * c * 2.0)
                    s = tmp[0]
                a = 0.0
                b = 0.0
                for k in range(m):
                    x0 = at[i, k]
                    x1 = at[j, k]
                    t0 = c * x0 + s * x1
                    t1 = -s * x0 + c * x1
                    at[i, k] = t0
                    at[j, k] = t1
                    a += np.float64(t0) * t0
                    b += np.float64(t1) * t1
                w[i] = a
                w[j] = b
                changed = True
                for k in range(n):
                    x0 = vt[i, k]
                    x1 = vt[j, k]
                    vt[i, k] = c * x0 + s * x1
                    vt[j, k] = -s * x0 + c * x1
        if not changed:
            break
    for i in range(n):
        sd = 0.0
        for k in range(m):
            t = at[i, k]
            sd += np.float64(t) * t
        w[i] = math.sqrt(sd)
    for i in range(n - 1):
        j = i
        for k in range(i + 1, n):
            if w[j] < w[k]:
                j = k
        if i != j:
            w[i], w[j] = w[j], w[i]
            for k in range(m):
                at[i, k], at[j, k] = at[j, k], at[i, k]
            for k in range(n):
                vt[i, k], vt[j, k] = vt[j, k], vt[i, k]
    state = np.uint64(0x12345678)
    for i in range(n1):
        sd = w[i] if i < n else 0.0
        ii = 0
        while ii < 100 and sd <= minval:
            # A zero singular value: a pseudo-random unit vector orthogonal to the
            # previous ones (OpenCV's RNG(0x12345678) sequence).
            tmp[0] = 1.0 / m
            val0 = tmp[0]
            for k in range(m):
                state, r = _rng_next(state)
                at[i, k] = val0 if (r & np.uint64(256)) != 0 else -val0
            for _r in range(2):
                for j in range(i):
                    sd = 0.0
                    for k in range(m):
                        sd += at[i, k] * at[j, k]
                    tmp[0] = 0.0
                    asum = tmp[0]
                    for k in range(m):
                        tmp[0] = at[i, k] - sd * at[j, k]
                        t = tmp[0]
                        at[i, k] = t
                        asum += abs(t)
                    tmp[0] = 100.0
                    lim = eps * tmp[0]                # float * int in the element type
                    tmp[0] = 1.0
                    one = tmp[0]
                    if asum > lim:
                        asum = one / asum
                    else:
                        asum = one - one
                    for k in range(m):
                        at[i, k] *= asum
            sd = 0.0
            for k in range(m):
                t = at[i, k]
                sd += np.float64(t) * t
            sd = math.sqrt(sd)
            ii += 1
        tmp[0] = (1.0 / sd) if sd > minval else 0.0
        s = tmp[0]
        for k in range(m):
            at[i, k] *= s
    return w


@njit_np
def _svd_compute(src, eps, minval):
    """``cv::SVD::compute(src, w, u, vt)`` (no FULL_UV) for the element type of ``src``."""
    rows, cols = src.shape
    trans = rows < cols
    m, n = (cols, rows) if trans else (rows, cols)
    at = np.empty((n, m), dtype=src.dtype)
    if trans:
        for i in range(n):
            for k in range(m):
                at[i, k] = src[i, k]
    else:
        for i in range(n):
            for k in range(m):
                at[i, k] = src[k, i]
    vt = np.empty((n, n), dtype=src.dtype)
    tmp = np.empty(1, dtype=src.dtype)
    w64 = _jacobi_svd(at, vt, m, n, n, minval, eps, tmp)
    w = np.empty(n, dtype=src.dtype)
    for i in range(n):
        w[i] = w64[i]
    if trans:
        return w, vt.T.copy(), at
    return w, at.T.copy(), vt


@njit_np
def svd_f32(a):
    """``cv::SVD::compute`` of a small float32 matrix (fewer than 25 rows and columns).

    Returns
    -------
    w : (k,) float32, descending; u : (rows, k) float32; vt : (k, cols) float32
        with ``k = min(rows, cols)``, as ``cv2.SVDecomp`` returns them.
    """
    if a.shape[0] >= 25 or a.shape[1] >= 25:
        raise ValueError("svd_f32: OpenCV hands matrices with 25+ rows to LAPACK")
    return _svd_compute(a, _FLT_EPS2, _FLT_MIN)


@njit_np
def svd_f64(a):
    """``cv::SVD::compute`` of a small float64 matrix (as :func:`svd_f32`; eps = 10 DBL_EPSILON)."""
    if a.shape[0] >= 25 or a.shape[1] >= 25:
        raise ValueError("svd_f64: OpenCV hands matrices with 25+ rows to LAPACK")
    return _svd_compute(a, _DBL_EPS10, _DBL_MIN)


# ----------------------------------------------------------------- gemm
@njit_np
def _op(a, trans, i, k):
    return a[k, i] if trans else a[i, k]


@njit_np
def gemm_f32(a, b, alpha, c, beta, flags):
    """``cv::gemm(a, b, alpha, c, beta, flags)`` for float32 matrices on OpenCV's own path.

    ``D = alpha op(a) op(b) + beta op(c)``; pass an empty ``(0, 0)`` float32 array
    for no ``c``. ``alpha`` and ``beta`` are rounded to float32 first
    (``hal::gemm32f`` takes floats); ``c`` is ignored when ``beta == 0``.

    * ``flags == 0`` and inner size 2, 3 or 4 equal to one of the result's
      sizes: each element a float32 sum of float32 products, left to right,
      then ``float(t*alpha + c*beta)`` in float64;
    * otherwise: float64 sums of exact products over the inner index from
      zero, rounded once after ``*alpha`` (and ``+ c*beta``); when ``b`` is
      used transposed (GEMM_2_T, or a one-column / inner-size-1 product, which
      OpenCV turns into that case) the inner index is split over four
      accumulators ``k mod 4`` (the tail goes to the first), summed in order.
    """
    al = np.float64(np.float32(alpha))
    be = np.float64(np.float32(beta))
    t1 = (flags & GEMM_1_T) != 0
    t2 = (flags & GEMM_2_T) != 0
    t3 = (flags & GEMM_3_T) != 0
    ar, ac = a.shape
    if ar >= 100:
        raise ValueError("gemm_f32: OpenCV hands A with 100+ rows to BLAS")
    drows, ln = (ac, ar) if t1 else (ar, ac)
    dcols = b.shape[0] if t2 else b.shape[1]
    if (b.shape[1] if t2 else b.shape[0]) != ln:
        raise ValueError("gemm_f32: inner sizes differ")
    has_c = be != 0.0 and c.shape[0] > 0
    if has_c and ((c.shape[1], c.shape[0]) if t3 else c.shape) != (drows, dcols):
        raise ValueError("gemm_f32: C has the wrong size")
    d = np.empty((drows, dcols), dtype=np.float32)
    zc = np.float64(np.float32(0)) * be           # zerof[k] * beta when there is no C
    if flags == 0 and 2 <= ln <= 4 and (ln == dcols or ln == drows):
        # OpenCV walks rows or columns first depending on the shape; every element is
        # computed on its own, so the walking order does not change a bit.
        for i in range(drows):
            for j in range(dcols):
                t = a[i, 0] * b[0, j]
                for k in range(1, ln):
                    t = t + a[i, k] * b[k, j]
                cc = np.float64(c[i, j]) * be if has_c else zc
                d[i, j] = np.float64(t) * al + cc
        return d
    if not (((drows <= 64 or dcols <= 64) and ln <= 10000) or ln <= 10
            or (dcols <= 128 and drows <= 128 and ln <= 128)):
        raise ValueError("gemm_f32: block-wise gemm is not ported")
    four = t2 or dcols == 1 or ln == 1
    for i in range(drows):
        for j in range(dcols):
            if ln == 1:
                s = np.float64(_op(a, t1, i, 0)) * al * np.float64(_op(b, t2, 0, j))
            elif four:
                s0 = 0.0
                s1 = 0.0
                s2 = 0.0
                s3 = 0.0
                k = 0
                while k <= ln - 4:
                    s0 += np.float64(_op(a, t1, i, k)) * _op(b, t2, k, j)
                    s1 += np.float64(_op(a, t1, i, k + 1)) * _op(b, t2, k + 1, j)
                    s2 += np.float64(_op(a, t1, i, k + 2)) * _op(b, t2, k + 2, j)
                    s3 += np.float64(_op(a, t1, i, k + 3)) * _op(b, t2, k + 3, j)
                    k += 4
                while k < ln:
                    s0 += np.float64(_op(a, t1, i, k)) * _op(b, t2, k, j)
                    k += 1
                s = (s0 + s1 + s2 + s3) * al
            else:
                s = 0.0
                for k in range(ln):
                    s += np.float64(_op(a, t1, i, k)) * _op(b, t2, k, j)
                s = s * al
            if has_c:
                d[i, j] = s + np.float64(_op(c, t3, i, j)) * be
            else:
                d[i, j] = s
    return d


# ----------------------------------------------------------------- small helpers
@njit_np
def det2(m):
    """``cv::determinant`` of a 2x2 float32 matrix: float64 products, one subtraction."""
    return np.float64(m[0, 0]) * m[1, 1] - np.float64(m[0, 1]) * m[1, 0]


@njit_np
def det3(m):
    """``cv::determinant`` of a 3x3 float32 matrix: float64 cofactor expansion along row 0."""
    return (m[0, 0] * (np.float64(m[1, 1]) * m[2, 2] - np.float64(m[1, 2]) * m[2, 1])
            - m[0, 1] * (np.float64(m[1, 0]) * m[2, 2] - np.float64(m[1, 2]) * m[2, 0])
            + m[0, 2] * (np.float64(m[1, 0]) * m[2, 1] - np.float64(m[1, 1]) * m[2, 0]))


@njit_np
def matx_mul(a, b):
    """``Matx * Matx`` (``Matx_MatMulOp``): each element summed from zero, in the element type."""
    r, l = a.shape
    c = b.shape[1]
    out = np.empty((r, c), dtype=a.dtype)
    zero = np.zeros(1, dtype=a.dtype)[0]
    for i in range(r):
        for j in range(c):
            s = zero                                  # ``_Tp s = 0``
            for k in range(l):
                s = s + a[i, k] * b[k, j]
            out[i, j] = s
    return out


@njit_np
def mean_col_f32(pts, col):
    """``(float)cv::mean(pts.col(col))[0]``: the float64 sum element by element times 1/n."""
    n = pts.shape[0]
    s = 0.0
    for i in range(n):
        s += pts[i, col]
    return np.float32(s * (1.0 / n))


@njit_np
def sum_f32(v):
    """``cv::sum`` of continuous float32 data (one channel), as the AVX2 ``sum32f`` does it.

    Blocks of 16 values go into four float64 lanes (lane ``l`` adds
    ``x[l] + x[8+l]`` and, separately, ``x[4+l] + x[12+l]``), the lanes are
    added in order; the rest in groups of four summed in float32, then one by one.
    """
    n = v.shape[0]
    lo = np.zeros(4)
    hi = np.zeros(4)
    x = 0
    while x <= n - 16:
        for l in range(4):
            lo[l] += np.float64(v[x + l]) + np.float64(v[x + 8 + l])
            hi[l] += np.float64(v[x + 4 + l]) + np.float64(v[x + 12 + l])
        x += 16
    s = 0.0
    for l in range(4):
        s += lo[l] + hi[l]
    while x <= n - 4:
        s += v[x] + v[x + 1] + v[x + 2] + v[x + 3]      # float32 additions
        x += 4
    while x < n:
        s += v[x]
        x += 1
    return s


@njit_np
def norm_l2_f32(v):
    """``cv::norm(v, NORM_L2)`` of a continuous float32 vector (float64 result).

    ``normL2Sqr<float, double>``: groups of four squares summed, then added; the
    tail one by one; then the square root.
    """
    n = v.shape[0]
    s = 0.0
    i = 0
    while i <= n - 4:
        v0 = np.float64(v[i])
        v1 = np.float64(v[i + 1])
        v2 = np.float64(v[i + 2])
        v3 = np.float64(v[i + 3])
        s += v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3
        i += 4
    while i < n:
        t = np.float64(v[i])
        s += t * t
        i += 1
    return math.sqrt(s)
