"""Rotation conversions with OpenFace 2.x's numerics (``Utilities`` rotation helpers).

Conventions follow OpenFace: Euler angles are ``(pitch, yaw, roll)`` = rotations about
x, y, z, composed as ``R = Rx @ Ry @ Rz``. Euler <-> matrix conversions run in float32
because OpenFace does them on ``cv::Matx33f`` / ``cv::Vec3f`` with the single-precision
libm (``sinf``, ``cosf``, ``asinf``, ``atan2f``); the axis-angle conversions go through
``cv::Rodrigues``, which works in float64 (OpenCV's own Jacobi SVD, ``cos``, ``sin``,
``acos``) and only rounds its result to float32.

Everything is compiled, in the C++ order of operations (:mod:`clnfdiag.numerics`:
OpenCV's SVD/gemm/determinant ports and the libm calls whose results do not depend on
the CPU), so the values are the goldens' bits on any CPU. The ``*_nb`` kernels are
used directly by :mod:`clnfdiag.pdm`.
"""
from __future__ import annotations

import math

import numpy as np

from .numerics import libm, njit_np
from .numerics.cvlinalg import det3, gemm_f32, matx_mul, svd_f32, svd_f64

F32 = np.float32

_EPS64 = float(np.finfo(np.float64).eps)


# ------------------------------------------------------------- Euler angles
@njit_np
def euler_matrix_nb(e0, e1, e2):
    """``Euler2RotationMatrix``: float32 sines/cosines (``sinf``/``cosf``) and the
    products grouped left to right as the C++ expressions are::

        [[c2 c3, -c2 s3, s2], [c1 s3 + c3 s1 s2, c1 c3 - s1 s2 s3, -c2 s1],
         [s1 s3 - c1 c3 s2, c3 s1 + c1 s2 s3, c1 c2]]
    """
    s1, s2, s3 = libm.sinf(e0), libm.sinf(e1), libm.sinf(e2)
    c1, c2, c3 = libm.cosf(e0), libm.cosf(e1), libm.cosf(e2)
    out = np.empty((3, 3), dtype=np.float32)
    out[0, 0] = c2 * c3
    out[0, 1] = -c2 * s3
    out[0, 2] = s2
    out[1, 0] = c1 * s3 + c3 * s1 * s2
    out[1, 1] = c1 * c3 - s1 * s2 * s3
    out[1, 2] = -c2 * s1
    out[2, 0] = s1 * s3 - c1 * c3 * s2
    out[2, 1] = c3 * s1 + c1 * s2 * s3
    out[2, 2] = c1 * c2
    return out


@njit_np
def matrix_euler_nb(r):
    """``RotationMatrix2Euler``: float32 quaternion, ``t1`` clipped to [-1, 1],
    yaw ``asinf(t1)``, pitch and roll by ``atan2f``. (3,) float32 ``(pitch, yaw, roll)``."""
    one, two, four = np.float32(1), np.float32(2), np.float32(4)
    q0 = np.float32(math.sqrt(one + r[0, 0] + r[1, 1] + r[2, 2])) / two
    q1 = (r[2, 1] - r[1, 2]) / (four * q0)
    q2 = (r[0, 2] - r[2, 0]) / (four * q0)
    q3 = (r[1, 0] - r[0, 1]) / (four * q0)
    t1 = two * (q0 * q2 + q1 * q3)
    if t1 > one:
        t1 = one
    if t1 < -one:
        t1 = -one
    out = np.empty(3, dtype=np.float32)
    out[1] = libm.asinf(t1)
    out[0] = libm.atan2f(two * (q0 * q1 - q2 * q3), q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3)
    out[2] = libm.atan2f(two * (q0 * q3 - q1 * q2), q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3)
    return out


