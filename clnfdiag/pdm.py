"""OpenFace 2.x point distribution model (``LandmarkDetector::PDM``) in numpy.

Parameter conventions are OpenFace's:

* ``params_global`` : (6,) float32 ``[scale, pitch, yaw, roll, t_x, t_y]``;
* ``params_local``  : (m,) float32 non-rigid weights of the principal components;
* a 2D shape is returned as ``(n, 2)`` with columns ``(x, y)``;
* Jacobian rows are ``x0..x(n-1)`` then ``y0..y(n-1)`` and columns
  ``[scale, pitch, yaw, roll, t_x, t_y, mode0..mode(m-1)]``.

OpenFace 2.x keeps the model and every per-fit quantity in float32 (``cv::Mat_<float>``,
``cv::Vec6f``, ``cv::Matx33f``); the functions here do the same and switch to float64 only
where the C++ does (``cv::minMaxLoc`` results, ``cv::Rodrigues``, OpenCV's Cholesky
accumulators, ``cv::norm``).
"""
from __future__ import annotations

from pathlib import Path

import math

import numba
import numpy as np

from .models.pdm_file import PDMData, read_pdm
from .numerics.cholesky import opencv_cholesky_factor, opencv_cholesky_substitute
from .numerics.cvlinalg import GEMM_1_T, GEMM_2_T, gemm_f32, norm_l2_f32
from .numerics.sgemm import gemv_m1_nb, hessian_nb, opencv_gemv_add_nb
from .rotation import compose_rotation_nb, euler_matrix_nb, euler_to_rotation_matrix

F32 = np.float32
#: No C operand for :func:`gemm_f32`.
_NO_C = np.zeros((0, 0), dtype=F32)

#: Number of standard deviations each non-rigid parameter may reach (``PDM::Clamp``).
N_SIGMAS = 3.0

# Elementwise float32 arithmetic of the projection, the Jacobians and the
# parameter update, compiled (numba, no fastmath: the same IEEE float32
# operations, in the same order, as the numpy expressions they replace, each
# written out next to the kernel). Rotations come from :mod:`.rotation`.
_njit = numba.njit(cache=True, nogil=True, error_model="numpy")


@_njit
def _project_nb(xyz, rot, g):
    """(n, 2) float32: ``s * (R[k, 0] X + R[k, 1] Y + R[k, 2] Z) + t_k``, summed left to right."""
    n = xyz.shape[1]
    s = g[0]
    out = np.empty((n, 2), dtype=np.float32)
    for k in range(2):
        r1, r2, r3 = rot[k, 0], rot[k, 1], rot[k, 2]
        t = g[4 + k]
        for i in range(n):
            out[i, k] = s * (r1 * xyz[0, i] + r2 * xyz[1, i] + r3 * xyz[2, i]) + t
    return out


@_njit
def _jacobian_nb(xyz, rot, s, pc, with_modes):
    """(2n, 6 [+ m]) float32 Jacobian, rows x0..x(n-1), y0..y(n-1).

    Rigid columns per row ``r = R[k]``: ``X r1 + Y r2 + Z r3``, ``s (Y r3 - Z r2)``,
    ``-s (X r3 - Z r1)``, ``s (X r2 - Y r1)``, then the translation 1/0;
    non-rigid ``s (r1 Vx + r2 Vy + r3 Vz)``.
    """
    n = xyz.shape[1]
    m = pc.shape[2] if with_modes else 0
    out = np.empty((2 * n, 6 + m), dtype=np.float32)
    one, zero = np.float32(1), np.float32(0)
    ms = -s
    for k in range(2):
        r1, r2, r3 = rot[k, 0], rot[k, 1], rot[k, 2]
        for i in range(n):
            x, y, z = xyz[0, i], xyz[1, i], xyz[2, i]
            row = k * n + i
            out[row, 0] = x * r1 + y * r2 + z * r3
            out[row, 1] = s * (y * r3 - z * r2)
            out[row, 2] = ms * (x * r3 - z * r1)
            out[row, 3] = s * (x * r2 - y * r1)
            out[row, 4] = one if k == 0 else zero
            out[row, 5] = zero if k == 0 else one
            for j in range(m):
                out[row, 6 + j] = s * (r1 * pc[0, i, j] + r2 * pc[1, i, j] + r3 * pc[2, i, j])
    return out


