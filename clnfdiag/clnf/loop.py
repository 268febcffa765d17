"""The one CLNF fit loop: every fit, isolated recomputation, replay, fault and port runs through it.

OpenFace's ``CLNF::Fit`` in order: one pass per patch scale with a non-zero
window (view, landmarks and reference shape, similarity transforms, areas of
interest, the three response stages, NU-RLMS rigid then non-rigid), then the
likelihoods. Each stage is one call of a :class:`~clnfdiag.clnf.protocol.StageOps`
implementation; what happens to its value is the hook's business:

* no hook (``hook.enabled`` False): the value flows on, nothing else is done
  (an untraced fit pays nothing for the instrumentation);
* a recorder (:class:`clnfdiag.trace.Recorder`) keeps a copy under the golden
  key and lets the value flow on (a traced fit);
* a hook may also hand back another value than the one computed: the golden's
  (isolated mode: every stage then starts from the golden's own inputs) or a
  candidate's (impact replays). The loop itself has no mode.

The loop names each stage by a :class:`~clnfdiag.clnf.protocol.Where` (pass,
phase, iteration, stage name), built only when the hook is enabled; turning it
into a golden key is the recorder's business (:mod:`clnfdiag.keys`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..parameters import FitParameters
from .protocol import StageHook, StageOps, Where
from .ops import OpenFaceOps

F32 = np.float32
F64 = np.float64

#: OpenFace stops a phase when the shape moved less than this (px, norm of the 2n-vector).
SHAPE_CHANGE_TOL = 0.01
#: Below this global scale OpenFace takes the likelihood after the pass and stops refining ...
LIKELIHOOD_SCALE = 0.30
#: ... and below this it gives up: the face is too small to fit.
MIN_FACE_SCALE = 0.25
#: OpenFace's "very low" likelihood before any is taken.
NO_LIKELIHOOD = -10.0
#: Per-landmark likelihood of a landmark never evaluated.
NO_LANDMARK_LIKELIHOOD = -1e8

#: The hook of an untraced fit: never called (``enabled`` is False).
NO_HOOK = StageHook()


@dataclass
class PhaseOutcome:
    """What one NU-RLMS phase did (for manifests and convergence tables)."""

    pass_index: int
    window_size: int
    phase: str
    updates: int
    last_shape_change_norm: float | None


@dataclass
class LoopResult:
    """Parameters and likelihoods after every pass of one CLNF fit.

    Attributes
    ----------
    params_global : (6,) float32
    params_local : (m,) float32
    likelihood : float
    landmark_likelihoods : (n,) float32
    success : bool
        False when the face scale fell below :data:`MIN_FACE_SCALE`.
    phases : list[PhaseOutcome]
    """

    params_global: np.ndarray
    params_local: np.ndarray
    likelihood: float
    landmark_likelihoods: np.ndarray
    success: bool
    phases: list[PhaseOutcome] = field(default_factory=list)


def pass_windows(p: FitParameters, n_scales: int) -> list[tuple[int, int]]:
    """(scale index, window size) of every pass that runs, in order (a 0 window skips its scale)."""
    ws = list(p.window_sizes) + [0] * n_scales
    return [(s, ws[s]) for s in range(n_scales) if ws[s] != 0]


def adapt_parameters(p: FitParameters, patch_scales: list[float], scale: int
                     ) -> tuple[float, float, float]:
    """Per-scale ``(reg_factor, sigma, weight_factor)`` (OpenFace's ``refine_parameters``).

    With ``ps = patch_scales[min(scale, 2)]`` and ``k = log2(ps / 0.25)``:
    ``reg - 15k`` (floored at 0.001), ``sigma + 0.25k``, ``weight·(1 + 2k)``;
    evaluated in double and stored in float32, as OpenFace's float members.
    """
    if not p.refine_parameters:
        return float(F32(p.reg_factor)), float(F32(p.sigma)), float(F32(p.weight_factor))
    k = math.log(patch_scales[min(scale, 2)] / 0.25) / math.log(2)
    reg = float(F32(p.reg_factor)) - 15 * k
    if reg <= 0:
        reg = 0.001
    sigma = float(F32(p.sigma)) + 0.25 * k
    weight = float(F32(p.weight_factor)) + 2 * float(F32(p.weight_factor)) * k
    return float(F32(reg)), float(F32(sigma)), float(F32(weight))


def fit_passes(ops: StageOps, gray_f32: np.ndarray, params_global: np.ndarray,
               params_local: np.ndarray, p: FitParameters, hook: StageHook = NO_HOOK,
               start_pass: int = 0) -> LoopResult:
    """Run every pass of one CLNF model from the given parameters (OpenFace's ``CLNF::Fit``).

    Parameters
    ----------
    ops : StageOps
        The implementation of the stages (clnfdiag's CLNF, a faulty wrapper, a port).
    gray_f32 : (H, W) float32
    params_global : (6,) float32
    params_local : (m,) float32
    p : FitParameters
    hook : StageHook
        Sees (and may replace) every stage value; keys are relative to its prefix.
    start_pass : int
        Skip the passes before this one (``params_*`` are then that pass's inputs):
        replays of a golden from a given pass.

    Returns
    -------
    LoopResult
    """
    g = np.asarray(params_global, F32).copy()
    loc = np.asarray(params_local, F32).copy()
    n = ops.n_points
    n_scales = len(ops.patch_scales)
    windows = list(p.window_sizes) + [0] * n_scales
    out = LoopResult(g, loc, NO_LIKELIHOOD, np.full(n, NO_LANDMARK_LIKELIHOOD, F32), True)
    for k, (scale, ws) in enumerate(pass_windows(p, n_scales)):
        if k < start_pass:
            continue
        # OpenFace takes the likelihood when the next scale will not run (its own test:
        # the last scale, or the next window is 0), or when the face is small.
        last = scale == n_scales - 1 or windows[scale + 1] == 0
        g, loc, lh = _run_pass(ops, gray_f32, g, loc, p, hook, k, scale, ws, last, out.phases)
        if lh is not None:
            out.likelihood, out.landmark_likelihoods = lh
        if g[0] < MIN_FACE_SCALE:
            out.success = False
            break
    out.params_global, out.params_local = g, loc
    return out


def _run_pass(ops: StageOps, gray_f32, g, loc, p: FitParameters, hook: StageHook, k: int,
              scale: int, ws: int, last_scale: bool, phases: list[PhaseOutcome]):
    """One window-size pass: set-up, responses, rigid and non-rigid NU-RLMS.

    Returns ``(params_global, params_local, likelihoods or None)``.
    """
    on = hook.enabled
    if on:
        def at(name: str) -> Where:
            return Where(name, k)
        hook.stage(at("window_size"), ws, np.int32)
        hook.stage(at("scale_index"), scale, np.int32)
        g = hook.stage(at("params_global_in"), g, F32)
        loc = hook.stage(at("params_local_in"), loc, F32)
    view = ops.view(g, scale)
    if on:
        view = int(hook.stage(at("view_id"), view, np.int32))
    visible = ops.visibilities(scale, view)
    if on:
        visible = hook.stage(at("visibilities"), visible, np.int32).astype(bool)
    landmarks = ops.shape_2d(loc, g)
    reference = ops.reference_shape(loc, scale)
    if on:
        landmarks = hook.stage(at("landmarks_at_response"), landmarks, F32)
        reference = hook.stage(at("reference_shape"), reference, F32)
    sim_i2r, sim_r2i = ops.similarity(landmarks, reference)
    if on:
        sim_i2r = hook.stage(at("sim_img_to_ref"), sim_i2r, F32)
        sim_r2i = hook.stage(at("sim_ref_to_img"), sim_r2i, F32)
    reg, sigma, weight = adapt_parameters(p, ops.patch_scales, scale)
    if on:
        reg = float(hook.stage(at("reg_factor"), reg, F32))
        sigma = float(hook.stage(at("sigma"), sigma, F32))
        weight = float(hook.stage(at("weight_factor"), weight, F32))
    areas = ops.area_of_interest(gray_f32, landmarks, sim_r2i, scale, view, ws)
    if on:
        areas = hook.stage(at("area_of_interest"), areas, F32)
    raw = ops.response_raw(areas, scale, view)
    if on:
        raw = hook.stage(at("response_raw"), raw, F32)
    sig = ops.response_sigma(raw, scale, view)
    if on:
        sig = hook.stage(at("response_sigma"), sig, F32)
    resp = ops.response(sig, scale, view)
    if on:
        resp = hook.stage(at("response"), resp, F32)
    setup = _PassSetup(landmarks, sim_i2r, sim_r2i, ws, visible, resp, reg, sigma,
                       ops.weights(scale, view, weight), p.n_iterations, p.limit_pose)
    g, loc, rigid = _run_phase(ops, setup, g, loc, True, hook, k, False)
    phases.append(PhaseOutcome(k, ws, "rigid", rigid.updates, rigid.last_norm))
    last = last_scale or g[0] < LIKELIHOOD_SCALE
    g, loc, nonrigid = _run_phase(ops, setup, g, loc, False, hook, k, last)
    phases.append(PhaseOutcome(k, ws, "nonrigid", nonrigid.updates, nonrigid.last_norm))
    lh = None
    if last and nonrigid.landmark_likelihoods is not None:
        lms = nonrigid.landmark_likelihoods
        if on:
            lms = hook.stage(at("landmark_likelihoods"), lms, F32)
        lh = (ops.model_likelihood(lms, visible), lms)
    return g, loc, lh


@dataclass
class _PassSetup:
    """What the two NU-RLMS phases of a pass share."""

    base_shape: np.ndarray
    sim_img_to_ref: np.ndarray
    sim_ref_to_img: np.ndarray
    window: int
    visible: np.ndarray
    responses: np.ndarray
    reg_factor: float
    sigma: float
    weights: np.ndarray
    n_iterations: int
    limit_pose: bool


@dataclass
class _PhaseOutcome:
    updates: int = 0
    last_norm: float | None = None
    landmark_likelihoods: np.ndarray | None = None


def _run_phase(ops: StageOps, s: _PassSetup, g, loc, rigid: bool, hook: StageHook, k: int,
               likelihood: bool):
    """One NU-RLMS phase (OpenFace's ``CLNF::NU_RLMS``): returns ``(g, loc, _PhaseOutcome)``.

    Each iteration: shape (and Jacobian) from the parameters; from the second
    on, stop when the shape moved less than :data:`SHAPE_CHANGE_TOL`; window
    offsets; KDE mean-shifts, mapped to the image; the regularised weighted
    least-squares update; parameter update and clamp.
    """
    on = hook.enabled
    phase = "rigid" if rigid else "nonrigid"
    weights = s.weights
    res = _PhaseOutcome()
    previous = dxs = dys = None
    # No hook and clnfdiag's own stages: the whole phase in one compiled call (the same
    # kernels in the same order, so the same bits; None when it must run stage by stage).
    fused = None if on or type(ops) is not OpenFaceOps else ops.untraced_phase(
        g, loc, rigid, s.base_shape, s.sim_img_to_ref, s.sim_ref_to_img, s.window, s.visible,
        s.responses, s.sigma, weights, s.reg_factor, s.n_iterations, SHAPE_CHANGE_TOL)
    if fused is not None:
        g, loc, res.updates, res.last_norm, dxs, dys = fused
        if likelihood and dxs is not None:
            res.landmark_likelihoods = ops.landmark_likelihoods(s.responses, dxs, dys, s.visible,
                                                               s.sigma)
        return g, loc, res
    if on:
        weights = hook.stage(Where("weights", k, phase), weights, F32)
    solver = ops.update_solver(weights, s.visible, s.reg_factor, rigid)
    for it in range(s.n_iterations):
        if on:
            def at(name: str, it: int = it) -> Where:
                return Where(name, k, phase, it)
        shape, jac = ops.shape_and_jacobian(loc, g, rigid)
        if on:
            shape = hook.stage(at("shape"), shape, F32)
        if previous is not None:
            norm = ops.shape_change_norm(shape, previous)
            if on:
                norm = float(hook.stage(at("shape_change_norm"), norm, F64))
            res.last_norm = norm
            if norm < SHAPE_CHANGE_TOL:
                if on:
                    # A stopped iteration has only its shape_change_norm (FORMAT.md).
                    hook.discard(at("shape"))
                break
        previous = shape
        dxs, dys = ops.window_offsets(shape, s.base_shape, s.sim_img_to_ref, s.window)
        if on:
            dxs = hook.stage(at("dxs"), dxs, F32)
            dys = hook.stage(at("dys"), dys, F32)
        ms_ref = ops.mean_shifts_ref(s.responses, dxs, dys, s.visible, s.sigma)
        if on:
            ms_ref = hook.stage(at("mean_shifts_ref"), ms_ref, F32)
        ms = ops.mean_shifts(ms_ref, s.sim_ref_to_img, s.visible)
        jac = ops.visible_jacobian(jac, s.visible)
        if on:
            ms = hook.stage(at("mean_shifts"), ms, F32)
            jac = hook.stage(at("jacobian"), jac, F32)
        dp = solver(jac, ms, loc)
        if on:
            dp = hook.stage(at("param_update"), dp, F32)
        loc, g = ops.update_parameters(dp, loc, g, s.limit_pose)
        if on:
            g = hook.stage(at("params_global"), g, F32)
            loc = hook.stage(at("params_local"), loc, F32)
        res.updates += 1
    if on:
        hook.stage(Where("n_updates", k, phase), res.updates, np.int32)
        g = hook.stage(Where("final_global", k, phase), g, F32)
        loc = hook.stage(Where("final_local", k, phase), loc, F32)
    if likelihood and dxs is not None:
        res.landmark_likelihoods = ops.landmark_likelihoods(s.responses, dxs, dys, s.visible,
                                                           s.sigma)
    return g, loc, res


__all__ = ["fit_passes", "pass_windows", "adapt_parameters", "LoopResult", "PhaseOutcome",
           "SHAPE_CHANGE_TOL", "LIKELIHOOD_SCALE", "MIN_FACE_SCALE", "NO_HOOK"]
