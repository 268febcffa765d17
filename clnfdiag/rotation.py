"""Rotation conversions with OpenFace 2.x's numerics (``Utilities`` rotation helpers).

Conventions follow OpenFace: Euler angles are ``(pitch, yaw, roll)`` = rotations about
x, y, z, composed as ``R = Rx @ Ry @ Rz``. Euler <-> matrix conversions run in float32
because OpenFace does them on ``cv::Matx33f`` / ``cv::Vec3f``; the axis-angle
conversions go through ``cv::Rodrigues``, which works in float64 internally and only
rounds its result to float32, so they are done in float64 here too.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numpy.linalg import _umath_linalg

F32 = np.float32

# The float32/float64 arithmetic between the transcendental calls is compiled
# (numba, no fastmath, numpy error model: a float division by zero gives inf or
# NaN as in numpy). Transcendentals (numpy's own float32 sin/cos/arcsin/arctan2
# loops), LAPACK (SVD, determinant) and BLAS products (``@``) stay numpy calls,
# so every value is the one the plain numpy expressions give.
_njit = numba.njit(cache=True, nogil=True, error_model="numpy")


def _svd(m64: np.ndarray):
    """``np.linalg.svd`` of a finite 3x3 float64 matrix without the wrapper's
    overhead: the same LAPACK gufunc with the same signature. Non-finite input
    (or a non-converged result) goes through ``np.linalg.svd`` itself, for its
    error handling."""
    # The checks only pick the path (both give the same values when they succeed).
    if not math.isfinite(sum(m64.ravel().tolist())):
        return np.linalg.svd(m64)
    u, s, vt = _umath_linalg.svd_f(m64, signature="d->ddd")
    if not math.isfinite(sum(s.tolist())):   # pragma: no cover - LAPACK did not converge
        return np.linalg.svd(m64)
    return u, s, vt


def _det(m64: np.ndarray) -> np.float64:
    """``np.linalg.det`` of a 3x3 float64 matrix (same LAPACK gufunc)."""
    return _umath_linalg.det(m64, signature="d->d")


@_njit
def _euler_matrix_nb(s, c):
    s1, s2, s3 = s[0], s[1], s[2]
    c1, c2, c3 = c[0], c[1], c[2]
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


@_njit
def _quaternion_terms_nb(r):
    """float32 ``[sin(yaw), pitch y, pitch x, roll y, roll x]`` of RotationMatrix2Euler."""
    one, two, four = np.float32(1), np.float32(2), np.float32(4)
    q0 = np.sqrt(one + r[0, 0] + r[1, 1] + r[2, 2]) / two
    q1 = (r[2, 1] - r[1, 2]) / (four * q0)
    q2 = (r[0, 2] - r[2, 0]) / (four * q0)
    q3 = (r[1, 0] - r[0, 1]) / (four * q0)
    t1 = two * (q0 * q2 + q1 * q3)
    if t1 < np.float32(-1):           # np.clip; NaN passes through
        t1 = np.float32(-1)
    elif t1 > one:
        t1 = one
    out = np.empty(5, dtype=np.float32)
    out[0] = t1
    out[1] = two * (q0 * q1 - q2 * q3)
    out[2] = q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3
    out[3] = two * (q0 * q3 - q1 * q2)
    out[4] = q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3
    return out


@_njit
def _rodrigues_matrix_nb(c, s, u):
    """``c * I + (1 - c) * outer(u, u) + s * skew(u)`` in float64, element by
    element as the numpy expression, rounded to float32."""
    skew = np.zeros((3, 3))
    skew[0, 1] = -u[2]
    skew[0, 2] = u[1]
    skew[1, 0] = u[2]
    skew[1, 2] = -u[0]
    skew[2, 0] = -u[1]
    skew[2, 1] = u[0]
    out = np.empty((3, 3), dtype=np.float32)
    omc = 1.0 - c
    for i in range(3):
        for j in range(3):
            eye = 1.0 if i == j else 0.0
            out[i, j] = np.float32(c * eye + omc * (u[i] * u[j]) + s * skew[i, j])
    return out


@_njit
def _in_range_nb(m):
    """``np.all(np.abs(m) < 100.0)`` (False on NaN)."""
    for i in range(3):
        for j in range(3):
            if not abs(m[i, j]) < 100.0:
                return False
    return True


@_njit
def _skew_vector_nb(m):
    """``[m21 - m12, m02 - m20, m10 - m01]`` (float64)."""
    r = np.empty(3)
    r[0] = m[2, 1] - m[1, 2]
    r[1] = m[0, 2] - m[2, 0]
    r[2] = m[1, 0] - m[0, 1]
    return r


@_njit
def _scaled_f32_nb(r, f):
    """``(r * f).astype(float32)``."""
    out = np.empty(3, dtype=np.float32)
    for i in range(3):
        out[i] = np.float32(r[i] * f)
    return out


_EPS64 = float(np.finfo(np.float64).eps)


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
    e = np.asarray(euler, dtype=F32).reshape(3)
    # Products grouped left to right as the C++ expressions are, so that float32
    # rounding happens at the same places (:func:`_euler_matrix_nb`):
    # [[c2 c3, -c2 s3, s2], [c1 s3 + c3 s1 s2, c1 c3 - s1 s2 s3, -c2 s1],
    #  [s1 s3 - c1 c3 s2, c3 s1 + c1 s2 s3, c1 c2]].
    return _euler_matrix_nb(np.sin(e), np.cos(e))


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
    r = np.ascontiguousarray(rot, dtype=F32).reshape(3, 3)
    # q0 = sqrt(1 + trace) / 2, q1..q3 from the skew part over 4 q0, all float32;
    # rounding can push the sine of the yaw just past +-1: clipped.
    t = _quaternion_terms_nb(r)
    yaw = np.arcsin(t[0])
    pitch = np.arctan2(t[1], t[2])
    roll = np.arctan2(t[3], t[4])
    return np.array([pitch, yaw, roll], dtype=F32)


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
    r = np.asarray(axis_angle, dtype=F32).reshape(3).astype(np.float64)
    theta = math.sqrt(r @ r)                          # correctly rounded, as np.sqrt
    if theta < _EPS64:
        return np.eye(3, dtype=F32)
    c, s = np.cos(theta), np.sin(theta)
    u = r / theta
    # c * I + (1 - c) * outer(u, u) + s * [u]x, in float64, rounded once.
    return _rodrigues_matrix_nb(float(c), float(s), u)


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
        SVD) and works in float64 throughout; only the result is rounded.
    """
    m = np.asarray(rot, dtype=F32).reshape(3, 3).astype(np.float64)
    if not _in_range_nb(m):
        # OpenCV's range check gives a zero vector for garbage input.
        return np.zeros(3, dtype=F32)
    u, _, vt = _svd(m)
    m = u @ vt
    r = _skew_vector_nb(m)
    s = math.sqrt((r @ r) * 0.25)                     # correctly rounded, as np.sqrt
    c = min(max((m[0, 0] + m[1, 1] + m[2, 2] - 1.0) * 0.5, -1.0), 1.0)
    theta = np.arccos(c)
    if s >= 1e-5:
        return _scaled_f32_nb(r, float(theta / (2.0 * s)))
    if c > 0:
        return np.zeros(3, dtype=F32)
    return _half_turn_axis(m, theta).astype(F32)


