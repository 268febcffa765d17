"""OpenBLAS's SkylakeX small-matrix ``sgemm`` kernel, emulated in fixed-order float32 code.

The C++ reference (OpenBLAS 0.3.21, SkylakeX kernels, one thread) hands every
``sgemm_`` with ``M·N·K <= 100³`` and no transposition to
``sgemm_small_kernel_nn`` (``sgemm_small_kernel_b0_nn`` when ``beta == 0``),
see OpenBLAS's ``interface/gemm.c`` and
``kernel/x86_64/sgemm_small_kernel_permit_skylakex.c``. OpenFace calls it for
the NU-RLMS Hessian, the CCNF neuron activations and ``PDM::CalcShape3D`` (and
OpenCV's ``gemm`` forwards ``M + V·p`` of 100 rows or more to it). This module
computes what that kernel computes, element by element, with IEEE float32
operations and a correctly rounded fused multiply-add (:func:`fma32`), so the
result is the same on every CPU, with or without AVX-512 or FMA hardware.

The kernel (column-major ``C = alpha·A·B + beta·C``, ``A`` is M x K, ``B`` is
K x N) sums each element in one of three ways, chosen by the element's
position. Let "row" be the index over M, ``m16 = M & ~15`` and ``mm = M - m16``:

* **chain** — rows below ``m16``, and every row when ``mm > 8`` or ``K < 32``:
  one accumulator starting at +0, ``acc = fma(A[i, k], B[k, j], acc)`` for
  ``k = 0 .. K-1`` in order (the AVX-512 loops keep 16 rows in one register,
  each lane its own row);
* **16 lanes** — the last ``mm`` rows otherwise (the "dot-like" branch for
  M in [1, 8]): lane ``l`` (0..15) chains the ``k ≡ l (mod 16)`` in order,
  from +0 (a masked tail load adds ``fma(0, 0, lane)``, which changes nothing:
  a lane that starts at +0 is never -0); the 16 lanes are then reduced by
  one of two float32 addition trees:

  - **tree A** (``REDUCE_4``: the 4-row blocks ``i < M & ~3``, all columns,
    and the 4-column blocks ``j < N & ~3`` of the 2- and 1-row tails):
    ``G_q = (x[4q] + x[4q+1]) + (x[4q+2] + x[4q+3])``,
    ``s = (G_0 + G_1) + (G_2 + G_3)``;
  - **tree B** (``_mm512_reduce_add_ps``: the other elements, i.e. rows at or
    above ``M & ~3`` and columns at or above ``N & ~3``):
    ``h_l = x[l+8] + x[l]`` (l < 8), ``q_l = h[l+4] + h[l]`` (l < 4),
    ``s = (q_0 + q_2) + (q_1 + q_3)``.

The store is ``acc·alpha`` (exact for the ``alpha = 1`` every caller uses)
then ``C·beta + that`` with one rounding (a ``vfmadd231ps``), i.e. for
``beta = 1`` one float32 addition ``C + acc``, and ``acc`` itself for
``beta = 0`` (the ``b0`` kernel never reads C). The kernels here support
``alpha = 1`` and ``beta`` in {0, 1} only: the C expression of the tree-B
store, ``alpha * s + beta * C``, has no single rounding order otherwise.

Which of the two source versions applies: OpenBLAS 0.3.21 has the
``REDUCE_N4`` reduction (tree A for the 4-column blocks of the row tails);
older versions used tree B there. The goldens need the former (the 6 x 6
rigid Hessian's rows 4 and 5, columns 0-3).

What the three call sites get (kernel rows are the index over M):

* **Hessian** ``sgemm_(N, N, k, k, 2n, J, k, J_w_t, 2n, 1, H, k)``, H holding
  the regulariser: M = N = k, K = 2n, ``A(i, r) = J[r, i]``,
  ``B(r, j) = J_w_t[j, r]``, ``C(i, j) = H[j, i]``: the kernel row is the
  *column* of the row-major Hessian. k = 6 (K >= 32): all 16 lanes, tree B
  only for ``H[p, q]`` with p, q >= 4. k = 40: columns 0-31 chains, 32-39
  tree A. k = 38 (inner model): 0-31 chains, 32-35 tree A, 36-37 tree A
  for rows 0-35 and tree B for rows 36-37. k = 16 (eyes): all chains.
  See :func:`hessian_nb`. (A symmetric shortcut, computing one triangle and
  mirroring it, is only valid where an element and its mirror are summed the
  same way: both chains, or both lanes.)
* **CCNF activations** ``sgemm_(N, N, w², n_neurons, 1 + h·w, ...)``,
  ``beta = 0``: M = w² windows (OpenFace's window order ``x·rh + y``),
  N = neurons, K = 122. w = 11, 13 (mm = 9): all chains; w = 7, 9, 15
  (M = 16k + 1): the last window takes the 16 lanes, neurons 0-3 tree A,
  4-6 tree B (:func:`lane_row_start`, :func:`lanes16_dot`).
* **CalcShape3D** ``sgemm_(N, N, 1, 3n, m, 1, p, 1, V, m, 1, shape, 1)``
  onto the mean shape: M = 1, N = 3n, K = m modes: m = 34 or 32 all 16
  lanes, tree A for the columns below ``3n & ~3``; m = 10 (eyes) chains
  (:func:`gemv_m1_nb`).

Source: OpenMathLib/OpenBLAS ``kernel/x86_64/sgemm_small_kernel_nn_skylakex.c``
(the 0.3.21 version, with ``REDUCE_N4``), ``sgemm_small_kernel_permit_skylakex.c``,
``interface/gemm.c``. Written from the description above, not from that code.

Also here, because ``PDM::CalcParams`` evaluates the same ``M + V·p`` through
OpenCV below 100 rows: :func:`opencv_gemv_add_nb`, OpenCV's own ``gemm`` for a
matrix-vector product (``GEMMSingleMul``, ``A·Bᵀ`` branch: double sums).
"""
from __future__ import annotations