@_njit
def _update_global_nb(dp, g):
    """``PDM::UpdateModelParameters`` on the global parameters: scale and
    translation added in float32, the rotation ``(wx, wy, wz)`` composed through
    rotation matrices (:func:`~clnfdiag.rotation.compose_rotation_nb`: OpenCV's
    SVD/gemm, ``cv::Rodrigues``, single-precision libm), all compiled."""
    g2 = g.copy()
    g2[0] = g[0] + dp[0]
    g2[4] = g[4] + dp[4]
    g2[5] = g[5] + dp[5]
    e = compose_rotation_nb(g[1:4], dp[1], dp[2], dp[3])
    g2[1] = e[0]
    g2[2] = e[1]
    g2[3] = e[2]
    return g2


@_njit
def _translate_diff_nb(xy, g, target, target_minus):
    """(2n, 1) float32 ``target - p`` (or ``p - target``) of the stacked
    ``p = [xy[:, 0] + t_x, xy[:, 1] + t_y]`` (float32 additions, as the numpy
    ``xy[:, k] += g[4 + k]`` followed by the stacking and the subtraction)."""
    n = xy.shape[0]
    out = np.empty((2 * n, 1), dtype=np.float32)
    for k in range(2):
        t = g[4 + k]
        for i in range(n):
            p = xy[i, k] + t
            out[k * n + i, 0] = target[k * n + i, 0] - p if target_minus else p - target[k * n + i, 0]
    return out


@_njit
def _clamp_nb(loc, bound):
    """``np.where(|p| > bound, copysign(bound, p), p)`` (NaN kept)."""
    out = np.empty_like(loc)
    for i in range(loc.shape[0]):
        v = loc[i]
        out[i] = math.copysign(bound[i], v) if abs(v) > bound[i] else v
    return out


def _as_f32(a, shape: tuple[int, ...] | None = None) -> np.ndarray:
    out = np.asarray(a, dtype=F32)
    return out.reshape(shape) if shape is not None else out