def _half_turn_axis(m: np.ndarray, theta: float) -> np.ndarray:
    """Axis-angle of a rotation by about 180 degrees, where the skew part vanishes.

    The axis comes from the diagonal; signs are recovered from off-diagonal terms
    the way OpenCV does it.
    """
    x = np.sqrt(max((m[0, 0] + 1.0) * 0.5, 0.0))
    y = np.sqrt(max((m[1, 1] + 1.0) * 0.5, 0.0)) * (-1.0 if m[0, 1] < 0 else 1.0)
    z = np.sqrt(max((m[2, 2] + 1.0) * 0.5, 0.0)) * (-1.0 if m[0, 2] < 0 else 1.0)
    if abs(x) < abs(y) and abs(x) < abs(z) and (m[1, 2] > 0) != (y * z > 0):
        z = -z
    r = np.array([x, y, z])
    return r * (theta / np.sqrt(r @ r))


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
    never returned.

    Parameters
    ----------
    rot : array_like, (3, 3)
        Cast to float32 first.

    Returns
    -------
    (3, 3) float32
        The SVD is done in float64 and rounded once; OpenCV's float32 Jacobi SVD
        lands within a few float32 ulps of that.
    """
    m = np.asarray(rot, dtype=F32).astype(np.float64)
    u, _, vt = _svd(m)
    d = _det(u @ vt)
    return (u @ np.diag([1.0, 1.0, d]) @ vt).astype(F32)
