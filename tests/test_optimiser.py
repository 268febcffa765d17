"""Parity of the NU-RLMS building blocks (clnfdiag.optimiser) with the C++ goldens.

Every stage is checked in isolation: golden inputs in, golden outputs compared.
Run ``python tests/test_optimiser.py`` for a table of the worst errors per check.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from clnfdiag import optimiser as opt
from clnfdiag.faults import mean_shift_exact_kernel
from clnfdiag.models.pdm_file import read_pdm

F32 = np.float32
F64 = np.float64

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
MODEL_ROOT = SHARED / "OpenFaceModels/2.2.0/originals/lib/local/LandmarkDetector/model"
PDM_PATH = MODEL_ROOT / "pdms/In-the-wild_aligned_PDM_68.txt"

CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "stages.npz").is_file()) if GOLDEN.is_dir() else []

# Targets: float32 rounding level.
MS_ATOL = 1e-5          # px, mean-shifts and window offsets
DP_RTOL = 1e-4          # parameter update, element-wise relative ...
DP_ATOL_REL = 1e-6      # ... plus this fraction of the update's largest element
LH_RTOL = 1e-5          # likelihoods


@functools.lru_cache(maxsize=None)
def load_case(case: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / case / "stages.npz") as z:
        return {k: z[k] for k in z.files}


@functools.lru_cache(maxsize=1)
def eigen_values() -> np.ndarray:
    return read_pdm(PDM_PATH).eigen_values


def passes(z) -> list[str]:
    return sorted({k.split("/")[0] for k in z if k.startswith("pass")}, key=lambda p: int(p[4:]))


def iterations(z, p: str, phase: str) -> list[int]:
    pref = f"{p}/{phase}/iter"
    return sorted({int(k[len(pref):len(pref) + 2]) for k in z if k.startswith(pref)})


def ikey(p: str, phase: str, it: int, name: str) -> str:
    return f"{p}/{phase}/iter{it:02d}/{name}"


def updating_iterations(z):
    """(pass, phase, iteration, params_local at the start of the iteration) for
    every iteration that did an update."""
    for p in passes(z):
        for phase in ("rigid", "nonrigid"):
            local = z[f"{p}/params_local_in"] if phase == "rigid" else z[f"{p}/rigid/final_local"]
            for it in iterations(z, p, phase):
                if ikey(p, phase, it, "param_update") not in z:
                    continue
                yield p, phase, it, local
                local = z[ikey(p, phase, it, "params_local")]


def shape_at(z, p: str, phase: str, it: int) -> np.ndarray:
    """Landmarks at the start of an iteration. An iteration that stopped on the
    shape-change test has no dumped shape: it is the shape of the parameters
    the phase ended with, which the next phase or pass (or the final result)
    starts from."""
    k = ikey(p, phase, it, "shape")
    if k in z:
        return z[k]
    if phase == "rigid":
        return z[ikey(p, "nonrigid", 0, "shape")]
    nxt = f"pass{int(p[4:]) + 1}/landmarks_at_response"
    return z[nxt] if nxt in z else z["final/landmarks"]


def rel_err(err, ref) -> float:
    scale = float(np.max(np.abs(ref))) if np.size(ref) else 0.0
    return float(np.max(np.abs(err))) / scale if scale > 0 else float(np.max(np.abs(err)))


# --------------------------------------------------------------------------- checks
# Each returns a list of (absolute error array, golden reference array).
def check_offsets(z):
    out = []
    for p in passes(z):
        w = int(z[f"{p}/window_size"])
        for phase in ("rigid", "nonrigid"):
            for it in iterations(z, p, phase):
                if ikey(p, phase, it, "dxs") not in z:
                    continue
                dxs, dys = opt.window_offsets(z[ikey(p, phase, it, "shape")], z[f"{p}/landmarks_at_response"],
                                              z[f"{p}/sim_img_to_ref"], w)
                assert dxs.dtype == F32 and dys.dtype == F32
                g = np.stack([z[ikey(p, phase, it, "dxs")], z[ikey(p, phase, it, "dys")]], 1)
                out.append((np.stack([dxs, dys], 1) - g, g))
    return out


def check_mean_shifts_ref(z, mean_shift=opt.mean_shift):
    out = []
    for p in passes(z):
        for phase in ("rigid", "nonrigid"):
            for it in iterations(z, p, phase):
                if ikey(p, phase, it, "dxs") not in z:
                    continue
                ms = mean_shift(z[f"{p}/response"], z[ikey(p, phase, it, "dxs")], z[ikey(p, phase, it, "dys")],
                                z[f"{p}/visibilities"], z[f"{p}/sigma"])
                assert ms.dtype == F32 and ms.shape == (68, 2)
                g = z[ikey(p, phase, it, "mean_shifts_ref")]
                out.append((ms - g, g))
    return out


def check_mean_shifts_img(z):
    out = []
    for p in passes(z):
        for phase in ("rigid", "nonrigid"):
            for it in iterations(z, p, phase):
                if ikey(p, phase, it, "dxs") not in z:
                    continue
                vis = z[f"{p}/visibilities"]
                ms_ref = opt.mean_shift(z[f"{p}/response"], z[ikey(p, phase, it, "dxs")],
                                        z[ikey(p, phase, it, "dys")], vis, z[f"{p}/sigma"])
                ms = opt.to_image_frame(ms_ref, z[f"{p}/sim_ref_to_img"], vis)
                g = z[ikey(p, phase, it, "mean_shifts")]
                out.append((ms - g, g))
    return out


def check_param_update(z, phase_wanted):
    E = eigen_values()
    out = []
    for p, phase, it, local in updating_iterations(z):
        if phase != phase_wanted:
            continue
        dp = opt.solve_update(z[ikey(p, phase, it, "jacobian")], z[f"{p}/{phase}/weights"],
                              z[ikey(p, phase, it, "mean_shifts")], local, E, z[f"{p}/reg_factor"],
                              rigid=(phase == "rigid"), visible=z[f"{p}/visibilities"])
        assert dp.dtype == F32
        g = z[ikey(p, phase, it, "param_update")]
        out.append((dp - g, g))
    return out


def last_mean_shift_offsets(z):
    """dxs, dys of the last iteration of the last non-rigid phase that computed
    a mean-shift: the C++ evaluates the likelihood there."""
    p = passes(z)[-1]
    its = [it for it in iterations(z, p, "nonrigid") if ikey(p, "nonrigid", it, "dxs") in z]
    return p, z[ikey(p, "nonrigid", its[-1], "dxs")], z[ikey(p, "nonrigid", its[-1], "dys")]


def check_landmark_likelihoods(z):
    p, dxs, dys = last_mean_shift_offsets(z)
    lh = opt.landmark_likelihoods(z[f"{p}/response"], dxs, dys, z[f"{p}/visibilities"], z[f"{p}/sigma"])
    assert lh.dtype == F32
    return [(lh - z[f"{p}/landmark_likelihoods"], z[f"{p}/landmark_likelihoods"]),
            (lh - z["final/landmark_likelihoods"], z["final/landmark_likelihoods"])]


def check_model_likelihood(z):
    p, dxs, dys = last_mean_shift_offsets(z)
    vis = z[f"{p}/visibilities"]
    lh = opt.landmark_likelihoods(z[f"{p}/response"], dxs, dys, vis, z[f"{p}/sigma"])
    L = opt.model_likelihood(lh, vis)
    assert isinstance(L, np.float32)
    g = np.asarray(z["final/likelihood"])
    return [(np.asarray(L - g), g)]


def check_shape_change_norm(z):
    out = []
    for p in passes(z):
        for phase in ("rigid", "nonrigid"):
            for it in iterations(z, p, phase):
                k = ikey(p, phase, it, "shape_change_norm")
                if k not in z:
                    continue
                v = opt.shape_change_norm(shape_at(z, p, phase, it), z[ikey(p, phase, it - 1, "shape")])
                out.append((np.asarray(v - z[k]), np.asarray(z[k])))
    return out


def worst(pairs):
    """(max abs error, max error relative to the golden's magnitude, per array)."""
    if not pairs:
        return 0.0, 0.0
    return (max(float(np.max(np.abs(e))) for e, _ in pairs),
            max(rel_err(e, g) for e, g in pairs))


# --------------------------------------------------------------------------- tests
needs_golden = pytest.mark.skipif(not CASES, reason=f"no golden cases under {GOLDEN}")


@needs_golden
def test_all_ten_cases_present():
    assert len(CASES) >= 10, CASES


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_window_offsets(case):
    pairs = check_offsets(load_case(case))
    assert pairs
    assert worst(pairs)[0] <= MS_ATOL


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_mean_shifts_ref(case):
    pairs = check_mean_shifts_ref(load_case(case))
    assert pairs
    assert worst(pairs)[0] <= MS_ATOL


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_mean_shifts_image_frame(case):
    z = load_case(case)
    pairs = check_mean_shifts_img(z)
    assert worst(pairs)[0] <= MS_ATOL
    # the mapping alone, fed the golden reference-frame shifts
    for p in passes(z):
        k = ikey(p, "rigid", 0, "")
        ms = opt.to_image_frame(z[k + "mean_shifts_ref"], z[f"{p}/sim_ref_to_img"], z[f"{p}/visibilities"])
        np.testing.assert_allclose(ms, z[k + "mean_shifts"], rtol=0, atol=MS_ATOL)


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_weights_layout(case):
    z = load_case(case)
    for p in passes(z):
        wf = z[f"{p}/weight_factor"]
        g_rigid, g_nonrigid = z[f"{p}/rigid/weights"], z[f"{p}/nonrigid/weights"]
        # the same matrix serves both phases; x rows then y rows
        np.testing.assert_array_equal(g_rigid, g_nonrigid)
        np.testing.assert_array_equal(g_rigid[:68], g_rigid[68:])
        if wf == 0:
            w = opt.weight_matrix_diag(np.zeros(68), z[f"{p}/visibilities"], wf)
            np.testing.assert_array_equal(w, g_rigid)
        else:
            # confidences recovered from the golden, only to check the layout
            conf = g_rigid[:68].astype(F64) / F64(wf)
            w = opt.weight_matrix_diag(conf, z[f"{p}/visibilities"], wf)
            assert w.dtype == F32 and w.shape == (136,)
            np.testing.assert_allclose(w, g_rigid, rtol=1e-6, atol=0)


@needs_golden
@pytest.mark.parametrize("case", [c for c in CASES if c.endswith("_wild")])
def test_weights_from_patch_confidences(case):
    """Real patch confidences (when the CCNF reader is available): bit-exact."""
    ccnf = pytest.importorskip("clnfdiag.models.ccnf_file")
    z = load_case(case)
    scales = ("0.25", "0.35", "0.5")
    for p in passes(z):
        scale = scales[int(z[f"{p}/scale_index"])]
        data = _read_ccnf_cached(ccnf, str(MODEL_ROOT / f"patch_experts/ccnf_patches_{scale}_general.txt"))
        experts = data.experts[int(z[f"{p}/view_id"])]
        conf = np.array([e.patch_confidence for e in experts])
        w = opt.weight_matrix_diag(conf, z[f"{p}/visibilities"], z[f"{p}/weight_factor"])
        np.testing.assert_array_equal(w, z[f"{p}/rigid/weights"])


@functools.lru_cache(maxsize=None)
def _read_ccnf_cached(module, path):
    return module.read_ccnf(path)


@needs_golden
@pytest.mark.parametrize("phase", ["rigid", "nonrigid"])
@pytest.mark.parametrize("case", CASES)
def test_param_update(case, phase):
    pairs = check_param_update(load_case(case), phase)
    assert pairs
    for err, g in pairs:
        tol = DP_RTOL * np.abs(g) + DP_ATOL_REL * np.max(np.abs(g))
        assert np.all(np.abs(err) <= tol), (np.max(np.abs(err) / np.maximum(np.abs(g), 1e-30)))


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_landmark_likelihoods(case):
    for err, g in check_landmark_likelihoods(load_case(case)):
        assert rel_err(err, g) <= LH_RTOL


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_model_likelihood(case):
    (err, g), = check_model_likelihood(load_case(case))
    assert abs(float(err)) <= LH_RTOL * max(abs(float(g)), 1.0)


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_shape_change_norm(case):
    pairs = check_shape_change_norm(load_case(case))
    assert pairs
    for err, g in pairs:
        assert abs(float(err)) <= 1e-9 * max(float(g), 1e-3)


# --------------------------------------------------------------------------- demonstrations
@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_mean_shift_invariant_to_response_scaling(case):
    """The KDE mean-shift is a weighted centroid: multiplying a response map by
    a positive constant does not move it beyond float32 rounding.

    Each map is divided by its own maximum (per-map normalisation). The sums
    are sequential float32 accumulations over w*w cells (as in the C++), so
    the rounding noise grows with the window: <= 1e-5 px up to w = 11 (every
    default-preset pass), up to 1.4e-5 px at w = 15 (wild preset, pass 0).
    Scaling by a power of two is exact, so there the result is bit-identical.
    """
    z = load_case(case)
    for p in passes(z):
        w = int(z[f"{p}/window_size"])
        resp = z[f"{p}/response"]
        factors = (1.0 / resp.reshape(resp.shape[0], -1).max(axis=1)).astype(F32)
        scaled = resp * factors[:, None, None]
        pow2 = resp * F32(0.125)
        worst_px = 0.0
        for phase in ("rigid", "nonrigid"):
            for it in iterations(z, p, phase):
                if ikey(p, phase, it, "dxs") not in z:
                    continue
                args = (z[ikey(p, phase, it, "dxs")], z[ikey(p, phase, it, "dys")],
                        z[f"{p}/visibilities"], z[f"{p}/sigma"])
                a = opt.mean_shift(resp, *args)
                worst_px = max(worst_px, float(np.max(np.abs(a - opt.mean_shift(scaled, *args)))))
                np.testing.assert_array_equal(a, opt.mean_shift(pow2, *args))
        assert worst_px <= (1e-5 if w <= 11 else 2e-5), (p, w, worst_px)


@needs_golden
def test_no_kde_grid_variant_differs():
    """``grid=False`` (exact kernel) is a visible fault: > 1e-3 px from the C++
    on at least one golden case, while the gridded version matches it."""
    diffs = {}
    for case in CASES:
        z = load_case(case)
        diffs[case] = worst(check_mean_shifts_ref(z, mean_shift_exact_kernel))[0]
    assert max(diffs.values()) > 1e-3, diffs
    z = load_case("astronaut_default") if "astronaut_default" in CASES else load_case(CASES[0])
    assert worst(check_mean_shifts_ref(z))[0] <= MS_ATOL


# --------------------------------------------------------------------------- unit behaviour
def test_kde_table_layout_and_cache():
    t = opt.kde_kernel_table(1.5, 11)
    assert t.shape == (110, 110, 11, 11) and t.dtype == F32
    assert not t.flags.writeable
    with pytest.raises(ValueError):
        t[0, 0, 0, 0] = 1
    assert opt.kde_kernel_table(F32(1.5), 11) is t          # cached per (float32 sigma, w)
    assert opt.kde_kernel_table(1.25, 11) is not t
    # grid point (dx, dy) = (5.0, 3.0): peak at row 3 (y), column 5 (x)
    k = t[50, 30]
    assert np.unravel_index(np.argmax(k), k.shape) == (3, 5)
    assert k[3, 5] == 1.0
    a = opt.kde_exponent(1.5)
    np.testing.assert_allclose(k[4, 7], np.exp(a * (1.0 + 4.0)), rtol=1e-6)
    assert opt.kde_grid_size(15) == 150 and opt.kde_grid_size(7) == 70


def test_expf32_close_to_exact():
    x = -np.linspace(0, 120, 20001, dtype=F32)
    y = opt.expf32(x)
    exact = np.exp(x.astype(F64)).astype(F32)
    # at most one ulp from the correctly rounded value, and rarely that
    diff = np.abs(y.view(np.int32).astype(np.int64) - exact.view(np.int32).astype(np.int64))
    assert diff.max() <= 1
    assert np.mean(diff) < 1e-2


def test_invisible_landmarks():
    rng = np.random.default_rng(0)
    n, w = 5, 7
    resp = rng.uniform(0, 1, (n, w, w)).astype(F32)
    dxs = rng.uniform(0, w - 1, n).astype(F32)
    dys = rng.uniform(0, w - 1, n).astype(F32)
    vis = np.array([1, 0, 1, 1, 0])
    ms = opt.mean_shift(resp, dxs, dys, vis, 1.5)
    assert np.all(ms[vis == 0] == 0) and np.all(ms[vis == 1] != 0)
    np.testing.assert_array_equal(ms[vis == 1], opt.mean_shift(resp[vis == 1], dxs[vis == 1], dys[vis == 1], None, 1.5))
    sim = np.array([[0.9, -0.2], [0.2, 0.9]], F32)
    img = opt.to_image_frame(rng.normal(size=(n, 2)).astype(F32), sim, vis)
    assert np.all(img[vis == 0] == 0)
    lh = opt.landmark_likelihoods(resp, dxs, dys, vis, 1.5)
    assert np.all(lh[vis == 0] == F32(-1e8)) and np.all(lh[vis == 1] > 0)
    L = opt.model_likelihood(lh, vis)
    np.testing.assert_allclose(L, np.mean(np.log(lh[vis == 1].astype(F64) + 1e-8)), rtol=1e-6)


def test_mean_shift_clamps_outside_window():
    rng = np.random.default_rng(3)
    resp = rng.uniform(0, 1, (2, 9, 9)).astype(F32)
    far = opt.mean_shift(resp, np.array([-3.0, 20.0], F32), np.array([-1.0, 12.0], F32), None, 1.5)
    edge = opt.mean_shift(resp, np.array([0.0, 9 - 0.1], F32), np.array([0.0, 9 - 0.1], F32), None, 1.5)
    np.testing.assert_array_equal(far, edge)               # shift is relative to the clamped point


def test_solve_update_visibility_and_variants():
    rng = np.random.default_rng(7)
    n, m = 20, 8
    E = np.sort(rng.uniform(0.5, 50, m)).astype(F32)[::-1]
    J = rng.normal(size=(2 * n, 6 + m)).astype(F32)
    ms = rng.normal(size=(n, 2)).astype(F32)
    w = np.ones(2 * n, F32)
    p = rng.normal(size=m).astype(F32)
    vis = np.ones(n, bool)
    vis[[2, 11]] = False
    dp = opt.solve_update(J, w, ms, p, E, 10.0, rigid=False, visible=vis)
    # invisible landmarks: as if their rows and mean-shifts were not there
    J0 = J.copy()
    J0[np.r_[~vis, ~vis]] = 0
    ms0 = ms.copy()
    ms0[~vis] = 0
    np.testing.assert_array_equal(dp, opt.solve_update(J0, w, ms0, p, E, 10.0, rigid=False))
    # close to the exact double-precision solution
    R = np.r_[np.zeros(6), 10.0 / E.astype(F64)]
    J64, ms64 = J0.astype(F64), np.r_[ms0[:, 0], ms0[:, 1]].astype(F64)
    exact = np.linalg.solve(J64.T @ J64 + np.diag(R), J64.T @ ms64 - np.r_[np.zeros(6), R[6:] * p])
    np.testing.assert_allclose(dp, exact, rtol=1e-4, atol=1e-6 * np.abs(exact).max())
    # the no-regularisation fault (reg_factor 0) differs from the real update
    noreg = opt.solve_update(J, w, ms, p, E, 0.0, rigid=False, visible=vis)
    assert np.max(np.abs(noreg - dp)) > 1e-3
    # rigid: 6 parameters, local parameters ignored
    dpr = opt.solve_update(J[:, :6], w, ms, p, E, 10.0, rigid=True, visible=vis)
    assert dpr.shape == (6,)
    np.testing.assert_array_equal(dpr, opt.solve_update(J[:, :6], w, ms, p * 0, E, 99.0, rigid=True, visible=vis))


def test_cholesky_port():
    rng = np.random.default_rng(11)
    A = rng.normal(size=(40, 40))
    H = (A @ A.T + 40 * np.eye(40)).astype(F32)
    b = rng.normal(size=40).astype(F32)
    x, ok = opt.cholesky_solve_opencv(H, b)
    assert ok and x.dtype == F32
    np.testing.assert_allclose(x, np.linalg.solve(H.astype(F64), b.astype(F64)), rtol=1e-4, atol=1e-6)
    x, ok = opt.cholesky_solve_opencv(-H, b)
    assert not ok and np.all(x == 0)


def test_weight_matrix_identity_and_formula():
    conf = np.array([0.5, 0.25, 0.8, 0.0])
    np.testing.assert_array_equal(opt.weight_matrix_diag(conf, None, 0.0), np.ones(8, F32))
    w = opt.weight_matrix_diag(conf, None, 2.5)
    np.testing.assert_array_equal(w, np.tile(conf.astype(F32) * F32(2.5), 2))


def test_shape_change_norm_is_double():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], F32)
    b = a + F32(0.1)
    v = opt.shape_change_norm(a, b)
    assert isinstance(v, float)
    d = (a - b).astype(F64)
    assert v == float(np.sqrt(np.sum(d * d)))


