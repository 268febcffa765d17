"""Isolated mode: every stage recomputed by clnfdiag from the golden's own inputs to that stage.

Each stage gets exactly the C++ values it depends on (responses from the
golden areas of interest, mean-shifts from the golden responses and offsets,
updates from the golden mean-shifts and Jacobians, ...), so an error in one
stage cannot hide in, or cascade into, the next: what diverges here is the
stage itself. Known faults act on the stage they corrupt.
"""
from __future__ import annotations

import numpy as np

from .. import optimiser as opt
from ..experts import raw_response, shift_response, sigma_response
from ..faults import NO_FAULTS
from ..fitter import CLNF, Fitter, adapt_parameters, extract_areas, to_gray
from ..golden import GoldenCase
from ..parameters import FitParameters
from ..similarity import similarity_transforms
from ..trace import Recorder

F32 = np.float32


def _phase_start(case: GoldenCase, k: int, phase: str, it: int) -> tuple[np.ndarray, np.ndarray]:
    """Golden parameters at the start of iteration ``it`` of a phase."""
    if it > 0:
        prefix = f"pass{k}/{phase}/iter{it - 1:02d}/"
        return case.stage(prefix + "params_global"), case.stage(prefix + "params_local")
    if phase == "rigid":
        return case.stage(f"pass{k}/params_global_in"), case.stage(f"pass{k}/params_local_in")
    return case.stage(f"pass{k}/rigid/final_global"), case.stage(f"pass{k}/rigid/final_local")


def _pass_windows(p: FitParameters, n_scales: int) -> list[tuple[int, int]]:
    """(scale index, window) of every pass that runs, in order."""
    ws = list(p.window_sizes) + [0] * n_scales
    return [(s, ws[s]) for s in range(n_scales) if ws[s] != 0]


def isolated_trace(case: GoldenCase, fitter: Fitter,
                   faults: frozenset[str] = NO_FAULTS) -> dict[str, np.ndarray]:
    """Recompute every stage of a golden case from the golden's inputs to it.

    Parameters
    ----------
    case : GoldenCase
        Any golden; for a hierarchical one the refinement is fed the golden's
        main-model result (``hierarchical/landmarks_before``).
    fitter : Fitter
        Holds the loaded model.
    faults : frozenset[str]
        Known faults to inject.

    Returns
    -------
    dict[str, ndarray]
        Candidate stages under the golden keys.
    """
    clnf: CLNF = fitter.main
    pdm, experts = clnf.pdm, clnf.experts
    p = FitParameters.from_manifest(case.parameters, case.preset)
    st = case.stage
    out: dict[str, np.ndarray] = {}

    gray = to_gray(case.load_image(), case.image_path)
    out["input/gray"] = gray
    loc0 = pdm.zero_local()
    out["init/params_global"] = pdm.calc_params_from_bbox(case.bbox, loc0)
    out["init/params_local"] = loc0
    out["init/shape"] = pdm.calc_shape_2d(st("init/params_local"), st("init/params_global"))
    gray_f32 = st("input/gray").astype(F32)

    passes = _pass_windows(p, len(clnf.patch_scales))
    prev_g, prev_l = st("init/params_global"), st("init/params_local")
    for k in range(case.n_passes):
        scale, ws = passes[k] if k < len(passes) else (-1, -1)
        _pass_stages(case, k, scale, ws, clnf, p, gray_f32, prev_g, prev_l, faults, out)
        prev_g, prev_l = st(f"pass{k}/nonrigid/final_global"), st(f"pass{k}/nonrigid/final_local")
    last = case.n_passes - 1
    lh = out.get(f"pass{last}/landmark_likelihoods")
    out["final/params_global"] = out[f"pass{last}/nonrigid/final_global"]
    out["final/params_local"] = out[f"pass{last}/nonrigid/final_local"]
    out["final/landmarks"] = pdm.calc_shape_2d(st("final/params_local"), st("final/params_global"))
    if lh is not None:
        vis = st(f"pass{last}/visibilities").astype(bool)
        golden_lh = st(f"pass{last}/landmark_likelihoods")
        out["final/landmark_likelihoods"] = lh
        out["final/likelihood"] = np.float32(opt.model_likelihood(golden_lh, vis))
    out["final/success"] = np.int32(st("final/params_global")[0] >= 0.25)
    if case.is_hierarchical and fitter.parts:
        _hierarchical_stages(case, fitter, gray_f32, faults, out)
    return out


def _hierarchical_stages(case: GoldenCase, fitter: Fitter, gray_f32, faults, out) -> None:
    """Refinement fed the golden's main-model result (``hierarchical/landmarks_before``)."""
    st = case.stage
    last = case.n_passes - 1
    g = st(f"pass{last}/nonrigid/final_global")
    loc = st(f"pass{last}/nonrigid/final_local")
    out["hierarchical/landmarks_before"] = fitter.main.pdm.calc_shape_2d(loc, g)
    rec = Recorder()
    landmarks, g2, l2, _ = fitter.refine(gray_f32, st("hierarchical/landmarks_before"), g, loc,
                                         rec, faults)
    for k, v in rec.stages.items():
        if k != "hierarchical/landmarks_before":
            out[k] = v
    out["final/landmarks"], out["final/params_global"], out["final/params_local"] = landmarks, g2, l2