import numpy as np

from .fma import CHAIN_BLOCK, fma32, fma_chains_8x8, njit

__all__ = [
    "SMALL_KERNEL_MAX_MNK",
    "small_kernel_permitted",
    "lane_row_start",
    "uses_tree_a",
    "reduce_tree_a",
    "reduce_tree_b",
    "chain_dot",
    "lanes16_dot",
    "sgemm_small_nn",
    "sgemm",
    "hessian_nb",
    "gemv_m1_nb",
    "opencv_gemv_add_nb",
]

#: ``sgemm_small_kernel_permit``: the small kernel runs when ``M·N·K`` is at most this.
SMALL_KERNEL_MAX_MNK = 100.0 * 100.0 * 100.0


def small_kernel_permitted(m: int, n: int, k: int) -> bool:
    """True when OpenBLAS (SkylakeX, no transposes) takes the small-matrix kernel."""
    return float(m) * float(n) * float(k) <= SMALL_KERNEL_MAX_MNK


# --------------------------------------------------------------------------- paths
@njit
def lane_row_start(M, K):
    """First kernel row summed in 16 lanes; ``M`` when every row is a chain.

    The rows from ``M & ~15`` on take the 16-lane branch when there are 1 to 8
    of them and ``K >= 32``.
    """
    m16 = M & ~15
    mm = M - m16
    if mm == 0 or mm > 8 or K < 32:
        return M
    return m16


@njit
def uses_tree_a(i, j, M, N):
    """For a 16-lane element ``(i, j)``: True for tree A (4-row block or 4-column
    block), False for tree B (the 2-/1-row tails' 2-/1-column tails)."""
    return i < (M & ~3) or j < (N & ~3)


