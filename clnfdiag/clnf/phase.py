"""One whole NU-RLMS phase in one compiled call: the untraced fit's fast path.

:func:`clnfdiag.clnf.loop.fit_passes` runs every stage of a phase through the
:class:`~clnfdiag.clnf.protocol.StageOps` protocol so that a hook can see and
replace each value. An untraced fit of clnfdiag's own CLNF has no hook, and
there the per-iteration calls (shape and Jacobian, shape change, window
offsets, KDE mean-shift, image-frame mean-shift, normal equations, Cholesky
solve, parameter update and clamp: some 40 Python calls per iteration) cost
more than their arithmetic. :func:`nu_rlms_phase_nb` chains the very same
compiled kernels those stages call, in the same order, on the same operands,
inside one compiled function: every value is the one the per-stage path
computes, bit for bit (``tests/test_bit_identity.py`` fits both ways).

Only the arithmetic moved: the kernels are those of :mod:`clnfdiag.pdm`,
:mod:`clnfdiag.optimiser` and :mod:`clnfdiag.numerics` (fixed order, explicit
FMAs, no fastmath), so the result stays CPU-independent.
"""
from __future__ import annotations

import numpy as np

from ..numerics import njit_np
from ..numerics.cholesky import LAPACK_THRESHOLD, opencv_cholesky_factor, opencv_cholesky_substitute
from ..numerics.cvlinalg import norm_l2_f32
from ..numerics.sgemm import gemv_m1_nb, hessian_nb
from ..optimiser import (KDE_STEP, _cell_index, _mean_shift_grid_nb, _rhs_reg_nb,
                         _to_image_frame_nb, _window_offsets_nb, jtw_ms_nb, kde_kernel_table,
                         regularisation_vector)
from ..pdm import PDM, _clamp_nb, _jacobian_nb, _project_nb, _update_global_nb
from ..rotation import euler_matrix_nb

F32 = np.float32

#: :func:`nu_rlms_phase_nb` status: the phase ran to its end.
PHASE_DONE = 0
#: ... an offset was not finite: the caller reruns the phase stage by stage (numpy's rules).
PHASE_FALLBACK = 1
#: Sets of per-pass constants :func:`run_phase` keeps (2 phases x scales x views x presets).
PHASE_CONSTANTS_KEPT = 256


@njit_np
def nu_rlms_phase_nb(mean_flat, pc_t, pc_xyz, clamp_bound, g0, loc0, rigid, base, sim_i2r,
                     sim_r2i, half, vis, vis_idx, resp, table, cols, rows, hi, w_diag, unit_w,
                     reg, n_iter, tol, dxs, dys):  # pragma: no cover - compiled
    """One NU-RLMS phase (OpenFace's ``CLNF::NU_RLMS``), every iteration compiled.

    Per iteration, as :func:`clnfdiag.clnf.loop._run_phase` with no hook:
    ``CalcShape3D`` (:func:`~clnfdiag.numerics.sgemm.gemv_m1_nb`), the projection
    and Jacobian of :meth:`~clnfdiag.pdm.PDM.shape_and_jacobian`; from the second
    iteration the shape-change norm (``cv::norm``, stop below ``tol``); window
    offsets; the gridded KDE mean-shift; its image-frame map; invisible Jacobian
    rows zeroed; ``J_w_t·ms`` (OpenCV's gemm, :func:`~clnfdiag.optimiser.jtw_ms_nb`), ``- R p``, the OpenBLAS-kernel
    Hessian and OpenCV's Cholesky solve (:meth:`~clnfdiag.optimiser.UpdateSolver.solve`);
    ``UpdateModelParameters`` and ``Clamp``.

    Parameters
    ----------
    mean_flat : (3n,) float32; pc_t : (m, 3n) float32; pc_xyz : (3, n, m) float32;
    clamp_bound : (m,) float32
        The PDM's operands (:class:`~clnfdiag.pdm.PDM`).
    g0 : (6,) float32; loc0 : (m,) float32
        Parameters at the start of the phase (not modified).
    rigid : bool
    base : (n, 2) float32; sim_i2r, sim_r2i : (2, 2) float32; half : float32
        The pass's landmarks, similarity transforms and ``(w - 1) // 2``.
    vis : (n,) bool; vis_idx : (v,) intp
    resp : (n, w, w) float32; table : KDE table; cols, rows : (w·w,) float32; hi : float32
        The mean-shift's operands (:func:`~clnfdiag.optimiser.mean_shift`).
    w_diag : (2n,) float32; unit_w : bool; reg : (k,) float32
        The normal equations' weights and regularisation diagonal (zeros when rigid).
    n_iter : int; tol : float
    dxs, dys : (n,) float32
        Written: the offsets of the last iteration that computed them.

    Returns
    -------
    g : (6,) float32; loc : (m,) float32; updates : int; last_norm : float;
    has_norm : bool; has_offsets : bool; status : int
        ``status`` :data:`PHASE_FALLBACK` when an offset was not finite (the
        other outputs are then meaningless).
    """
    n = base.shape[0]
    m = loc0.shape[0]
    k = reg.shape[0]
    g = g0.copy()
    loc = loc0.copy()
    xyz_flat = np.empty(mean_flat.shape[0], np.float32)
    previous = np.empty((n, 2), np.float32)
    diff = np.empty(2 * n, np.float32)
    ms_ref = np.zeros((n, 2), np.float32)
    ms_vec = np.empty(2 * n, np.float32)
    updates = 0
    last_norm = 0.0
    has_norm = False
    has_offsets = False
    any_visible = vis_idx.shape[0] > 0
    for it in range(n_iter):
        # PDM::CalcShape3D, then CalcShape2D and the (rigid) Jacobian from one rotation.
        gemv_m1_nb(loc, pc_t, mean_flat, xyz_flat, True)
        xyz = xyz_flat.reshape(3, n)
        rot = euler_matrix_nb(g[1], g[2], g[3])
        shape = _project_nb(xyz, rot, g)
        jac = _jacobian_nb(xyz, rot, g[0], pc_xyz, not rigid)
        if it > 0:
            for i in range(n):
                diff[i] = shape[i, 0] - previous[i, 0]
                diff[n + i] = shape[i, 1] - previous[i, 1]
            norm = norm_l2_f32(diff)
            last_norm = norm
            has_norm = True
            if norm < tol:
                break
        previous[:, :] = shape
        offs = _window_offsets_nb(shape, base, sim_i2r, half)
        dxs[:] = offs[0]
        dys[:] = offs[1]
        has_offsets = True
        ms_ref[:, :] = 0
        if any_visible:
            if not _mean_shift_grid_nb(resp, vis_idx, dxs, dys, table, cols, rows, hi, ms_ref):
                return g, loc, updates, last_norm, has_norm, has_offsets, 1
        ms = _to_image_frame_nb(ms_ref, sim_r2i, vis)
        for i in range(n):
            if not vis[i]:
                for c in range(jac.shape[1]):
                    jac[i, c] = 0
                    jac[n + i, c] = 0
            ms_vec[i] = ms[i, 0]
            ms_vec[n + i] = ms[i, 1]
        # J_w_t = (W J)^T: float32 products (or J itself for unit weights).
        if unit_w:
            jw = jac
        else:
            jw = np.empty_like(jac)
            for r in range(2 * n):
                wr = w_diag[r]
                for c in range(k):
                    jw[r, c] = jac[r, c] * wr
        rhs = jtw_ms_nb(jw, ms_vec)
        if not rigid:
            _rhs_reg_nb(rhs, reg[6:], loc)
        hess = hessian_nb(jac, jw, reg)
        L, ok = opencv_cholesky_factor(hess)
        if ok:
            bb = rhs.copy().reshape(k, 1)
            opencv_cholesky_substitute(L, bb)
            dp = bb.reshape(k)
        else:
            dp = np.zeros(k, np.float32)
        # UpdateModelParameters, then Clamp (the local parameters, also in the rigid phase).
        g = _update_global_nb(dp, g)
        if k > 6:
            loc = loc + dp[6:6 + m]
        loc = _clamp_nb(loc, clamp_bound)
        updates += 1
    return g, loc, updates, last_norm, has_norm, has_offsets, 0


