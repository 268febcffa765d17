"""2D similarity transforms between the image and the reference frame (OpenFace 2.x).

``align_shapes_with_scale(src, dst)`` is ``Utilities::AlignShapesWithScale``: the 2x2
matrix ``A = s R`` (no translation) such that ``A @ (p_src - mean_src)`` best matches
``p_dst - mean_dst``. In CLNF::NU_RLMS's caller it is called as
``sim_img_to_ref = align(image_shape, reference_shape)`` and
``sim_ref_to_img = sim_img_to_ref.inv(DECOMP_LU)``; :func:`similarity_transforms`
returns that pair.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def align_shapes_with_scale(src, dst) -> np.ndarray:
    """Scaled rotation taking centred ``src`` onto centred ``dst`` (``AlignShapesWithScale``).

    Both shapes are centred on their means (means accumulated in float64, stored as
    float32 like ``cv::mean``), scaled to unit RMS radius, and the rotation is found by
    2D Kabsch with reflections excluded. The scale is ``rms(dst) / rms(src)``.

    Parameters
    ----------
    src, dst : array_like, (n, 2)
        Corresponding points, columns ``(x, y)``; cast to float32.

    Returns
    -------
    (2, 2) float32
        ``A`` with ``A @ (src_i - mean_src) ~= dst_i - mean_dst``.
    """
    src_n, s_src = _centre_and_scale(np.asarray(src, dtype=F32))
    dst_n, s_dst = _centre_and_scale(np.asarray(dst, dtype=F32))
    scale = s_dst / s_src
    rot = _kabsch_2d(src_n, dst_n)
    # OpenFace rounds R to float32 (a Matx22f) before multiplying by the scale.
    return (scale * rot).astype(F32)


def _centre_and_scale(pts: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Mean-centred points divided by their RMS radius, and that radius (float32)."""
    n = pts.shape[0]
    mean = pts.astype(np.float64).mean(axis=0).astype(F32)
    centred = (pts - mean).astype(F32)
    sq = (centred * centred).astype(np.float64)
    radius = F32(np.sqrt(sq.sum() / n))
    # OpenCV divides a float matrix by a scalar as a multiplication by float32(1/r).
    inv = F32(1.0 / np.float64(radius))
    return (centred * inv).astype(F32), radius


def _kabsch_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Proper rotation R (2x2 float32) minimising ``sum |R src_i - dst_i|^2``.

    Like OpenCV: the 2x2 cross-covariance is summed in float64 and stored as float32,
    and its SVD and the product ``V diag(1, +-1) U^T`` are float32 (measured on the
    goldens: within 1 float32 ulp of the largest entry, against 2 for a float64 SVD).
    """
    cov = (src.astype(np.float64).T @ dst.astype(np.float64)).astype(F32)
    u, _, vt = np.linalg.svd(cov)
    d = np.linalg.det((vt.T @ u.T).astype(np.float64))
    corr = np.diag(np.array([1.0, 1.0 if d > 0 else -1.0], dtype=F32))
    return (vt.T @ corr @ u.T).astype(F32)


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
    m = np.asarray(a, dtype=F32)
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    if det == 0:
        return np.zeros((2, 2), dtype=F32)
    r = F32(1) / det
    return np.array([[m[1, 1] * r, -m[0, 1] * r], [-m[1, 0] * r, m[0, 0] * r]], dtype=F32)


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
    img_to_ref = align_shapes_with_scale(image_shape, reference_shape)
    return img_to_ref, invert_2x2(img_to_ref)