@njit
def reduce_tree_a(x):
    """``REDUCE_4``: ``((x0+x1)+(x2+x3) + (x4+x5)+(x6+x7)) + (... + ...)`` as
    ``(G0 + G1) + (G2 + G3)`` with ``G_q = (x[4q]+x[4q+1]) + (x[4q+2]+x[4q+3])``."""
    g0 = (x[0] + x[1]) + (x[2] + x[3])
    g1 = (x[4] + x[5]) + (x[6] + x[7])
    g2 = (x[8] + x[9]) + (x[10] + x[11])
    g3 = (x[12] + x[13]) + (x[14] + x[15])
    return (g0 + g1) + (g2 + g3)


@njit
def reduce_tree_b(x):
    """``_mm512_reduce_add_ps`` (GCC): halves folded, ``h_l = x[l+8] + x[l]``,
    ``q_l = h[l+4] + h[l]``, then ``(q0 + q2) + (q1 + q3)``."""
    h0 = x[8] + x[0]
    h1 = x[9] + x[1]
    h2 = x[10] + x[2]
    h3 = x[11] + x[3]
    h4 = x[12] + x[4]
    h5 = x[13] + x[5]
    h6 = x[14] + x[6]
    h7 = x[15] + x[7]
    q0 = h4 + h0
    q1 = h5 + h1
    q2 = h6 + h2
    q3 = h7 + h3
    return (q0 + q2) + (q1 + q3)


@njit
def chain_dot(a, b):
    """float32 ``Σ a[k]·b[k]`` as one FMA chain from +0, k ascending."""
    acc = np.float32(0.0)
    for k in range(a.shape[0]):
        acc = fma32(a[k], b[k], acc)
    return acc


@njit
def lanes16_dot(a, b, tree_a, lanes):
    """float32 ``Σ a[k]·b[k]`` in 16 FMA lanes (lane ``k % 16``) reduced by tree A
    (``tree_a``) or tree B. ``lanes``: a (16,) float32 scratch."""
    for l in range(16):
        lanes[l] = 0.0
    n = a.shape[0]
    n16 = n & ~15
    for k0 in range(0, n16, 16):
        for l in range(16):
            lanes[l] = fma32(a[k0 + l], b[k0 + l], lanes[l])
    for k in range(n16, n):
        l = k - n16
        lanes[l] = fma32(a[k], b[k], lanes[l])
    if tree_a:
        return reduce_tree_a(lanes)
    return reduce_tree_b(lanes)


# --------------------------------------------------------------------------- generic
@njit
def sgemm_small_nn(A, B, C, beta_one):
    """The kernel on logical matrices: ``C = A @ B (+ C when beta_one)``, in place.

    ``A`` (M, K), ``B`` (K, N), ``C`` (M, N) float32, any strides (pass
    transposed views to express OpenBLAS's column-major operands: the
    kernel's element ``(i, j)`` is ``C[i, j]`` here). ``alpha = 1``. The
    reference implementation of the paths; the call sites use the
    specialised loops below, which give the same bits.
    """
    M, K = A.shape
    N = B.shape[1]
    start = lane_row_start(M, K)
    lanes = np.empty(16, np.float32)
    a = np.empty(K, np.float32)
    b = np.empty(K, np.float32)
    for j in range(N):
        for k in range(K):
            b[k] = B[k, j]
        for i in range(M):
            for k in range(K):
                a[k] = A[i, k]
            if i < start:
                s = chain_dot(a, b)
            else:
                s = lanes16_dot(a, b, uses_tree_a(i, j, M, N), lanes)
            if beta_one:
                C[i, j] = C[i, j] + s
            else:
                C[i, j] = s