class PDM:
    """OpenFace's 3D point distribution model with weak-perspective projection.

    Parameters
    ----------
    data : PDMData
        Mean shape (3n,), principal components (3n, m) and eigenvalues (m,), float32.
    """

    def __init__(self, data: PDMData):
        self.data = data
        self.mean_shape = _as_f32(data.mean_shape)
        self.princ_comp = _as_f32(data.princ_comp)
        self.eigen_values = _as_f32(data.eigen_values)
        n = self.n_points
        # (3, n) and (3, n, m) views: one row per coordinate, so the x/y/z blocks of
        # OpenFace's stacked column vectors can be used without index arithmetic.
        self._mean_xyz = self.mean_shape.reshape(3, n)
        self._pc_xyz = self.princ_comp.reshape(3, n, self.n_modes)
        # CalcShape3D's operands: the mean as one vector, the components mode-major.
        self._mean_flat = np.ascontiguousarray(self.mean_shape.reshape(-1))
        self._pc_t = np.ascontiguousarray(self.princ_comp.reshape(-1, self.n_modes).T)
        #: ``PDM::Clamp``'s bound, 3 sqrt(eigenvalue) in float32.
        self._clamp_bound = F32(N_SIGMAS) * np.sqrt(self.eigen_values)

    @classmethod
    def from_file(cls, path: str | Path) -> "PDM":
        """Read an OpenFace PDM text file (see :func:`read_pdm`)."""
        return cls(read_pdm(path))

    @property
    def n_points(self) -> int:
        return self.data.n_points

    @property
    def n_modes(self) -> int:
        return self.data.n_modes

    def zero_local(self) -> np.ndarray:
        """(m,) float32 zeros: the local parameters of the mean shape."""
        return np.zeros(self.n_modes, dtype=F32)

    # ------------------------------------------------------------------ shapes
    def calc_shape_3d(self, params_local=None) -> np.ndarray:
        """3D shape in model space: ``mean + princ_comp @ params_local``.

        Parameters
        ----------
        params_local : array_like, (m,), optional
            Zeros when omitted.

        Returns
        -------
        (n, 3) float32
            Columns ``(X, Y, Z)``.
        """
        return self._shape_3d_xyz(params_local).T.copy()

    def _shape_3d_xyz(self, params_local) -> np.ndarray:
        """(3, n) float32 rows ``X, Y, Z`` (``PDM::CalcShape3D``).

        OpenFace computes ``mean + princ_comp * p`` with ``sgemm_(N, N, 1, 3n,
        m, 1, p, 1, V, m, 1, shape, 1)`` onto a copy of the mean: OpenBLAS's
        small-matrix kernel with M = 1, i.e. per coordinate 16 FMA lanes over
        the modes and an addition tree (m = 34, 32), or one FMA chain (m = 10),
        then ``mean + sum`` rounded once (:func:`gemv_m1_nb`). Zeros for
        ``params_local=None``, through the same arithmetic (a -0 in the mean
        comes out +0, as in the C++).
        """
        if params_local is None:
            p = self.zero_local()
        else:
            p = np.ascontiguousarray(_as_f32(params_local, (self.n_modes,)))
        out = np.empty(self._mean_flat.shape[0], dtype=F32)
        gemv_m1_nb(p, self._pc_t, self._mean_flat, out, True)
        return out.reshape(3, self.n_points)

    def calc_shape_2d(self, params_local, params_global) -> np.ndarray:
        """Image-space landmarks by weak perspective (``PDM::CalcShape2D``).

        ``x = s * (R[0] . X) + t_x``, ``y = s * (R[1] . X) + t_y``.

        Parameters
        ----------
        params_local : array_like, (m,)
        params_global : array_like, (6,)

        Returns
        -------
        (n, 2) float32
        """
        g = _as_f32(params_global, (6,))
        return _project_nb(self._shape_3d_xyz(params_local), euler_to_rotation_matrix(g[1:4]), g)

    def shape_and_jacobian(self, params_local, params_global,
                           rigid: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(calc_shape_2d, rigid_jacobian or jacobian)`` of the same parameters,
        sharing the 3D shape and the rotation matrix (the values are those of
        the separate calls).

        Returns
        -------
        shape : (n, 2) float32
        jacobian : (2n, 6) or (2n, 6 + m) float32
        """
        g = _as_f32(params_global, (6,))
        xyz = self._shape_3d_xyz(params_local)
        rot = euler_to_rotation_matrix(g[1:4])
        return (_project_nb(xyz, rot, g),
                _jacobian_nb(xyz, rot, g[0], self._pc_xyz, not rigid))

    def calc_bounding_box(self, params_global, params_local=None) -> np.ndarray:
        """Extent of the projected shape (``PDM::CalcBoundingBox``).

        Returns
        -------
        (4,) float32
            ``[min_x, min_y, width, height]``.
        """
        shape = self.calc_shape_2d(params_local, params_global)
        lo, hi = shape.min(axis=0), shape.max(axis=0)
        return np.array([lo[0], lo[1], np.abs(lo[0] - hi[0]), np.abs(lo[1] - hi[1])], dtype=F32)

    # -------------------------------------------------------- initialisation
    def calc_params_from_bbox(self, bbox_xywh, params_local=None,
                              rotation=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Global parameters placing the shape's 2D extent on a box (``PDM::CalcParams``).

        The scale is the mean of the width and height ratios; the translation centres
        the rotated shape's extent on the box centre.

        Parameters
        ----------
        bbox_xywh : array_like, (4,)
            ``[x, y, width, height]``; cast to float32 (a ``cv::Rect_<float>``).
        params_local : array_like, (m,), optional
            Zeros when omitted.
        rotation : array_like, (3,)
            ``(pitch, yaw, roll)`` to place.

        Returns
        -------
        (6,) float32
        """
        bx, by, bw, bh = _as_f32(bbox_xywh, (4,))
        rot = _as_f32(rotation, (3,))
        # ``cv::Mat(R) * shape``: OpenCV's gemm, float32 sums of three products.
        rotated = gemm_f32(euler_to_rotation_matrix(rot), self._shape_3d_xyz(params_local),
                           1.0, _NO_C, 0.0, 0)
        # cv::minMaxLoc hands back doubles; the C++ keeps them as doubles below.
        min_x, max_x = float(rotated[0].min()), float(rotated[0].max())
        min_y, max_y = float(rotated[1].min()), float(rotated[1].max())
        width, height = F32(abs(min_x - max_x)), F32(abs(min_y - max_y))
        scaling = (bw / width + bh / height) / F32(2)
        tx = bx + bw / F32(2)
        ty = by + bh / F32(2)
        # float - float * double: evaluated in double, then stored as float.
        tx = F32(float(tx) - float(scaling) * (min_x + max_x) / 2.0)
        ty = F32(float(ty) - float(scaling) * (min_y + max_y) / 2.0)
        return np.array([scaling, rot[0], rot[1], rot[2], tx, ty], dtype=F32)

    def calc_params_from_landmarks(self, landmarks, rotation=(0.0, 0.0, 0.0),
                                   max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """Fit global and local parameters to 2D landmarks (``PDM::CalcParams``, landmark form).

        Gauss-Newton with Tikhonov regularisation ``1 / eigenvalue`` on the local
        parameters, step damped by 0.75, stopping the third time the residual norm
        fails to drop by 0.1 % (the counter is never reset), or after ``max_iter``.
        Landmarks whose x coordinate is exactly 0 are treated as missing.

        The arithmetic is OpenFace's: the projection and the right-hand side
        ``J^T r - R p`` are OpenCV's own gemm
        (:func:`~clnfdiag.numerics.cvlinalg.gemm_f32`), the rotation update
        OpenCV's SVD and ``cv::Rodrigues`` (:mod:`.rotation`), the solve is
        ``cv::solve(DECOMP_CHOLESKY)`` emulated by OpenCV's own Cholesky
        (:func:`~clnfdiag.numerics.cholesky.opencv_cholesky_factor`, compiled into the
        loop), which is what OpenCV runs below
        :data:`~clnfdiag.numerics.cholesky.LAPACK_THRESHOLD` unknowns: every OpenFace
        model has fewer (the main one 40); from 100 OpenCV would call LAPACK, which
        :func:`~clnfdiag.numerics.cholesky.solve_cholesky` covers but this loop does not; the 3D shape
        ``M + V p`` (OpenCV's gemm: OpenBLAS's small kernel from 100 rows, its own
        double sums below) and the Hessian (OpenBLAS's small kernel) are exact
        ports (:mod:`clnfdiag.numerics.sgemm`).

        Parameters
        ----------
        landmarks : array_like, (n, 2)
        rotation : array_like, (3,)
            Initial ``(pitch, yaw, roll)``.
        max_iter : int
            Iteration cap (1000 in OpenFace).

        Returns
        -------
        params_global : (6,) float32
        params_local : (m,) float32
        """
        lm = _as_f32(landmarks, (self.n_points, 2))
        visible = lm[:, 0] != 0
        sub = self._subset(visible)
        return sub._fit_landmarks(lm[visible], _as_f32(rotation, (3,)), max_iter)

    def _subset(self, keep: np.ndarray) -> "PDM":
        """Model restricted to the landmarks in ``keep`` (eigenvalues unchanged).

        Cached per mask (the part models see the same missing points every call)."""
        if np.all(keep):
            return self
        cache = self.__dict__.setdefault("_subset_cache", {})
        key = keep.tobytes()
        sub = cache.get(key)
        if sub is None:
            mean = self._mean_xyz[:, keep].reshape(-1)
            pcs = self._pc_xyz[:, keep, :].reshape(-1, self.n_modes)
            sub = PDM(PDMData(mean, pcs, self.eigen_values, self.data.path))
            cache[key] = sub
        return sub

    def _fit_constants(self):
        """Per-model constants of :meth:`_fit_landmarks`, computed once: the
        regularisation diagonal (zeros for the globals), its local block as a
        float32 matrix, the mean as a column and the mean shape's box at unit scale."""
        consts = self.__dict__.get("_fit_consts")
        if consts is None:
            m = self.n_modes
            reg = np.zeros(6 + m, dtype=F32)
            reg[6:] = F32(1) / self.eigen_values
            reg_modes = np.diag(reg[6:]).astype(F32)
            mean_col = self.mean_shape.reshape(-1, 1)
            model_box = self.calc_bounding_box(np.array([1, 0, 0, 0, 0, 0], dtype=F32))
            consts = self._fit_consts = (reg, reg_modes, mean_col, model_box)
        return consts

    def _fit_landmarks(self, lm: np.ndarray, rotation: np.ndarray,
                       max_iter: int) -> tuple[np.ndarray, np.ndarray]:
        # The whole Gauss-Newton loop is one compiled call (:func:`_fit_landmarks_nb`).
        reg, reg_modes, _, model_box = self._fit_constants()
        return _fit_landmarks_nb(self._mean_flat, self._pc_t,
                                 np.ascontiguousarray(self.princ_comp.reshape(-1, self.n_modes)),
                                 self._pc_xyz, reg, reg_modes, model_box,
                                 np.ascontiguousarray(lm, dtype=F32),
                                 np.ascontiguousarray(rotation, dtype=F32), int(max_iter))

    # ------------------------------------------------------------- Jacobians
    def rigid_jacobian(self, params_local, params_global) -> np.ndarray:
        """Jacobian of the 2D shape w.r.t. the global parameters (``ComputeRigidJacobian``).

        Rotation columns are derivatives w.r.t. a small extra rotation applied on the
        model side, ``R @ (I + [w]x)``, matching :meth:`update_parameters`.

        Parameters
        ----------
        params_local : array_like, (m,)
        params_global : array_like, (6,)

        Returns
        -------
        (2n, 6) float32
            Rows ``x0..x(n-1), y0..y(n-1)``; unweighted.
        """
        g = _as_f32(params_global, (6,))
        return self._rigid_block(self._shape_3d_xyz(params_local), g)

    def jacobian(self, params_local, params_global) -> np.ndarray:
        """Jacobian w.r.t. global then local parameters (``ComputeJacobian``).

        Returns
        -------
        (2n, 6 + m) float32
            Rows ``x0..x(n-1), y0..y(n-1)``; unweighted.
        """
        g = _as_f32(params_global, (6,))
        rot = euler_to_rotation_matrix(g[1:4])
        # Non-rigid columns: s * (R[k, 0] Vx + R[k, 1] Vy + R[k, 2] Vz), k = 0 (x rows), 1 (y rows).
        return _jacobian_nb(self._shape_3d_xyz(params_local), rot, g[0], self._pc_xyz, True)

    def _rigid_block(self, xyz: np.ndarray, g: np.ndarray) -> np.ndarray:
        """(2n, 6) rigid columns: for each row ``r`` of R (x rows, then y rows)
        ``[X r1 + Y r2 + Z r3, s (Y r3 - Z r2), -s (X r3 - Z r1), s (X r2 - Y r1), t_x, t_y]``."""
        rot = euler_to_rotation_matrix(g[1:4])
        return _jacobian_nb(xyz, rot, g[0], self._pc_xyz, False)

    # ---------------------------------------------------------------- update
    def update_parameters(self, delta_p, params_local,
                          params_global) -> tuple[np.ndarray, np.ndarray]:
        """Apply a parameter update (``PDM::UpdateModelParameters``).

        Scale and translation are added. The rotation update ``(wx, wy, wz)`` builds
        ``I + [w]x``, which is orthonormalised, composed on the right of the current
        rotation, and turned back into Euler angles through axis-angle. Local
        parameters are added when ``delta_p`` carries them.

        Parameters
        ----------
        delta_p : array_like, (6,) or (6 + m,)
        params_local : array_like, (m,)
        params_global : array_like, (6,)

        Returns
        -------
        params_local : (m,) float32
            New array.
        params_global : (6,) float32
            New array; Euler angles are zeroed if the conversion gave NaN (OpenFace's
            guard for degenerate rotations).
        """
        dp = np.ascontiguousarray(delta_p, dtype=F32).reshape(-1)
        loc = _as_f32(params_local, (self.n_modes,))
        g = _update_global_nb(dp, np.ascontiguousarray(params_global, dtype=F32).reshape(6))
        if dp.shape[0] > 6:
            loc = loc + dp[6:6 + self.n_modes]
        else:
            loc = loc.copy()
        return loc, g

    def clamp(self, params_local, params_global, limit_pose: bool = True,
              clip_rotations: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Keep the parameters plausible (``PDM::Clamp``).

        Each local parameter is clipped to ``+-3 sqrt(eigenvalue)``. In OpenFace 2.x the
        pose limit that ``limit_pose`` used to switch on (rotations to ``+-pi/2``) is
        commented out, so ``limit_pose`` has no effect and the global parameters come
        back unchanged; ``clip_rotations=True`` applies that old limit (OpenFace 1.x
        behaviour, not what the goldens were made with).

        Parameters
        ----------
        params_local : array_like, (m,)
        params_global : array_like, (6,)
        limit_pose : bool
            Accepted for parity with OpenFace's signature; ignored, as in 2.x.
        clip_rotations : bool
            Clip pitch, yaw and roll to ``[-pi/2, pi/2]`` when true.

        Returns
        -------
        params_local : (m,) float32
        params_global : (6,) float32
            New arrays.
        """
        del limit_pose  # ignored by OpenFace 2.x as well
        loc = _clamp_nb(_as_f32(params_local, (self.n_modes,)), self._clamp_bound)
        g = _as_f32(params_global, (6,)).copy()
        if clip_rotations:
            g[1:4] = np.clip(g[1:4], F32(-np.pi / 2), F32(np.pi / 2))
        return loc, g


# ---------------------------------------------------------------- helpers
@_njit
def _shape_3d_gemm_nb(mean_flat, pc_t, pc_2d, p):
    """(3, n) float32 ``M + V p`` as the OpenCV matrix expression of ``PDM::CalcParams``
    computes it (``cv::gemm(V, p, 1, M, 1)``): with 100 rows or more OpenCV hands the
    product to BLAS (``cblas_sgemm`` onto a copy of M, beta 1), i.e. ``CalcShape3D``'s
    small-kernel arithmetic (:func:`gemv_m1_nb`); below (the eyes' 84 rows) OpenCV's own
    gemm: double sums in four interleaved accumulators, one rounding (:func:`opencv_gemv_add_nb`)."""
    out = np.empty(mean_flat.shape[0], dtype=np.float32)
    if mean_flat.shape[0] >= 100:
        gemv_m1_nb(p, pc_t, mean_flat, out, True)
    else:
        opencv_gemv_add_nb(pc_2d, p, mean_flat, out)
    return out.reshape(3, mean_flat.shape[0] // 3)


@_njit
def _shape_3d_nb(mean_flat, pc_t, p):
    """(3, n) float32 ``CalcShape3D`` (:meth:`PDM._shape_3d_xyz`)."""
    out = np.empty(mean_flat.shape[0], dtype=np.float32)
    gemv_m1_nb(p, pc_t, mean_flat, out, True)
    return out.reshape(3, mean_flat.shape[0] // 3)


@_njit
def _project_gemm_nb(xyz, rot, g):
    """``s * X^T * R_2D^T`` as one OpenCV gemm (alpha = s, its own double sums): (n, 2)."""
    none = np.zeros((0, 0), dtype=np.float32)
    return gemm_f32(xyz, np.ascontiguousarray(rot[:2]), g[0], none, 0.0, GEMM_1_T | GEMM_2_T)


@_njit
def _min_max_nb(v):
    """numpy's ``v.min()``, ``v.max()`` of a float32 vector (a NaN wins both)."""
    lo = v[0]
    hi = v[0]
    for i in range(1, v.shape[0]):
        x = v[i]
        if np.isnan(x) or np.isnan(lo):
            lo = hi = x if np.isnan(x) else lo
            continue
        if x < lo:
            lo = x
        if x > hi:
            hi = x
    return lo, hi


@_njit
def _fit_landmarks_nb(mean_flat, pc_t, pc_2d, pc_xyz, reg, reg_modes, model_box, lm, rotation,
                      max_iter):
    """:meth:`PDM.calc_params_from_landmarks`' Gauss-Newton loop (``PDM::CalcParams``), compiled.

    Operation by operation as the C++: the start from the landmarks' box; per
    iteration ``M + V p`` (:func:`_shape_3d_gemm_nb`), the residual of the
    gemm projection, the Jacobian (of ``CalcShape3D``'s own shape when ``M + V p``
    went through OpenCV), ``J^T r`` and ``- R p`` as OpenCV gemm expressions, the
    OpenBLAS-kernel Hessian, OpenCV's Cholesky solve, the step times 0.75, the
    update, and the new error measured with the *previous* 3D shape (as OpenFace
    does); the third time the error fails to drop by 0.1 % the loop stops.

    Returns
    -------
    glob : (6,) float32; loc : (m,) float32
    """
    n = lm.shape[0]
    m = pc_t.shape[0]
    k = 6 + m
    none = np.zeros((0, 0), dtype=np.float32)
    target = np.empty((2 * n, 1), dtype=np.float32)
    for i in range(n):
        target[i, 0] = lm[i, 0]
        target[n + i, 0] = lm[i, 1]
    lo0, hi0 = _min_max_nb(lm[:, 0])
    lo1, hi1 = _min_max_nb(lm[:, 1])
    width = abs(lo0 - hi0)
    height = abs(lo1 - hi1)
    glob = np.empty(6, dtype=np.float32)
    glob[0] = (width / model_box[2] + height / model_box[3]) / np.float32(2)
    glob[1] = rotation[0]
    glob[2] = rotation[1]
    glob[3] = rotation[2]
    glob[4] = (lo0 + hi0) / np.float32(2)
    glob[5] = (lo1 + hi1) / np.float32(2)
    loc = np.zeros(m, dtype=np.float32)
    gemm_is_sgemm = mean_flat.shape[0] >= 100
    # A run-time True, not a literal: _jacobian_nb keeps the one (bool) specialisation it
    # has when called from Python (a literal would compile and cache a second one).
    with_modes = m >= 0
    rot = euler_matrix_nb(glob[1], glob[2], glob[3])
    # The starting error uses CalcShape2D's explicit float loop.
    proj = _project_nb(_shape_3d_gemm_nb(mean_flat, pc_t, pc_2d, loc), rot, glob)
    diff = np.empty(2 * n, dtype=np.float32)
    for i in range(n):
        diff[i] = proj[i, 0] - target[i, 0]
        diff[n + i] = proj[i, 1] - target[n + i, 0]
    curr_error = np.float32(norm_l2_f32(diff))
    not_improved = 0
    for _ in range(max_iter):
        xyz = _shape_3d_gemm_nb(mean_flat, pc_t, pc_2d, loc)
        resid = _translate_diff_nb(_project_gemm_nb(xyz, rot, glob), glob, target, True)
        xyz_j = xyz if gemm_is_sgemm else _shape_3d_nb(mean_flat, pc_t, loc)
        jac = _jacobian_nb(xyz_j, rot, glob[0], pc_xyz, with_modes)
        # ``J_w_t * error_resid`` (J_w_t = J^T, fewer than 100 rows): OpenCV's own gemm.
        rhs = gemm_f32(np.ascontiguousarray(jac.T), resid, 1.0, none, 0.0, 0)
        # ``rhs - R p``: one gemm expression (alpha -1, beta 1), same arithmetic.
        rhs_modes = np.ascontiguousarray(rhs[6:])
        rhs[6:] = gemm_f32(reg_modes, loc.reshape(m, 1), -1.0, rhs_modes, 1.0, 0)
        hessian = hessian_nb(jac, jac, reg)        # unit weights: J_w_t = J^T
        # cv::solve(DECOMP_CHOLESKY): OpenCV's own small-matrix Cholesky (k < 100).
        L, ok = opencv_cholesky_factor(hessian)
        delta = np.zeros(k, dtype=np.float32)
        if ok:
            bb = rhs.copy()
            opencv_cholesky_substitute(L, bb)
            for j in range(k):
                delta[j] = bb[j, 0]
        for j in range(k):
            delta[j] = delta[j] * np.float32(0.75)
        glob = _update_global_nb(delta, glob)
        loc = loc + delta[6:6 + m]
        rot = euler_matrix_nb(glob[1], glob[2], glob[3])
        # The new error with the *previous* 3D shape (local parameters not re-applied).
        err = _translate_diff_nb(_project_gemm_nb(xyz, rot, glob), glob, target, False)
        error = np.float32(norm_l2_f32(np.ascontiguousarray(err[:, 0])))
        if 0.999 * np.float64(curr_error) < np.float64(error):
            not_improved += 1
            if not_improved == 3:
                break
        curr_error = error
    return glob, loc


def zero_invisible_rows(jac: np.ndarray, visibilities) -> np.ndarray:
    """Copy of a (2n, k) Jacobian with the x and y rows of invisible landmarks zeroed.

    OpenFace's NU-RLMS does this before forming ``J^T W J`` so that landmarks without
    a patch expert in the current view do not pull on the fit.

    Parameters
    ----------
    jac : (2n, k) array
    visibilities : array_like, (n,)
        Non-zero where the landmark is visible.

    Returns
    -------
    (2n, k) array, same dtype as ``jac``
    """
    vis = np.asarray(visibilities).reshape(-1) != 0
    out = np.array(jac, copy=True)
    out[~np.concatenate([vis, vis])] = 0
    return out