# --------------------------------------------------------------------------- report
def summary() -> list[tuple[str, float, float, str, str]]:
    """Worst error per check over all cases: (check, abs, rel, bit-exact
    count, where the worst absolute error is). ``rel`` is relative to the
    largest golden magnitude of the compared array (per iteration)."""
    checks = {
        "window offsets dxs/dys (px)": check_offsets,
        "mean_shifts_ref (px)": check_mean_shifts_ref,
        "mean_shifts image frame (px)": check_mean_shifts_img,
        "param_update rigid": lambda z: check_param_update(z, "rigid"),
        "param_update nonrigid": lambda z: check_param_update(z, "nonrigid"),
        "landmark likelihoods": check_landmark_likelihoods,
        "model likelihood": check_model_likelihood,
        "shape_change_norm": check_shape_change_norm,
        "no-kde-grid vs golden (px)": lambda z: check_mean_shifts_ref(z, mean_shift_exact_kernel),
    }
    rows = []
    for name, fn in checks.items():
        best_abs, rel_max, where, n_exact, n_total = 0.0, 0.0, "-", 0, 0
        for case in CASES:
            pairs = fn(load_case(case))
            a, r = worst(pairs)
            rel_max = max(rel_max, r)
            n_exact += sum(int(np.sum(e == 0)) for e, _ in pairs)
            n_total += sum(int(np.size(e)) for e, _ in pairs)
            if a > best_abs:
                best_abs, where = a, case
        rows.append((name, best_abs, rel_max, f"{n_exact}/{n_total}", where))
    return rows


if __name__ == "__main__":
    for name, a, r, exact, where in summary():
        print(f"{name:30s} abs {a:9.3g}  rel {r:9.3g}  bit-exact {exact:>11s}  worst: {where}")