def sgemm(A, B, C=None, beta: float = 0.0, alpha: float = 1.0) -> np.ndarray:
    """``alpha·A @ B + beta·C`` as OpenBLAS's SkylakeX small kernel computes it.

    Parameters
    ----------
    A : (M, K) float32
    B : (K, N) float32
    C : (M, N) float32, optional
        Required when ``beta == 1``; not modified.
    beta : 0 or 1
    alpha : 1
        Other values are rejected (the kernel's rounding is only defined
        here for the ``alpha = 1``, ``beta ∈ {0, 1}`` every caller uses).

    Returns
    -------
    (M, N) float32
    """
    if alpha != 1.0 or beta not in (0.0, 1.0):
        raise ValueError("only alpha = 1 and beta in {0, 1} are emulated")
    A = np.asarray(A, dtype=np.float32)
    B = np.asarray(B, dtype=np.float32)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"shapes {A.shape} and {B.shape} do not multiply")
    if not small_kernel_permitted(A.shape[0], B.shape[1], A.shape[1]):
        raise ValueError("M·N·K above 1e6: OpenBLAS would not use the small kernel")
    out = np.zeros((A.shape[0], B.shape[1]), np.float32)
    if beta == 1.0:
        if C is None:
            raise ValueError("beta = 1 needs C")
        out[...] = np.asarray(C, dtype=np.float32)
    sgemm_small_nn(A, B, out, beta == 1.0)
    return out


