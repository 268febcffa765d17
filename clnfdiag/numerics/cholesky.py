"""OpenCV's ``cv::invert`` / ``cv::solve`` with ``DECOMP_CHOLESKY`` for float32, as the goldens ran them.

What the golden build (OpenCV 4.6 over OpenBLAS 0.3.21, SkylakeX kernels, one
thread) does for a float32 ``n x n`` system, re-expressed as fixed-order
compiled code whose only primitives are IEEE float32/float64 operations and a
correctly rounded float32 FMA (:func:`~clnfdiag.numerics.fma.fma32`). Nothing
here calls a BLAS, LAPACK or ``cv2``, so the bits do not depend on the CPU.

Three regimes, chosen by the size ``n`` like OpenCV does:

``n <= 3`` (closed forms in ``lapack.cpp``)
    ``cv::invert`` and a one-column ``cv::solve`` use Cramer's rule on
    double determinants (:func:`invert_small`, :func:`solve_small`).

``n < 100`` (OpenCV's own ``hal::Cholesky32f``)
    The factor is stored in float with the *reciprocal* square root on its
    diagonal; every accumulator is a double; the products of two stored
    floats (``L[i,k]·L[j,k]``, ``L[i,k]·b[k]``) are float products, the
    diagonal squares double ones; sums run sequentially in index order
    (:func:`opencv_cholesky_factor`, :func:`opencv_cholesky_substitute`).
    ``cv::invert`` solves against the identity.

``n >= 100`` (OpenCV's HAL hands the system to LAPACK ``sposv``)
    ``sposv`` (lower) = OpenBLAS ``spotrf`` then two ``strsm``: forward with
    ``L``, backward with ``Lᵀ``. ``cv::invert`` passes the identity
    (transposed, i.e. itself) as right-hand side and transposes the solution
    back, so the result is not exactly symmetric. LAPACK reads the row-major
    matrix as column-major, i.e. it factors the transpose; the lower triangle
    it uses is the row-major *upper* one. The OpenBLAS single-thread
    operation orders are emulated exactly (:func:`openblas_spotrf`,
    :func:`openblas_strsm_forward`, :func:`openblas_strsm_backward`):

    * ``potrf_L_single``: ``n <= 32`` (DTB_ENTRIES / 2) goes to ``potf2``;
      otherwise blocks of ``n // 4`` (``n <= 4·GEMM_Q``, GEMM_Q = 448),
      recursively factored; after each diagonal block a right-side triangular
      solve of the panel below it (``trsm_kernel_RN``) and a rank-``bk``
      update of the trailing lower triangle (``syrk`` through the 16x4 sgemm
      kernel);
    * every GEMM-shaped update: per element one FMA chain over ascending
      ``k`` starting at 0, then one rounded subtraction from C;
    * ``potf2`` column ``j``: ``a_jj - sdot`` where the strided ``sdot`` sums
      pairs ``fma(x0, x0, x1·x1)`` in double (an odd tail adds ``x·x``), then
      ``sqrtf``; the column below by ``sgemv_n`` (SkylakeX kernel: FMA chain
      then one subtraction; for ``j = 4`` the Haswell 4x4 kernel, whose
      leading ``NB & 4`` and ``NB & 8`` rows use two accumulators) scaled by
      ``float(1 / a_jj)``;
    * triangular solves (generic ``trsm_kernel_RN/LT/LN``): diagonal inverse
      ``float(1/d)``; inside a chunk ``x_i = t_i · inv_i`` then
      ``t_k = fma(-x_i, a_ki, t_k)``; earlier chunks enter as one GEMM chain
      and one subtraction. Chunks: RN columns in 4s, then 2, then 1; LT rows
      in 16s from the top, then 8/4/2/1; LN the leftover 1/2/4/8 rows at the
      bottom first, then 16s upwards.

Layout used by the ``n >= 100`` kernels: ``w`` is the row-major matrix
itself, read as LAPACK's column-major ``M`` (``M[r, c] = w[c, r]``), so one
column of ``M`` is one contiguous row of ``w``. Right-hand sides ``b`` are
row-major ``(n, nrhs)``: the kernels advance all right-hand-side columns
together (vectorised across independent outputs, each output's operation
order unchanged).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .fma import fma32, njit_np

__all__ = [
    "invert_cholesky",
    "solve_cholesky",
    "invert_small",
    "solve_small",
    "opencv_cholesky_factor",
    "opencv_cholesky_substitute",
    "openblas_spotrf",
    "openblas_strsm_forward",
    "openblas_strsm_backward",
    "openblas_sposv",
    "spotrf_plan",
    "LAPACK_THRESHOLD",
    "SPOSV_MAX",
]

F32 = np.float32
F64 = np.float64

#: OpenCV's HAL (``hal_internal.cpp``) hands Cholesky systems of this size and
#: above to LAPACK (HAL_CHOLESKY_SMALL_MATRIX_THRESH).
LAPACK_THRESHOLD = 100
#: OpenBLAS ``potrf_L_single``: blocks of at most DTB_ENTRIES / 2 go to ``potf2``
#: (DTB_ENTRIES = 64 for SkylakeX).
_POTF2_MAX = 32
#: GEMM_Q of the SkylakeX sgemm parameters (blocking cap of ``potrf``).
_GEMM_Q = 448
#: Largest size emulated: up to GEMM_Q (= GEMM_P) rows each ``strsm`` of ``spotrs``
#: is a single kernel call over the whole triangle, the case ported here (larger
#: systems get extra GEMM updates between blocks, not emulated).
SPOSV_MAX = _GEMM_Q

# Operation codes of a ``spotrf`` plan (rows of an int64 array: op, a, b, c, d).
_OP_POTF2 = 0   # (s, n): unblocked factor of M[s:s+n, s:s+n]
_OP_TRSM = 1    # (c0, bk, r0, r1): panel M[r0:r1, c0:c0+bk] <- panel · L_blk^-T
_OP_SYRK = 2    # (c0, bk, r0, r1): lower M[r0:r1, r0:r1] -= panel · panelᵀ


# ----------------------------------------------------------------------------------------------
# n <= 3: closed forms of lapack.cpp
# ----------------------------------------------------------------------------------------------

@njit_np
def _det2(a):
    return F64(a[0, 0]) * F64(a[1, 1]) - F64(a[0, 1]) * F64(a[1, 0])


@njit_np
def _det3(a):
    # OpenCV's det3 macro: a float element times a double 2x2 minor, terms left to right.
    return (F64(a[0, 0]) * (F64(a[1, 1]) * F64(a[2, 2]) - F64(a[1, 2]) * F64(a[2, 1]))
            - F64(a[0, 1]) * (F64(a[1, 0]) * F64(a[2, 2]) - F64(a[1, 2]) * F64(a[2, 0]))
            + F64(a[0, 2]) * (F64(a[1, 0]) * F64(a[2, 1]) - F64(a[1, 1]) * F64(a[2, 0])))


@njit_np
def invert_small(a):  # pragma: no cover - compiled
    """``cv::invert(a, DECOMP_LU or DECOMP_CHOLESKY)`` for a float32 ``n x n``, ``n <= 3``.

    Cramer's rule on a double determinant, as ``lapack.cpp``: ``n = 1`` gives
    ``float(1/d)``; ``n = 2`` the SSE2 path (``float(1/det)`` times each
    element in float, off-diagonal negated); ``n = 3`` double cofactors times
    ``1/det``, each rounded to float.

    Parameters
    ----------
    a : (n, n) float32, n in 1..3

    Returns
    -------
    out : (n, n) float32
        All zeros when the determinant is exactly 0.
    ok : bool
    """
    n = a.shape[0]
    out = np.zeros((n, n), np.float32)
    if n == 1:
        d = F64(a[0, 0])
        if d == 0.0:
            return out, False
        out[0, 0] = F32(1.0 / d)
        return out, True
    if n == 2:
        d = _det2(a)
        if d == 0.0:
            return out, False
        fd = F32(1.0 / d)
        out[0, 0] = a[1, 1] * fd
        out[0, 1] = -(a[0, 1] * fd)
        out[1, 0] = -(a[1, 0] * fd)
        out[1, 1] = a[0, 0] * fd
        return out, True
    d = _det3(a)
    if d == 0.0:
        return out, False
    d = 1.0 / d
    s = np.empty((3, 3), np.float64)
    for i in range(3):
        for j in range(3):
            s[i, j] = F64(a[i, j])
    out[0, 0] = F32((s[1, 1] * s[2, 2] - s[1, 2] * s[2, 1]) * d)
    out[0, 1] = F32((s[0, 2] * s[2, 1] - s[0, 1] * s[2, 2]) * d)
    out[0, 2] = F32((s[0, 1] * s[1, 2] - s[0, 2] * s[1, 1]) * d)
    out[1, 0] = F32((s[1, 2] * s[2, 0] - s[1, 0] * s[2, 2]) * d)
    out[1, 1] = F32((s[0, 0] * s[2, 2] - s[0, 2] * s[2, 0]) * d)
    out[1, 2] = F32((s[0, 2] * s[1, 0] - s[0, 0] * s[1, 2]) * d)
    out[2, 0] = F32((s[1, 0] * s[2, 1] - s[1, 1] * s[2, 0]) * d)
    out[2, 1] = F32((s[0, 1] * s[2, 0] - s[0, 0] * s[2, 1]) * d)
    out[2, 2] = F32((s[0, 0] * s[1, 1] - s[0, 1] * s[1, 0]) * d)
    return out, True


@njit_np
def solve_small(a, b):  # pragma: no cover - compiled
    """``cv::solve(a, b, DECOMP_CHOLESKY)`` for ``n <= 3`` and one right-hand side.

    Cramer's rule as ``lapack.cpp`` writes it (including one float product,
    ``b1·a22``, in the second unknown of the 3x3 case).

    Parameters
    ----------
    a : (n, n) float32, n in 1..3
    b : (n,) float32

    Returns
    -------
    x : (n,) float32
        Zeros when the determinant is exactly 0.
    ok : bool
    """
    n = a.shape[0]
    x = np.zeros(n, np.float32)
    if n == 1:
        d = F64(a[0, 0])
        if d == 0.0:
            return x, False
        x[0] = F32(F64(b[0]) / d)
        return x, True
    if n == 2:
        d = _det2(a)
        if d == 0.0:
            return x, False
        d = 1.0 / d
        b0 = F64(b[0])
        b1 = F64(b[1])
        x[0] = F32((b0 * F64(a[1, 1]) - b1 * F64(a[0, 1])) * d)
        x[1] = F32((b1 * F64(a[0, 0]) - b0 * F64(a[1, 0])) * d)
        return x, True
    d = _det3(a)
    if d == 0.0:
        return x, False
    d = 1.0 / d
    s = np.empty((3, 3), np.float64)
    for i in range(3):
        for j in range(3):
            s[i, j] = F64(a[i, j])
    b0 = F64(b[0])
    b1 = F64(b[1])
    b2 = F64(b[2])
    x[0] = F32(d * (b0 * (s[1, 1] * s[2, 2] - s[1, 2] * s[2, 1])
                    - s[0, 1] * (b1 * s[2, 2] - s[1, 2] * b2)
                    + s[0, 2] * (b1 * s[2, 1] - s[1, 1] * b2)))
    # OpenCV writes ``(double)(bf(1)*Sf(2,2) - ...)``: that first product is a float one.
    b1a22 = F64(b[1] * a[2, 2])
    x[1] = F32(d * (s[0, 0] * (b1a22 - s[1, 2] * b2)
                    - b0 * (s[1, 0] * s[2, 2] - s[1, 2] * s[2, 0])
                    + s[0, 2] * (s[1, 0] * b2 - b1 * s[2, 0])))
    x[2] = F32(d * (s[0, 0] * (s[1, 1] * b2 - b1 * s[2, 1])
                    - s[0, 1] * (s[1, 0] * b2 - b1 * s[2, 0])
                    + b0 * (s[1, 0] * s[2, 1] - s[1, 1] * s[2, 0])))
    return x, True


# ----------------------------------------------------------------------------------------------
# 4 <= n < 100: OpenCV's own Cholesky (matrix_decomp.cpp CholImpl<float>)
# ----------------------------------------------------------------------------------------------

@njit_np
def opencv_cholesky_factor(a):  # pragma: no cover - compiled
    """Factor of OpenCV's ``CholImpl<float>``: lower ``L`` with ``1/sqrt`` on the diagonal.

    Entry by entry as OpenCV's row-by-row loop:
    ``L[i,j] = float((a[i,j] - Σ_k float(L[i,k]·L[j,k])) · L[j,j])`` for ``j < i``
    with the sum a sequential double accumulator (k ascending); then
    ``s = a[i,i] - Σ_k L[i,k]²`` (double squares) and ``L[i,i] = float(1 / sqrt(s))``.
    Fails when ``s < FLT_EPSILON`` (a NaN passes, as in C++).

    Computed column by column here (left-looking): column ``j`` needs only
    columns ``< j`` (its diagonal first, then every entry below it), so all
    rows of a column advance together in vector lanes, each entry with exactly
    OpenCV's operations in OpenCV's order (the same bits). The first failing
    pivot is the same too: OpenCV's row ``i`` fails on ``s_ii``, which depends
    only on row ``i``'s entries left of the diagonal, as here.

    Parameters
    ----------
    a : (n, n) float32 (lower triangle read)

    Returns
    -------
    L : (n, n) float32
        Lower factor, reciprocal diagonal; entries above the diagonal are 0
        (on failure only the columns before the failing pivot are filled).
    ok : bool
    """
    n = a.shape[0]
    lt = np.zeros((n, n), np.float32)          # lt[j, i] = L[i, j]: a column per row
    acc = np.empty(n, np.float64)
    eps = F64(np.finfo(np.float32).eps)
    for j in range(n):
        s = F64(a[j, j])
        for k in range(j):
            t = F64(lt[k, j])
            s -= t * t
        if s < eps:
            return np.ascontiguousarray(lt.T), False
        d = F32(1.0 / np.sqrt(s))
        lt[j, j] = d
        m = n - j - 1                          # the rows below the diagonal, i = j + 1 + r
        below = acc[:m]
        for r in range(m):
            below[r] = F64(a[j + 1 + r, j])
        for k in range(j):
            ljk = lt[k, j]
            col = lt[k, j + 1:]
            for r in range(m):
                below[r] = below[r] - F64(col[r] * ljk)   # float product, double subtraction
        dd = F64(d)
        out = lt[j, j + 1:]
        for r in range(m):
            out[r] = F32(below[r] * dd)
    return np.ascontiguousarray(lt.T), True


@njit_np
def opencv_cholesky_substitute(L, b):  # pragma: no cover - compiled
    """In place ``b <- (L Lᵀ)^-1 b`` with OpenCV's ``CholImpl`` substitutions.

    Forward: ``b[i,j] = float((b[i,j] - Σ_{k<i} float(L[i,k]·b[k,j])) · L[i,i])``;
    backward: ``b[i,j] = float((b[i,j] - Σ_{k>i, descending} float(L[k,i]·b[k,j])) · L[i,i])``,
    each sum a sequential double accumulator (``L[i,i]`` holds ``1/sqrt``).
    All columns of ``b`` advance together; each entry's operations are in
    OpenCV's order.

    Parameters
    ----------
    L : (n, n) float32, from :func:`opencv_cholesky_factor`
    b : (n, m) float32, C-contiguous, overwritten with the solution
    """
    n, m = b.shape
    acc = np.empty(m, np.float64)
    for i in range(n):
        for j in range(m):
            acc[j] = F64(b[i, j])
        for k in range(i):
            lik = L[i, k]
            for j in range(m):
                acc[j] -= F64(lik * b[k, j])
        d = F64(L[i, i])
        for j in range(m):
            b[i, j] = F32(acc[j] * d)
    for i in range(n - 1, -1, -1):
        for j in range(m):
            acc[j] = F64(b[i, j])
        for k in range(n - 1, i, -1):
            lki = L[k, i]
            for j in range(m):
                acc[j] -= F64(lki * b[k, j])
        d = F64(L[i, i])
        for j in range(m):
            b[i, j] = F32(acc[j] * d)


# ----------------------------------------------------------------------------------------------
# n >= 100: LAPACK sposv over OpenBLAS 0.3.21 (SkylakeX kernels, one thread)
# ----------------------------------------------------------------------------------------------

def _plan(ops: list, s: int, n: int) -> None:
    """Append the operations of ``potrf_L_single`` on ``M[s:s+n, s:s+n]`` (recursive blocking)."""
    if n <= _POTF2_MAX:
        ops.append((_OP_POTF2, s, n, 0, 0))
        return
    blocking = n // 4 if n <= 4 * _GEMM_Q else _GEMM_Q
    for j in range(0, n, blocking):
        bk = min(n - j, blocking)
        _plan(ops, s + j, bk)
        if n - j - bk > 0:
            # The panel is one TRSM and one SYRK call (for larger n OpenBLAS splits them
            # into row/column tiles, which leaves every element's arithmetic unchanged).
            ops.append((_OP_TRSM, s + j, bk, s + j + bk, s + n))
            ops.append((_OP_SYRK, s + j, bk, s + j + bk, s + n))


@lru_cache(maxsize=None)
def spotrf_plan(n: int) -> np.ndarray:
    """The sequence of kernel calls OpenBLAS's single-thread lower ``spotrf`` makes for size ``n``.

    Returns
    -------
    (n_ops, 5) int64, read-only
        Rows ``(op, a, b, c, d)``: ``(0, s, size, 0, 0)`` an unblocked
        ``potf2`` of a diagonal block; ``(1, c0, bk, r0, r1)`` the panel
        solve; ``(2, c0, bk, r0, r1)`` the trailing update.
    """
    ops: list = []
    _plan(ops, 0, int(n))
    out = np.array(ops, dtype=np.int64).reshape(-1, 5)
    out.flags.writeable = False
    return out


@njit_np
def _potf2(w, s, n, acc):  # pragma: no cover - compiled
    """OpenBLAS ``potf2_L`` on the diagonal block ``M[s:s+n, s:s+n]``; returns 0 or the failing column + 1."""
    for j in range(n):
        cj = s + j
        # Diagonal: a_jj - sdot(row j of the block), strided path of the x86-64 sdot.
        dot = 0.0
        k = 0
        while k + 1 < j:
            x0 = w[s + k, cj]
            x1 = w[s + k + 1, cj]
            dot += F64(fma32(x0, x0, x1 * x1))
            k += 2
        if k < j:
            x0 = w[s + k, cj]
            dot += F64(x0 * x0)
        ajj = w[cj, cj] - F32(dot)
        if ajj <= 0:   # as OpenBLAS: a NaN passes
            w[cj, cj] = ajj
            return j + 1
        ajj = np.sqrt(ajj)
        w[cj, cj] = ajj
        r0 = cj + 1
        r1 = s + n
        if r1 <= r0:
            continue
        # Zero-based loops over slices (numba then drops its negative-index checks
        # and LLVM vectorises across rows; each row's operations are unchanged).
        m = r1 - r0
        y = w[cj, r0:r1]
        if j == 4:
            _gemv_haswell4(w, s, cj, r0, r1, acc)
        elif j > 0:
            # SkylakeX sgemv_n kernel: per row one FMA chain over the columns, then y - acc.
            a = acc[r0:r1]
            for i in range(m):
                a[i] = 0.0
            for kk in range(j):
                src = w[s + kk, r0:r1]
                xk = w[s + kk, cj]
                for i in range(m):
                    a[i] = fma32(src[i], xk, a[i])
            for i in range(m):
                y[i] = y[i] - a[i]
        inv = F32(1.0) / ajj
        for i in range(m):
            y[i] = y[i] * inv
    return 0


@njit_np
def _gemv_haswell4(w, s, cj, r0, r1, acc):  # pragma: no cover - compiled
    """``y -= A x`` with 4 columns as OpenBLAS ran it for ``j = 4`` (strided x, Haswell 4x4 kernel).

    Rows are split as ``sgemv_n_4.c`` does: ``NB = m - m % 4`` rows through the
    assembler kernel (rows of its ``NB & 4`` and ``NB & 8`` blocks with two
    accumulators, columns 0, 2 and 1, 3, summed, then added to y; the 16-row
    blocks with one FMA chain then ``y - acc``), the last ``m % 4`` rows with
    a scalar FMA chain then ``y - acc``.
    """
    col = w[cj]
    a0 = w[s]
    a1 = w[s + 1]
    a2 = w[s + 2]
    a3 = w[s + 3]
    x0 = a0[cj]
    x1 = a1[cj]
    x2 = a2[cj]
    x3 = a3[cj]
    m = r1 - r0
    nb = m - (m & 3)
    two = 0
    if nb & 4:
        two += 4
    if nb & 8:
        two += 8
    z = F32(0.0)
    for r in range(r0, r0 + two):
        p = fma32(a2[r], x2, fma32(a0[r], x0, z))
        q = fma32(a3[r], x3, fma32(a1[r], x1, z))
        col[r] = col[r] + (-(p + q))
    for r in range(r0 + two, r1):
        acc[r] = fma32(a3[r], x3, fma32(a2[r], x2, fma32(a1[r], x1, fma32(a0[r], x0, z))))
        col[r] = col[r] - acc[r]


@njit_np
def _trsm_rn(w, c0, bk, r0, r1, t, acc):  # pragma: no cover - compiled
    """Panel solve of ``potrf``: ``M[r0:r1, c0:c0+bk] <- P · L_blk^-T`` (generic ``trsm_kernel_RN``).

    Per panel row: column chunks of 4, then 2, then 1, left to right; a chunk
    first subtracts one FMA chain over all earlier block columns, then solves
    inside the chunk (``x_i = t_i · float(1/L_ii)``,
    ``t_k = fma(-x_i, L_ki, t_k)``). All panel rows advance together;
    ``t`` is a ``(4, n)`` and ``acc`` an ``(n,)`` float32 scratch.
    """
    # Zero-based loops over slices (numba then drops its negative-index checks
    # and LLVM vectorises across rows; each row's operations are unchanged).
    m = r1 - r0
    a = acc[:m]
    q4 = bk & ~3
    q0 = 0
    while q0 < bk:
        if q0 < q4:
            h = 4
        elif (bk & 2) and q0 == q4:
            h = 2
        else:
            h = 1
        for i in range(h):
            c = c0 + q0 + i
            dst = t[i, :m]
            src = w[c, r0:r1]
            for r in range(m):
                dst[r] = src[r]
            if q0 > 0:
                # GEMM chain over the earlier columns of the block, then one subtraction.
                for r in range(m):
                    a[r] = 0.0
                for k in range(c0, c0 + q0):
                    pk = w[k, r0:r1]
                    lck = w[k, c]
                    for r in range(m):
                        a[r] = fma32(pk[r], lck, a[r])
                for r in range(m):
                    dst[r] = dst[r] - a[r]
        for i in range(h):
            c = c0 + q0 + i
            inv = F32(1.0) / w[c, c]
            xi = t[i, :m]
            out = w[c, r0:r1]
            for r in range(m):
                xi[r] = xi[r] * inv
                out[r] = xi[r]
            for k in range(i + 1, h):
                lki = w[c, c0 + q0 + k]
                tk = t[k, :m]
                for r in range(m):
                    tk[r] = fma32(-xi[r], lki, tk[r])
        q0 += h


@njit_np
def _syrk_lower(w, c0, bk, r0, r1, acc):  # pragma: no cover - compiled
    """Trailing update of ``potrf``: lower ``M[r0:r1, r0:r1] -= P Pᵀ`` with ``P = M[r0:r1, c0:c0+bk]``.

    Per element one FMA chain over the ``bk`` columns (ascending, from 0),
    then one rounded subtraction.
    """
    # Zero-based loops over slices (numba then drops its negative-index checks
    # and LLVM vectorises across rows; each element's operations are unchanged).
    for c in range(r0, r1):
        m = r1 - c
        a = acc[:m]
        for i in range(m):
            a[i] = 0.0
        for k in range(c0, c0 + bk):
            src = w[k, c:r1]
            pc = w[k, c]
            for i in range(m):
                a[i] = fma32(src[i], pc, a[i])
        dst = w[c, c:r1]
        for i in range(m):
            dst[i] = dst[i] - a[i]


@njit_np
def _spotrf_run(w, plan):  # pragma: no cover - compiled
    n = w.shape[0]
    acc = np.empty(n, np.float32)
    t = np.empty((4, n), np.float32)
    for o in range(plan.shape[0]):
        op = plan[o, 0]
        if op == 0:
            info = _potf2(w, plan[o, 1], plan[o, 2], acc)
            if info:
                return plan[o, 1] + info
        elif op == 1:
            _trsm_rn(w, plan[o, 1], plan[o, 2], plan[o, 3], plan[o, 4], t, acc)
        else:
            _syrk_lower(w, plan[o, 1], plan[o, 2], plan[o, 3], plan[o, 4], acc)
    return 0


def openblas_spotrf(w: np.ndarray) -> int:
    """In place lower Cholesky factor as OpenBLAS 0.3.21's single-thread ``spotrf`` computes it.

    Parameters
    ----------
    w : (n, n) float32, C-contiguous
        The row-major array LAPACK reads as column-major ``M`` (``M[r, c] =
        w[c, r]``): its upper triangle is the lower triangle factored. On
        return ``w[c, r]`` (``r >= c``) holds ``L[r, c]``; the strict lower
        triangle of ``w`` is untouched.

    Returns
    -------
    info : int
        0, or the 1-based column where a pivot was not positive (LAPACK's INFO).
    """
    return int(_spotrf_run(w, spotrf_plan(w.shape[0])))


@njit_np
def _chunks_forward(n):
    """Row chunks of ``trsm_kernel_LT``: 16s from the top, then 8, 4, 2, 1 (``(k, 2)`` starts/sizes)."""
    out = np.empty((n // 16 + 4, 2), np.int64)
    c = 0
    r = 0
    for _ in range(n // 16):
        out[c, 0] = r
        out[c, 1] = 16
        c += 1
        r += 16
    h = 8
    while h > 0:
        if n & h:
            out[c, 0] = r
            out[c, 1] = h
            c += 1
            r += h
        h //= 2
    return out[:c]


@njit_np
def _chunks_backward(n):
    """Row chunks of ``trsm_kernel_LN`` in processing order: leftover 1, 2, 4, 8 at the bottom, then 16s upwards."""
    out = np.empty((n // 16 + 4, 2), np.int64)
    c = 0
    h = 1
    while h < 16:
        if n & h:
            out[c, 0] = (n & ~(h - 1)) - h
            out[c, 1] = h
            c += 1
        h *= 2
    r = (n & ~15) - 16
    while r >= 0:
        out[c, 0] = r
        out[c, 1] = 16
        c += 1
        r -= 16
    return out[:c]


@njit_np
def _strsm_forward(w, b, lower_rhs):  # pragma: no cover - compiled
    n, m = b.shape
    chunks = _chunks_forward(n)
    acc = np.empty(m, np.float32)
    t = np.empty((16, m), np.float32)
    for ci in range(chunks.shape[0]):
        r0 = chunks[ci, 0]
        h = chunks[ci, 1]
        for i in range(h):
            r = r0 + i
            dst = t[i]
            src = b[r]
            for j in range(m):
                dst[j] = src[j]
            if r0 > 0:
                # One GEMM chain over all rows above the chunk, then one subtraction.
                for j in range(m):
                    acc[j] = 0.0
                for k in range(r0):
                    lrk = w[k, r]
                    bk = b[k]
                    # With a lower-triangular right-hand side (the identity) b[k, j] = +0
                    # for j > k, and such terms leave the chain bit-identical: skipped.
                    hi = k + 1 if lower_rhs else m
                    for j in range(hi):
                        acc[j] = fma32(lrk, bk[j], acc[j])
                hi = r0 if lower_rhs else m
                if hi > m:
                    hi = m
                for j in range(hi):
                    dst[j] = dst[j] - acc[j]
        for i in range(h):
            r = r0 + i
            inv = F32(1.0) / w[r, r]
            xi = t[i]
            out = b[r]
            hi = r + 1 if lower_rhs else m
            if hi > m:
                hi = m
            for j in range(m):
                xi[j] = xi[j] * inv
                out[j] = xi[j]
            for k in range(i + 1, h):
                lki = w[r, r0 + k]
                tk = t[k]
                for j in range(hi):
                    tk[j] = fma32(-xi[j], lki, tk[j])


def openblas_strsm_forward(w: np.ndarray, b: np.ndarray, lower_rhs: bool = False) -> None:
    """In place ``b <- L^-1 b`` as OpenBLAS ``strsm`` (Left, Lower, NoTrans, NonUnit; ``trsm_kernel_LT``).

    Parameters
    ----------
    w : (n, n) float32
        Factor from :func:`openblas_spotrf` (``L[r, c] = w[c, r]``).
    b : (n, m) float32, C-contiguous
        Right-hand sides as columns; overwritten with the solution.
    lower_rhs : bool
        ``b`` is lower triangular (``b[k, j] = +0`` for ``j > k``, e.g. the
        identity): the exactly-zero terms are skipped (same bits, half the work).
    """
    _strsm_forward(w, b, bool(lower_rhs))


@njit_np
def _strsm_backward(w, b):  # pragma: no cover - compiled
    n, m = b.shape
    chunks = _chunks_backward(n)
    acc = np.empty(m, np.float32)
    t = np.empty((16, m), np.float32)
    for ci in range(chunks.shape[0]):
        r0 = chunks[ci, 0]
        h = chunks[ci, 1]
        kk = r0 + h
        for i in range(h):
            r = r0 + i
            dst = t[i]
            src = b[r]
            for j in range(m):
                dst[j] = src[j]
            if kk < n:
                # One GEMM chain over the rows already solved (below the chunk, ascending).
                for j in range(m):
                    acc[j] = 0.0
                lrow = w[r]
                for k in range(kk, n):
                    lkr = lrow[k]
                    bk = b[k]
                    for j in range(m):
                        acc[j] = fma32(lkr, bk[j], acc[j])
                for j in range(m):
                    dst[j] = dst[j] - acc[j]
        for i in range(h - 1, -1, -1):
            r = r0 + i
            inv = F32(1.0) / w[r, r]
            xi = t[i]
            out = b[r]
            for j in range(m):
                xi[j] = xi[j] * inv
                out[j] = xi[j]
            for k in range(i):
                lik = w[r0 + k, r]
                tk = t[k]
                for j in range(m):
                    tk[j] = fma32(-xi[j], lik, tk[j])


def openblas_strsm_backward(w: np.ndarray, b: np.ndarray) -> None:
    """In place ``b <- L^-T b`` as OpenBLAS ``strsm`` (Left, Lower, Trans, NonUnit; ``trsm_kernel_LN``).

    Parameters
    ----------
    w : (n, n) float32
        Factor from :func:`openblas_spotrf` (``L[r, c] = w[c, r]``).
    b : (n, m) float32, C-contiguous
        Right-hand sides as columns; overwritten with the solution.
    """
    _strsm_backward(w, b)


def openblas_sposv(a: np.ndarray, b: np.ndarray, lower_rhs: bool = False) -> tuple[np.ndarray, int]:
    """LAPACK ``sposv('L')`` on the row-major ``a`` (read as column-major) with OpenBLAS's orders.

    Parameters
    ----------
    a : (n, n) float32
        Row-major matrix as OpenCV passes it (its upper triangle is the
        lower triangle LAPACK uses).
    b : (n, m) float32
        Right-hand sides as columns (not modified).
    lower_rhs : bool
        See :func:`openblas_strsm_forward`.

    Returns
    -------
    x : (n, m) float32
        The solution (undefined when ``info != 0``).

    Raises
    ------
    ValueError
        ``n > SPOSV_MAX`` (448): OpenBLAS's ``strsm`` blocking differs there.
    info : int
        LAPACK's INFO (0 on success).
    """
    if a.shape[0] > SPOSV_MAX:
        raise ValueError(f"openblas_sposv emulates n <= {SPOSV_MAX}, got n = {a.shape[0]}")
    w = np.array(a, dtype=np.float32, order="C", copy=True)
    x = np.array(b, dtype=np.float32, order="C", copy=True)
    info = int(_spotrf_run(w, spotrf_plan(w.shape[0])))
    if info == 0:
        _strsm_forward(w, x, bool(lower_rhs))
        _strsm_backward(w, x)
    return x, info


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------

def invert_cholesky(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """``cv::invert(a, DECOMP_CHOLESKY)`` of the goldens' build (float32), on any CPU.

    Parameters
    ----------
    a : (n, n) float32
        Symmetric positive definite.

    Returns
    -------
    inv : (n, n) float32
        The inverse as OpenCV returns it: for ``n >= 100`` the LAPACK
        ``sposv`` solution against the identity (not exactly symmetric), for
        ``4 <= n < 100`` OpenCV's own Cholesky, for ``n <= 3`` Cramer's rule.
        All zeros on failure, as OpenCV leaves it.
    ok : bool

    Raises
    ------
    ValueError
        Not square, or ``n > SPOSV_MAX`` (448, beyond the emulated blocking).
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    n = a.shape[0]
    if a.ndim != 2 or a.shape[1] != n:
        raise ValueError(f"invert_cholesky needs a square matrix, got shape {a.shape}")
    if n == 0:
        return np.zeros((0, 0), np.float32), True
    if n <= 3:
        out, ok = invert_small(a)
        return out, bool(ok)
    eye = np.eye(n, dtype=np.float32)
    if n < LAPACK_THRESHOLD:
        L, ok = opencv_cholesky_factor(a)
        if not ok:
            return np.zeros((n, n), np.float32), False
        opencv_cholesky_substitute(L, eye)
        return eye, True
    # OpenCV passes the identity transposed (itself) and transposes the column-major
    # solution back: the row-major result is X itself.
    x, info = openblas_sposv(a, eye, lower_rhs=True)
    if info:
        return np.zeros((n, n), np.float32), False
    return x, True


def solve_cholesky(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
    """``cv::solve(a, b, DECOMP_CHOLESKY)`` of the goldens' build (float32), on any CPU.

    Parameters
    ----------
    a : (n, n) float32
        Symmetric positive definite (OpenCV's own path reads the lower
        triangle; for ``n >= 100`` LAPACK reads the upper one of the
        row-major array).
    b : (n,) or (n, m) float32

    Returns
    -------
    x : float32, the shape of ``b``
        All zeros when the factorisation fails, as ``cv::solve`` leaves it.
    ok : bool

    Raises
    ------
    ValueError
        Incompatible shapes, or ``n > SPOSV_MAX`` (448, beyond the emulated blocking).
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    shape = b.shape
    n = a.shape[0]
    if a.ndim != 2 or a.shape[1] != n or b.shape[0] != n or b.ndim > 2:
        raise ValueError(f"solve_cholesky: incompatible shapes {a.shape} and {b.shape}")
    bb = np.array(b.reshape(n, -1), dtype=np.float32, order="C", copy=True)
    if n == 0:
        return bb.reshape(shape), True
    if n <= 3 and bb.shape[1] == 1:
        x, ok = solve_small(a, np.ascontiguousarray(bb[:, 0]))
        return x.reshape(shape), bool(ok)
    if n < LAPACK_THRESHOLD:
        L, ok = opencv_cholesky_factor(a)
        if not ok:
            return np.zeros(shape, np.float32), False
        opencv_cholesky_substitute(L, bb)
        return bb.reshape(shape), True
    x, info = openblas_sposv(a, bb)
    if info:
        return np.zeros(shape, np.float32), False
    return x.reshape(shape), True