def _pass_stages(case, k, scale, ws, clnf: CLNF, p, gray_f32, prev_g, prev_l, faults, out):
    st = case.stage
    pre = f"pass{k}/"
    pdm, experts = clnf.pdm, clnf.experts
    g_scale = int(st(pre + "scale_index"))
    out[pre + "window_size"] = np.int32(ws)
    out[pre + "scale_index"] = np.int32(scale)
    g_in, l_in = st(pre + "params_global_in"), st(pre + "params_local_in")
    view = experts.view_index(g_in, g_scale)
    if "wrong-view" in faults:
        view = (view + 1) % experts.scales[g_scale].n_views
    out[pre + "view_id"] = np.int32(view)
    g_view = int(st(pre + "view_id"))
    visible = st(pre + "visibilities").astype(bool)
    out[pre + "visibilities"] = experts.scales[g_scale].visibility[view].astype(np.int32)
    out[pre + "params_global_in"] = np.asarray(prev_g, F32)
    out[pre + "params_local_in"] = np.asarray(prev_l, F32)
    out[pre + "landmarks_at_response"] = pdm.calc_shape_2d(l_in, g_in)
    ps = clnf.patch_scales[g_scale]
    out[pre + "reference_shape"] = pdm.calc_shape_2d(l_in, np.array([ps, 0, 0, 0, 0, 0], F32))
    i2r, r2i = similarity_transforms(st(pre + "landmarks_at_response"), st(pre + "reference_shape"))
    out[pre + "sim_img_to_ref"], out[pre + "sim_ref_to_img"] = i2r, r2i
    reg, sigma, weight = adapt_parameters(p, clnf.patch_scales, g_scale)
    out[pre + "reg_factor"], out[pre + "sigma"] = np.float32(reg), np.float32(sigma)
    out[pre + "weight_factor"] = np.float32(weight)

    # Responses: the experts of the golden (scale, view), fed the golden inputs of each stage.
    bank = experts.bank(g_scale, g_view)
    idx = bank.landmarks
    n = visible.shape[0]
    g_area = st(pre + "area_of_interest")
    side = g_area.shape[1]
    areas = extract_areas(gray_f32, st(pre + "landmarks_at_response"), st(pre + "sim_ref_to_img"),
                          idx, side, nearest="nearest-warp" in faults)
    out[pre + "area_of_interest"] = _full(areas, idx, n)
    out[pre + "response_raw"] = _full(raw_response(bank, g_area[idx], faults), idx, n)
    out[pre + "response_sigma"] = _full(sigma_response(bank, st(pre + "response_raw")[idx], faults),
                                        idx, n)
    out[pre + "response"] = _full(shift_response(st(pre + "response_sigma")[idx], faults), idx, n)

    conf = np.zeros(n)
    conf[idx] = bank.confidence
    g_resp = st(pre + "response")
    g_sigma, g_reg = float(st(pre + "sigma")), float(st(pre + "reg_factor"))
    base = st(pre + "landmarks_at_response")
    g_i2r, g_r2i = st(pre + "sim_img_to_ref"), st(pre + "sim_ref_to_img")
    for phase in ("rigid", "nonrigid"):
        ph = f"{pre}{phase}/"
        rigid = phase == "rigid"
        w_diag = opt.weight_matrix_diag(conf, visible, float(st(pre + "weight_factor")))
        out[ph + "weights"] = w_diag
        iters = case.iterations(k, phase)
        updates = 0
        last_g = last_l = None
        for it in iters:
            tag = f"{ph}iter{it:02d}/"
            g0, l0 = _phase_start(case, k, phase, it)
            out[tag + "shape"] = pdm.calc_shape_2d(l0, g0)
            if it > 0:
                # A stopped iteration's shape is not dumped: ours is computed from golden inputs.
                cur = st(tag + "shape") if case.has(tag + "shape") else out[tag + "shape"]
                norm = opt.shape_change_norm(cur, st(f"{ph}iter{it - 1:02d}/shape"))
                out[tag + "shape_change_norm"] = np.float64(norm)
                if norm < opt.SHAPE_CHANGE_TOL:
                    break
            if not case.has(tag + "dxs"):
                break
            dxs, dys = opt.window_offsets(st(tag + "shape"), base, g_i2r, ws if ws > 0 else
                                          g_resp.shape[1])
            out[tag + "dxs"], out[tag + "dys"] = dxs, dys
            out[tag + "mean_shifts_ref"] = opt.mean_shift(
                g_resp, st(tag + "dxs"), st(tag + "dys"), visible, g_sigma,
                grid="no-kde-grid" not in faults, double="float64" in faults)
            out[tag + "mean_shifts"] = opt.to_image_frame(st(tag + "mean_shifts_ref"), g_r2i, visible)
            jac = pdm.rigid_jacobian(l0, g0) if rigid else pdm.jacobian(l0, g0)
            jac[~np.concatenate([visible, visible])] = 0
            out[tag + "jacobian"] = jac
            out[tag + "param_update"] = opt.solve_update(
                st(tag + "jacobian"), st(ph + "weights"), st(tag + "mean_shifts"), l0,
                pdm.eigen_values, g_reg, rigid, regularise="no-regularisation" not in faults,
                visible=visible, double="float64" in faults)
            loc, g = pdm.update_parameters(st(tag + "param_update"), l0, g0)
            loc, g = pdm.clamp(loc, g, p.limit_pose)
            out[tag + "params_global"], out[tag + "params_local"] = g, loc
            last_g, last_l = g, loc
            updates += 1
        out[ph + "n_updates"] = np.int32(updates)
        if last_g is not None:
            out[ph + "final_global"], out[ph + "final_local"] = last_g, last_l
    key = pre + "landmark_likelihoods"
    if case.has(key):
        last_it = [i for i in case.iterations(k, "nonrigid") if case.has(f"{pre}nonrigid/iter{i:02d}/dxs")][-1]
        tag = f"{pre}nonrigid/iter{last_it:02d}/"
        out[key] = opt.landmark_likelihoods(g_resp, st(tag + "dxs"), st(tag + "dys"), visible, g_sigma)


def _full(maps: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n,) + maps.shape[1:], maps.dtype)
    out[idx] = maps
    return out