# ------------------------------------------------------------- cv::Rodrigues
@njit_np
def rodrigues_vec_nb(r0, r1, r2):
    """``cv::Rodrigues`` vector -> (3, 3) float32 matrix (float32 vector in, as OpenFace passes).

    ``theta = |r|`` in float64; below DBL_EPSILON the identity; else
    ``r *= 1/theta`` and ``c I + (1 - c) r r^T + s [r]x`` element by element, rounded once.
    """
    rx = np.float64(r0)
    ry = np.float64(r1)
    rz = np.float64(r2)
    out = np.zeros((3, 3), dtype=np.float32)
    theta = math.sqrt(rx * rx + ry * ry + rz * rz)
    if theta < _EPS64:
        out[0, 0] = 1
        out[1, 1] = 1
        out[2, 2] = 1
        return out
    c = libm.cos(theta)
    s = libm.sin(theta)
    c1 = 1.0 - c
    itheta = 1.0 / theta
    rx *= itheta
    ry *= itheta
    rz *= itheta
    rrt = (rx * rx, rx * ry, rx * rz, rx * ry, ry * ry, ry * rz, rx * rz, ry * rz, rz * rz)
    rsk = (0.0, -rz, ry, rz, 0.0, -rx, -ry, rx, 0.0)
    eye = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    for k in range(9):
        out[k // 3, k % 3] = c * eye[k] + c1 * rrt[k] + s * rsk[k]
    return out


@njit_np
def rodrigues_mat_nb(r32):
    """``cv::Rodrigues`` (3, 3) float32 matrix -> (3,) float32 vector.

    Converted to float64; outside [-100, 100) (or NaN) a zero vector. The nearest
    rotation ``U Vt`` from OpenCV's float64 Jacobi SVD (a ``Matx`` product),
    ``s = |skew| / 2``, ``c = (trace - 1) / 2`` clipped, ``theta = acos(c)``;
    ``r * (theta * (1 / (2 s)))``, or the half-turn / zero cases for ``s < 1e-5``.
    """
    m = np.empty((3, 3))
    out = np.zeros(3, dtype=np.float32)
    for i in range(3):
        for j in range(3):
            v = np.float64(r32[i, j])
            if not (v >= -100.0 and v < 100.0):
                return out
            m[i, j] = v
    _w, u, vt = svd_f64(m)
    rr = matx_mul(u, vt)
    rx = rr[2, 1] - rr[1, 2]
    ry = rr[0, 2] - rr[2, 0]
    rz = rr[1, 0] - rr[0, 1]
    s = math.sqrt((rx * rx + ry * ry + rz * rz) * 0.25)
    c = (rr[0, 0] + rr[1, 1] + rr[2, 2] - 1.0) * 0.5
    c = 1.0 if c > 1.0 else (-1.0 if c < -1.0 else c)
    theta = libm.acos(c)
    if s < 1e-5:
        if c > 0:
            rx = 0.0
            ry = 0.0
            rz = 0.0
        else:
            t = (rr[0, 0] + 1.0) * 0.5
            rx = math.sqrt(max(t, 0.0))
            t = (rr[1, 1] + 1.0) * 0.5
            ry = math.sqrt(max(t, 0.0)) * (-1.0 if rr[0, 1] < 0 else 1.0)
            t = (rr[2, 2] + 1.0) * 0.5
            rz = math.sqrt(max(t, 0.0)) * (-1.0 if rr[0, 2] < 0 else 1.0)
            if abs(rx) < abs(ry) and abs(rx) < abs(rz) and (rr[1, 2] > 0) != (ry * rz > 0):
                rz = -rz
            theta /= math.sqrt(rx * rx + ry * ry + rz * rz)
            rx *= theta
            ry *= theta
            rz *= theta
    else:
        vth = 1.0 / (2.0 * s)
        vth *= theta
        rx *= vth
        ry *= vth
        rz *= vth
    out[0] = rx
    out[1] = ry
    out[2] = rz
    return out


# ------------------------------------------------------------- PDM::Orthonormalise
@njit_np
def orthonormalise_nb(r):
    """``PDM::Orthonormalise``: ``U diag(1, 1, (float)det(U Vt)) Vt`` with OpenCV's
    float32 Jacobi SVD, its 3x3 gemm (flags 0: float32 sums) and determinant."""
    none = np.zeros((0, 0), dtype=np.float32)
    _w, u, vt = svd_f32(r)
    x = gemm_f32(u, vt, 1.0, none, 0.0, 0)
    w = np.eye(3, dtype=np.float32)
    w[2, 2] = det3(x)
    return gemm_f32(gemm_f32(u, w, 1.0, none, 0.0, 0), vt, 1.0, none, 0.0, 0)


@njit_np
def compose_rotation_nb(euler, wx, wy, wz):
    """The rotation part of ``PDM::UpdateModelParameters``: ``R1 = Euler(euler)``,
    ``R2 = Orthonormalise([[1, -wz, wy], [wz, 1, -wx], [-wy, wx, 1]])``, ``R1 R2`` as a
    ``Matx33f`` product, then back to Euler angles through ``cv::Rodrigues`` twice.
    (3,) float32; zeros if any angle is NaN (OpenFace's guard)."""
    r1 = euler_matrix_nb(euler[0], euler[1], euler[2])
    r2 = np.eye(3, dtype=np.float32)
    r2[2, 1] = wx
    r2[1, 2] = -wx
    r2[0, 2] = wy
    r2[2, 0] = -wy
    r2[1, 0] = wz
    r2[0, 1] = -wz
    r3 = matx_mul(r1, orthonormalise_nb(r2))
    aa = rodrigues_mat_nb(r3)
    e = matrix_euler_nb(rodrigues_vec_nb(aa[0], aa[1], aa[2]))
    if math.isnan(e[0]) or math.isnan(e[1]) or math.isnan(e[2]):
        e[:] = 0
    return e


# ------------------------------------------------------------- public API
def _vec3(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=F32).reshape(3)


def _mat3(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=F32).reshape(3, 3)


def euler_to_rotation_matrix(euler) -> np.ndarray:
    """Rotation matrix from Euler angles, in float32 like ``Euler2RotationMatrix``.

    Parameters
    ----------
    euler : array_like, (3,)
        ``(pitch, yaw, roll)`` in radians; cast to float32.

    Returns
    -------
    (3, 3) float32
        ``Rx(pitch) @ Ry(yaw) @ Rz(roll)``.
    """
    e = _vec3(euler)
    return euler_matrix_nb(e[0], e[1], e[2])


def rotation_matrix_to_euler(rot) -> np.ndarray:
    """Euler angles of a rotation matrix through a quaternion, like ``RotationMatrix2Euler``.

    Parameters
    ----------
    rot : array_like, (3, 3)
        Rotation matrix; cast to float32.

    Returns
    -------
    (3,) float32
        ``(pitch, yaw, roll)``. The quaternion route is undefined for rotations of
        180 degrees (``q0 = 0``): NaNs come out then, as in OpenFace.
    """
    return matrix_euler_nb(_mat3(rot))


def axis_angle_to_rotation_matrix(axis_angle) -> np.ndarray:
    """Rotation matrix of an axis-angle vector (``cv::Rodrigues`` vector -> matrix).

    Parameters
    ----------
    axis_angle : array_like, (3,)
        Rotation axis times angle (radians); cast to float32 first, as OpenFace
        passes a ``cv::Vec3f``.

    Returns
    -------
    (3, 3) float32
        Computed in float64 and rounded once, as OpenCV does.
    """
    r = _vec3(axis_angle)
    return rodrigues_vec_nb(r[0], r[1], r[2])


def rotation_matrix_to_axis_angle(rot) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (``cv::Rodrigues`` matrix -> vector).

    Parameters
    ----------
    rot : array_like, (3, 3)
        Approximately orthonormal matrix; cast to float32 first (OpenFace passes a
        ``cv::Matx33f``).

    Returns
    -------
    (3,) float32
        OpenCV first replaces the matrix by its nearest rotation (``U @ Vt`` of its
        SVD) and works in float64 throughout; only the result is rounded. A matrix
        with an entry outside [-100, 100) gives a zero vector.
    """
    return rodrigues_mat_nb(_mat3(rot))


def euler_to_axis_angle(euler) -> np.ndarray:
    """``(pitch, yaw, roll)`` -> axis-angle, via the float32 rotation matrix.

    Returns
    -------
    (3,) float32
    """
    return rotation_matrix_to_axis_angle(euler_to_rotation_matrix(euler))


def axis_angle_to_euler(axis_angle) -> np.ndarray:
    """Axis-angle -> ``(pitch, yaw, roll)``, via the float32 rotation matrix.

    Returns
    -------
    (3,) float32
    """
    return rotation_matrix_to_euler(axis_angle_to_rotation_matrix(axis_angle))


def orthonormalise(rot) -> np.ndarray:
    """Nearest proper rotation to a 3x3 matrix (``PDM::Orthonormalise``).

    Takes ``U @ diag(1, 1, det(U @ Vt)) @ Vt`` from the SVD so that a reflection is
    never returned (the determinant is rounded to float32 first, as OpenFace
    stores it in a float matrix).

    Parameters
    ----------
    rot : array_like, (3, 3)
        Cast to float32 first.

    Returns
    -------
    (3, 3) float32
        OpenCV's float32 Jacobi SVD and gemm, operation for operation.
    """
    return orthonormalise_nb(_mat3(rot))