# --------------------------------------------------------------------------- call sites
@njit
def hessian_nb(J, jw, reg):
    """OpenFace's NU-RLMS Hessian ``J_w_t · J + diag(reg)`` through the small kernel.

    ``sgemm_(N, N, k, k, R, J, k, J_w_t, R, 1, H, k)`` with ``H`` holding
    ``diag(reg)``: kernel element ``(i, j)`` is ``H[j, i]``, the sum over the
    rows r of ``J[r, i]·jw[r, j]`` (``jw = J_w_t.T``, the weighted Jacobian),
    then ``+ C`` once. Columns ``q`` of H below :func:`lane_row_start` are FMA
    chains, the others 16 lanes with tree A unless both ``p, q >= k & ~3``.
    Every accumulator row runs over all p at once (contiguous rows of
    ``jw``), so the loops vectorise; the result is not exactly symmetric in
    general (a chain above the diagonal, lanes below it for k = 38, 40).

    Parameters
    ----------
    J, jw : (R, k) float32, C-contiguous (the same array for unit weights)
    reg : (k,) float32

    Returns
    -------
    (k, k) float32, row-major Hessian
    """
    R, k = J.shape
    H = np.empty((k, k), np.float32)
    kc = lane_row_start(k, R)
    zero = np.float32(0.0)
    if kc > 0:
        # The chains in blocks of 8 columns q by 8 rows p (fma_chains_8x8: the 64 chains
        # in registers); fma(jw, J) is fma(J, jw), the product being exact. Operands
        # padded with zero columns to whole blocks; the padding's chains are dropped.
        kp = -(-k // CHAIN_BLOCK) * CHAIN_BLOCK
        jwp = np.zeros((R, kp), np.float32)
        for r in range(R):
            for p in range(k):
                jwp[r, p] = jw[r, p]
        w8 = np.empty((R, CHAIN_BLOCK), np.float32)
        blk = np.empty((CHAIN_BLOCK, CHAIN_BLOCK), np.float32)
        for q0 in range(0, kc, CHAIN_BLOCK):
            for r in range(R):
                for j in range(CHAIN_BLOCK):
                    w8[r, j] = J[r, q0 + j] if q0 + j < kc else zero
            for p0 in range(0, k, CHAIN_BLOCK):
                fma_chains_8x8(jwp, w8, p0, blk)
                for j in range(min(CHAIN_BLOCK, kc - q0)):
                    q = q0 + j
                    for l in range(min(CHAIN_BLOCK, k - p0)):
                        p = p0 + l
                        c = reg[p] if p == q else zero
                        H[p, q] = c + blk[j, l]
    if kc < k:
        nl = k - kc
        lanes = np.zeros((nl, 16, k), np.float32)   # lanes[q - kc, l, p]
        for r in range(R):
            jwr = jw[r]
            ln = r & 15
            for qq in range(nl):
                x = J[r, kc + qq]
                a = lanes[qq, ln]
                for p in range(k):
                    a[p] = fma32(x, jwr[p], a[p])
        k4 = k & ~3
        t = np.empty(16, np.float32)
        for qq in range(nl):
            q = kc + qq
            for p in range(k):
                for l in range(16):
                    t[l] = lanes[qq, l, p]
                s = reduce_tree_a(t) if (q < k4 or p < k4) else reduce_tree_b(t)
                c = reg[p] if p == q else zero
                H[p, q] = c + s
    return H


@njit
def gemv_m1_nb(x, vt, c, out, beta_one):
    """The kernel with M = 1: ``out[j] = c[j] + Σ_k x[k]·vt[k, j]`` (``beta_one``)
    or the sum alone.

    ``sgemm_(N, N, 1, N, K, 1, x, 1, V, K, beta, out, 1)`` with ``V`` (N, K)
    row-major, passed here transposed (``vt``: (K, N) C-contiguous) so that all
    N outputs advance together. K < 32: one FMA chain per output; otherwise 16
    lanes per output, tree A for ``j < N & ~3``, tree B for the rest.

    Parameters
    ----------
    x : (K,) float32
    vt : (K, N) float32, C-contiguous
    c : (N,) float32
        Ignored unless ``beta_one``.
    out : (N,) float32
        Written; may be ``c`` itself.
    """
    K, N = vt.shape
    if lane_row_start(1, K) == 1:
        acc = np.zeros(N, np.float32)
        for k in range(K):
            xk = x[k]
            row = vt[k]
            for j in range(N):
                acc[j] = fma32(xk, row[j], acc[j])
        if beta_one:
            for j in range(N):
                out[j] = c[j] + acc[j]
        else:
            for j in range(N):
                out[j] = acc[j]
        return
    lanes = np.zeros((16, N), np.float32)
    for k in range(K):
        xk = x[k]
        row = vt[k]
        ln = lanes[k & 15]
        for j in range(N):
            ln[j] = fma32(xk, row[j], ln[j])
    n4 = N & ~3
    t = np.empty(16, np.float32)
    for j in range(N):
        for l in range(16):
            t[l] = lanes[l, j]
        s = reduce_tree_a(t) if j < n4 else reduce_tree_b(t)
        out[j] = c[j] + s if beta_one else s


# --------------------------------------------------------------------------- OpenCV
@njit
def opencv_gemv_add_nb(v, p, c, out):
    """OpenCV's own ``cv::gemm(V, p, 1, c, 1)`` for a column vector ``p``
    (``M + V * p`` as a MatExpr), below the 100 rows at which OpenCV hands
    the product to BLAS.

    ``gemmImpl`` turns a one-column product into the ``A·Bᵀ`` branch of
    ``GEMMSingleMul<float, double>``: per output row, four double accumulators
    take the products ``k ≡ 0, 1, 2, 3 (mod 4)`` of the unrolled part
    (``k <= n - 4`` in steps of 4), the leftover k go to the first one; then
    ``((s0 + s1) + s2) + s3``, times alpha (1), plus ``double(c)`` (beta 1),
    rounded once to float. A float32 product is exact in double, so a
    compiler's FMA contraction would not change any of this.

    Parameters
    ----------
    v : (N, K) float32
    p : (K,) float32
    c : (N,) float32
    out : (N,) float32
    """
    N, K = v.shape
    k4 = K - 3                      # the unrolled loop runs while k <= K - 4
    for i in range(N):
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        k = 0
        while k < k4:
            s0 += np.float64(v[i, k]) * np.float64(p[k])
            s1 += np.float64(v[i, k + 1]) * np.float64(p[k + 1])
            s2 += np.float64(v[i, k + 2]) * np.float64(p[k + 2])
            s3 += np.float64(v[i, k + 3]) * np.float64(p[k + 3])
            k += 4
        while k < K:
            s0 += np.float64(v[i, k]) * np.float64(p[k])
            k += 1
        s = ((s0 + s1) + s2) + s3
        out[i] = np.float32(s + np.float64(c[i]))