def run_phase(pdm: PDM, g, loc, rigid: bool, base_shape, sim_img_to_ref, sim_ref_to_img,
              window: int, visible, responses, sigma: float, weights, reg_factor: float,
              n_iterations: int, tol: float, constants: dict | None = None):
    """:func:`nu_rlms_phase_nb` with the operands the stage-by-stage path would build.

    ``constants``: a dict the caller keeps, where the operands that depend only on
    the pass's settings (regulariser, weights, visible landmarks, KDE table) are
    kept between fits, keyed by those settings (``weights`` and ``visible`` by
    identity: the caller's cached, read-only arrays).

    Returns
    -------
    tuple or None
        ``(g, loc, updates, last_norm or None, dxs or None, dys or None)``; None
        when the phase must run stage by stage (a non-finite offset, or a
        Hessian that OpenCV would hand to LAPACK).
    """
    key = (id(weights), id(visible), bool(rigid), float(reg_factor), int(window), float(sigma))
    c = None if constants is None else constants.get(key)
    if c is None:
        vis = np.asarray(visible, dtype=bool).reshape(-1)
        # UpdateSolver's constants: the regulariser, and whether every weight is 1.
        reg = regularisation_vector(pdm.eigen_values, reg_factor, rigid)
        w = np.ascontiguousarray(weights, dtype=F32).reshape(-1)
        ws = int(window)
        cols, rows = _cell_index(ws)
        c = (vis, np.flatnonzero(vis), reg, w, bool(np.all(w == 1)), F32((ws - 1) // 2),
             kde_kernel_table(sigma, ws), cols, rows, F32(ws) - KDE_STEP, (weights, visible))
        if constants is not None:
            if len(constants) >= PHASE_CONSTANTS_KEPT:   # fresh arrays every call: no growth
                constants.clear()
            constants[key] = c
    vis, vis_idx, reg, w, unit_w, half, table, cols, rows, hi, _keep = c
    if reg.shape[0] >= LAPACK_THRESHOLD:
        return None
    n = vis.shape[0]
    dxs = np.empty(n, F32)
    dys = np.empty(n, F32)
    g2, loc2, updates, norm, has_norm, has_off, status = nu_rlms_phase_nb(
        pdm._mean_flat, pdm._pc_t, pdm._pc_xyz, pdm._clamp_bound,
        np.ascontiguousarray(g, dtype=F32), np.ascontiguousarray(loc, dtype=F32), rigid,
        np.ascontiguousarray(base_shape, dtype=F32),
        np.ascontiguousarray(sim_img_to_ref, dtype=F32).reshape(2, 2),
        np.ascontiguousarray(sim_ref_to_img, dtype=F32).reshape(2, 2),
        half, vis, vis_idx, np.ascontiguousarray(responses, dtype=F32), table,
        cols, rows, hi, w, unit_w, reg, int(n_iterations), float(tol), dxs, dys)
    if status != PHASE_DONE:
        return None
    return (g2, loc2, int(updates), float(norm) if has_norm else None,
            dxs if has_off else None, dys if has_off else None)


__all__ = ["nu_rlms_phase_nb", "run_phase", "PHASE_DONE", "PHASE_FALLBACK"]
