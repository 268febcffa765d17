"""2D similarity transforms between the image and the reference frame (OpenFace 2.x).

``align_shapes_with_scale(src, dst)`` is ``Utilities::AlignShapesWithScale``: the 2x2
matrix ``A = s R`` (no translation) such that ``A @ (p_src - mean_src)`` best matches
``p_dst - mean_dst``. In CLNF::NU_RLMS's caller it is called as
``sim_img_to_ref = align(image_shape, reference_shape)`` and
``sim_ref_to_img = sim_img_to_ref.inv(DECOMP_LU)``; :func:`similarity_transforms`
returns that pair.

Every step is the OpenCV 4.6 call OpenFace makes, ported operation for
operation in compiled code (:mod:`clnfdiag.numerics.cvlinalg`): the result is
bit-identical to the C++ goldens (every pass of every golden) on any CPU.
"""
from __future__ import annotations

import numpy as np

from .numerics import njit_np
from .numerics.cvlinalg import GEMM_1_T, GEMM_2_T, det2, gemm_f32, mean_col_f32, sum_f32, svd_f32

F32 = np.float32


@njit_np
def _centre_and_scale_nb(pts):
    """Mean-centred points divided by their RMS radius, and that radius (float32).

    ``cv::mean`` of each column (float64 sum, times 1/n, stored as float), the
    float32 subtraction, ``cv::pow(., 2)`` (float32 squares), ``cv::sum`` of the
    squares, ``sqrt(sum / n)`` in float64 stored as float, and the division
    ``Mat / double`` which OpenCV runs as ``convertTo`` with the float32 scale
    ``(float)(1 / r)`` (``x * a + 0``, so -0 becomes +0).
    """
    n = pts.shape[0]
    mx = mean_col_f32(pts, 0)
    my = mean_col_f32(pts, 1)
    centred = np.empty((n, 2), dtype=np.float32)
    sq = np.empty(2 * n, dtype=np.float32)
    for i in range(n):
        x = pts[i, 0] - mx
        y = pts[i, 1] - my
        centred[i, 0] = x
        centred[i, 1] = y
        sq[2 * i] = x * x
        sq[2 * i + 1] = y * y
    radius = np.float32(np.sqrt(sum_f32(sq) / n))
    inv = np.float32(1.0 / np.float64(radius))
    zero = np.float32(0)
    for i in range(n):
        centred[i, 0] = centred[i, 0] * inv + zero
        centred[i, 1] = centred[i, 1] * inv + zero
    return centred, radius


@njit_np
def _kabsch_2d_nb(src, dst):
    """Proper rotation R (2x2 float32) minimising ``sum |R src_i - dst_i|^2`` (``AlignShapesKabsch2D``).

    ``cv::SVD svd(src^T dst)``; ``d = det(V^T^T U^T)`` picks ``corr = diag(1, +-1)``;
    ``R = (V corr) U^T`` as two gemm calls with transpose flags.
    """
    none = np.zeros((0, 0), dtype=np.float32)
    cov = gemm_f32(src, dst, 1.0, none, 0.0, GEMM_1_T)
    _w, u, vt = svd_f32(cov)
    d = det2(gemm_f32(vt, u, 1.0, none, 0.0, GEMM_1_T | GEMM_2_T))
    corr = np.eye(2, dtype=np.float32)
    corr[1, 1] = 1 if d > 0 else -1
    return gemm_f32(gemm_f32(vt, corr, 1.0, none, 0.0, GEMM_1_T), u, 1.0, none, 0.0, GEMM_2_T)


@njit_np
def _align_nb(src, dst):
    src_n, s_src = _centre_and_scale_nb(src)
    dst_n, s_dst = _centre_and_scale_nb(dst)
    scale = s_dst / s_src
    rot = _kabsch_2d_nb(src_n, dst_n)
    out = np.empty((2, 2), dtype=np.float32)
    for i in range(2):
        for j in range(2):
            out[i, j] = scale * rot[i, j]           # ``s * Matx22f`` in float32
    return out


@njit_np
def _invert_2x2_nb(m):
    """``cv::Matx22f::inv(DECOMP_LU)``: float32 determinant and reciprocal, adjugate times it."""
    out = np.zeros((2, 2), dtype=np.float32)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    if det == 0:
        return out
    r = np.float32(1) / det
    out[0, 0] = m[1, 1] * r
    out[0, 1] = -m[0, 1] * r
    out[1, 0] = -m[1, 0] * r
    out[1, 1] = m[0, 0] * r
    return out


def align_shapes_with_scale(src, dst) -> np.ndarray:
    """Scaled rotation taking centred ``src`` onto centred ``dst`` (``AlignShapesWithScale``).

    Both shapes are centred on their means, scaled to unit RMS radius, and the
    rotation is found by 2D Kabsch with reflections excluded (OpenCV's float32
    Jacobi SVD and gemm). The scale is ``rms(dst) / rms(src)``, multiplied into
    the float32 rotation.

    Parameters
    ----------
    src, dst : array_like, (n, 2)
        Corresponding points, columns ``(x, y)``; cast to float32.

    Returns
    -------
    (2, 2) float32
        ``A`` with ``A @ (src_i - mean_src) ~= dst_i - mean_dst``.
    """
    return _align_nb(np.ascontiguousarray(src, dtype=F32), np.ascontiguousarray(dst, dtype=F32))


def invert_2x2(a) -> np.ndarray:
    """Inverse of a 2x2 float32 matrix as ``cv::Matx22f::inv(DECOMP_LU)`` computes it.

    OpenCV's closed form: determinant in float32, its reciprocal in float32, then
    each entry of the adjugate times that reciprocal.

    Parameters
    ----------
    a : array_like, (2, 2)

    Returns
    -------
    (2, 2) float32
        All zeros when the determinant is zero (OpenCV returns a zero matrix when
        the inversion fails).
    """
    return _invert_2x2_nb(np.ascontiguousarray(a, dtype=F32).reshape(2, 2))


@njit_np
def _similarity_nb(image_shape, reference_shape):
    i2r = _align_nb(image_shape, reference_shape)
    return i2r, _invert_2x2_nb(i2r)


def similarity_transforms(image_shape, reference_shape) -> tuple[np.ndarray, np.ndarray]:
    """``(sim_img_to_ref, sim_ref_to_img)`` as OpenFace computes them before a pass.

    Parameters
    ----------
    image_shape : array_like, (n, 2)
        Current landmarks in the image.
    reference_shape : array_like, (n, 2)
        Same local parameters at the patch scale, no rotation or translation.

    Returns
    -------
    sim_img_to_ref : (2, 2) float32
        Maps image offsets to reference-frame offsets.
    sim_ref_to_img : (2, 2) float32
        Its inverse.
    """
    return _similarity_nb(np.ascontiguousarray(image_shape, dtype=F32),
                          np.ascontiguousarray(reference_shape, dtype=F32))
