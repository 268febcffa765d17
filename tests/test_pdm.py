"""PDM parity with OpenFace C++ 2.x, stage by stage, on every shared golden case.

Each check starts from the golden's own inputs for that stage (never from our previous
output), so errors do not accumulate and should stay at float32 rounding. Measured
worst errors over the 10 ``golden`` + 4 ``golden-hierarchical`` cases are quoted next
to each tolerance.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from clnfdiag.pdm import PDM, zero_invisible_rows
from clnfdiag.rotation import (axis_angle_to_euler, axis_angle_to_rotation_matrix,
                               euler_to_axis_angle, euler_to_rotation_matrix, orthonormalise,
                               rotation_matrix_to_axis_angle, rotation_matrix_to_euler)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
GOLDEN_H = SHARED / "golden-hierarchical"
MODEL_REL = Path("2.2.0/originals/lib/local/LandmarkDetector/model")
PDM_68 = "pdms/In-the-wild_aligned_PDM_68.txt"


def _cases(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "stages.npz").is_file())


# Tests are generated only for the cases that exist (none without shared/).
CASES = _cases(GOLDEN) + _cases(GOLDEN_H)
HIER_CASES = _cases(GOLDEN_H)
case_param = pytest.mark.parametrize("case_dir", CASES, ids=lambda p: p.name)


def _model_dir() -> Path:
    root = Path(os.environ.get("OPENFACE_MODELS_DIR", SHARED / "OpenFaceModels"))
    return root / MODEL_REL


@functools.lru_cache(maxsize=None)
def _pdm(rel: str = PDM_68) -> PDM:
    path = _model_dir() / rel
    if not path.is_file():
        pytest.skip(f"OpenFace PDM not found: {path}")
    return PDM.from_file(path)


@functools.lru_cache(maxsize=None)
def _golden(case_dir: Path) -> tuple[dict, dict]:
    manifest = json.loads((case_dir / "manifest.json").read_text())
    with np.load(case_dir / "stages.npz") as z:
        stages = {k: z[k] for k in z.files if k != "input/gray"}
    return manifest, stages


def _passes(z: dict) -> list[str]:
    return sorted(k.split("/")[0] for k in z if k.startswith("pass") and k.endswith("/window_size"))


def _iterations(z: dict, p: str, phase: str):
    """``(key prefix, params_global, params_local)`` at the start of every dumped iteration.

    The first iteration starts from the pass inputs (rigid) or the rigid phase's result
    (non-rigid); later ones from the previous iteration's clamped parameters. The last
    entry of a phase that stopped early has a shape but no update.
    """
    if phase == "rigid":
        g, l = z[f"{p}/params_global_in"], z[f"{p}/params_local_in"]
    else:
        g, l = z[f"{p}/rigid/final_global"], z[f"{p}/rigid/final_local"]
    k = 0
    while f"{p}/{phase}/iter{k:02d}/shape" in z:
        pre = f"{p}/{phase}/iter{k:02d}/"
        yield pre, g, l
        if pre + "params_global" not in z:
            return
        g, l = z[pre + "params_global"], z[pre + "params_local"]
        k += 1


def _all_iterations(z: dict):
    for p in _passes(z):
        for phase in ("rigid", "nonrigid"):
            for pre, g, l in _iterations(z, p, phase):
                yield p, phase, pre, g, l


def _max_rel(a, b) -> float:
    """max |a - b| relative to max |b| (float64)."""
    b64 = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b64)) / np.max(np.abs(b64)))


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def _px_tol(golden_xy) -> float:
    """1e-4 px, or 4 float32 ulps of the largest coordinate if that is coarser."""
    return max(1e-4, 4 * float(np.spacing(np.float32(np.max(np.abs(golden_xy))))))


# ----------------------------------------------------------------------- init
@case_param
def test_init_params_from_bbox(case_dir):
    # measured: bit-identical on every case (scale, rotation and translation)
    m, z = _golden(case_dir)
    got = _pdm().calc_params_from_bbox(m["bbox"])
    want = z["init/params_global"]
    assert got.dtype == np.float32 and got.shape == (6,)
    assert abs(got[0] / want[0] - 1) <= 1e-6
    assert np.array_equal(got[1:4], want[1:4])
    assert _max_abs(got[4:], want[4:]) <= 1e-5


@case_param
def test_init_shape(case_dir):
    # measured: 0 px
    _, z = _golden(case_dir)
    got = _pdm().calc_shape_2d(z["init/params_local"], z["init/params_global"])
    assert got.dtype == np.float32 and got.shape == (68, 2)
    assert _max_abs(got, z["init/shape"]) <= 1e-4


# ------------------------------------------------------------------ per pass
@case_param
def test_reference_shape_and_landmarks(case_dir):
    # measured: reference shape 1.4e-7 relative; landmarks 6.1e-5 px (2 ulp at ~300 px)
    m, z = _golden(case_dir)
    pdm = _pdm()
    for p in _passes(z):
        scale = m["parameters"]["patch_scales"][int(z[f"{p}/scale_index"])]
        local = z[f"{p}/params_local_in"]
        ref = pdm.calc_shape_2d(local, [scale, 0, 0, 0, 0, 0])
        assert _max_rel(ref, z[f"{p}/reference_shape"]) <= 1e-6, p
        img = pdm.calc_shape_2d(local, z[f"{p}/params_global_in"])
        want = z[f"{p}/landmarks_at_response"]
        assert _max_abs(img, want) <= _px_tol(want), p


# ------------------------------------------------------------- per iteration
@case_param
def test_iteration_shapes(case_dir):
    # measured: 6.1e-5 px worst (2 float32 ulps), most iterations bit-identical
    _, z = _golden(case_dir)
    pdm = _pdm()
    for _, _, pre, g, l in _all_iterations(z):
        want = z[pre + "shape"]
        assert _max_abs(pdm.calc_shape_2d(l, g), want) <= _px_tol(want), pre


@case_param
def test_jacobians(case_dir):
    # measured: worst column 2.1e-7 relative to that column's largest entry
    _, z = _golden(case_dir)
    pdm = _pdm()
    n_checked = 0
    for p, phase, pre, g, l in _all_iterations(z):
        if pre + "jacobian" not in z:
            continue
        want = z[pre + "jacobian"]
        got = pdm.rigid_jacobian(l, g) if phase == "rigid" else pdm.jacobian(l, g)
        assert got.dtype == np.float32 and got.shape == want.shape
        vis = z[f"{p}/visibilities"] != 0
        rows = np.concatenate([vis, vis])
        # Invisible landmarks: OpenFace may have zeroed their rows before dumping.
        hidden = want[~rows]
        assert np.all(hidden == 0) or np.allclose(hidden, got[~rows], rtol=1e-6, atol=1e-6)
        if np.all(hidden == 0):
            got = zero_invisible_rows(got, vis)
        scale = np.maximum(np.abs(want[rows]).max(axis=0), 1e-12)
        err = np.abs(got[rows].astype(np.float64) - want[rows]).max(axis=0) / scale
        assert err.max() <= 1e-6, (pre, int(err.argmax()))
        n_checked += 1
    assert n_checked > 0


@case_param
def test_update_and_clamp(case_dir):
    # measured: scale, translation and local parameters bit-identical; rotation
    # 6.3e-8 rad worst (float32 rounding of the composed rotation matrix)
    _, z = _golden(case_dir)
    pdm = _pdm()
    for _, _, pre, g, l in _all_iterations(z):
        if pre + "param_update" not in z:
            continue
        new_l, new_g = pdm.update_parameters(z[pre + "param_update"], l, g)
        new_l, new_g = pdm.clamp(new_l, new_g, limit_pose=True)
        want_g, want_l = z[pre + "params_global"], z[pre + "params_local"]
        assert new_g.dtype == np.float32 and new_l.dtype == np.float32
        assert abs(new_g[0] / want_g[0] - 1) <= 1e-6, pre
        assert _max_abs(new_g[1:4], want_g[1:4]) <= 1e-6, pre
        assert _max_abs(new_g[4:], want_g[4:]) <= _px_tol(want_g[4:]), pre
        assert _max_abs(new_l, want_l) <= 1e-6 * max(1.0, float(np.abs(want_l).max())), pre


# ------------------------------------------------- CalcParams from landmarks
def _part_mappings() -> dict[str, list[tuple[int, int]]]:
    """``part name -> [(main index, part index)]`` from main_clnf_general.txt."""
    out = {}
    for line in (_model_dir() / "main_clnf_general.txt").read_text().splitlines():
        tok = line.split()
        if tok and tok[0] == "LandmarkDetector_part":
            nums = [int(t) for t in tok[3:]]
            out[tok[2]] = list(zip(nums[0::2], nums[1::2]))
    return out


@pytest.mark.parametrize("case_dir", HIER_CASES, ids=lambda p: p.name)
def test_calc_params_from_landmarks_hierarchical(case_dir):
    # OpenFace refits the main PDM to the landmarks with the part models' points
    # substituted (rotation hint 0). measured: global 3.4e-7 (rotation, rad) and
    # 1.2e-7 relative (scale); local 1.5e-4 absolute; landmarks 6.1e-5 px.
    _, z = _golden(case_dir)
    if int(z["hierarchical/parts_used"]) != 1:
        # Face too small for the parts: no refit, the main result stands as is.
        assert int(z["hierarchical/parts_used"]) == 0
        assert np.array_equal(z["final/landmarks"], z["hierarchical/landmarks_before"])
        last = _passes(z)[-1]
        assert np.array_equal(z["final/params_global"], z[f"{last}/nonrigid/final_global"])
        assert np.array_equal(z["final/params_local"], z[f"{last}/nonrigid/final_local"])
        return
    lm = z["hierarchical/landmarks_before"].copy()
    for part, pairs in _part_mappings().items():
        part_lm = z[f"hierarchical/{part}/landmarks"]
        for main_i, part_i in pairs:
            lm[main_i] = part_lm[part_i]
    pdm = _pdm()
    g, l = pdm.calc_params_from_landmarks(lm)
    want_g, want_l = z["final/params_global"], z["final/params_local"]
    assert abs(g[0] / want_g[0] - 1) <= 1e-6
    assert _max_abs(g[1:4], want_g[1:4]) <= 1e-6
    assert _max_abs(g[4:], want_g[4:]) <= 1e-4
    assert _max_abs(l, want_l) <= 5e-4
    assert _max_abs(pdm.calc_shape_2d(l, g), z["final/landmarks"]) <= 1e-3


PART_PDMS = {"inner": "model_inner/pdms/pdm_51_inner.txt",
             "left_eye_28": "model_eye/pdms/pdm_28_l_eye_3D_closed.txt",
             "right_eye_28": "model_eye/pdms/pdm_28_eye_3D_closed.txt"}


@pytest.mark.parametrize("case_dir", HIER_CASES, ids=lambda p: p.name)
@pytest.mark.parametrize("part", sorted(PART_PDMS))
def test_part_model_shapes(case_dir, part):
    # The part PDMs go through the same code: their landmarks are their CalcShape2D
    # (also when the parts did not run: then the parameters are the part PDM's fit
    # to the main landmarks, see test_calc_params_from_landmarks_parts_not_used).
    _, z = _golden(case_dir)
    pdm = _pdm(PART_PDMS[part])
    got = pdm.calc_shape_2d(z[f"hierarchical/{part}/params_local"],
                            z[f"hierarchical/{part}/params_global"])
    want = z[f"hierarchical/{part}/landmarks"]
    assert _max_abs(got, want) <= _px_tol(want)


@pytest.mark.parametrize("case_dir", [c for c in HIER_CASES
                                      if int(_golden(c)[1]["hierarchical/parts_used"]) == 0],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("part", sorted(PART_PDMS))
def test_calc_params_from_landmarks_parts_not_used(case_dir, part):
    # When the face is too small OpenFace still fits each part PDM to the main
    # landmarks and keeps that fit: the dumped part parameters are PDM::CalcParams
    # output itself. measured: scale 7.5e-8 relative, rotation 8.3e-7 rad,
    # translation 1.5e-5 px, local 4.5e-5, landmarks 3.1e-5 px.
    _, z = _golden(case_dir)
    pairs = np.array(_part_mappings()[part])
    pdm = _pdm(PART_PDMS[part])
    lm = np.zeros((pdm.n_points, 2), dtype=np.float32)
    lm[pairs[:, 1]] = z["hierarchical/landmarks_before"][pairs[:, 0]]
    g, l = pdm.calc_params_from_landmarks(lm)
    want_g = z[f"hierarchical/{part}/params_global"]
    assert abs(g[0] / want_g[0] - 1) <= 5e-7
    assert _max_abs(g[1:4], want_g[1:4]) <= 2e-6
    assert _max_abs(g[4:], want_g[4:]) <= 1e-4
    assert _max_abs(l, z[f"hierarchical/{part}/params_local"]) <= 2e-4
    assert _max_abs(pdm.calc_shape_2d(l, g), z[f"hierarchical/{part}/landmarks"]) <= 2e-4


def test_calc_params_from_landmarks_round_trip():
    pdm = _pdm()
    rng = np.random.default_rng(3)
    true_l = (rng.standard_normal(pdm.n_modes) * np.sqrt(pdm.eigen_values) * 0.5).astype(np.float32)
    true_g = np.array([1.3, 0.1, -0.2, 0.05, 240.0, 260.0], dtype=np.float32)
    lm = pdm.calc_shape_2d(true_l, true_g)
    g, l = pdm.calc_params_from_landmarks(lm)
    assert g.dtype == np.float32 and l.dtype == np.float32 and l.shape == (pdm.n_modes,)
    # Regularised fit: shape recovered closely, parameters approximately.
    assert _max_abs(pdm.calc_shape_2d(l, g), lm) < 0.5
    assert _max_abs(g[1:4], true_g[1:4]) < 0.02


def test_calc_params_from_landmarks_skips_missing_points():
    pdm = _pdm()
    g0 = np.array([1.0, 0.0, 0.1, 0.0, 200.0, 200.0], dtype=np.float32)
    lm = pdm.calc_shape_2d(pdm.zero_local(), g0)
    lm_missing = lm.copy()
    lm_missing[[0, 1, 2, 60], 0] = 0  # OpenFace marks a missing point by x == 0
    g, l = pdm.calc_params_from_landmarks(lm_missing)
    assert _max_abs(pdm.calc_shape_2d(l, g), lm) < 0.5


# ------------------------------------------------------------------- clamp
def test_clamp_local_bounds_and_no_pose_limit():
    pdm = _pdm()
    # float32 like the C++ (float n_sigmas times sqrt of a float eigenvalue)
    bound = np.float32(3) * np.sqrt(pdm.eigen_values)
    local = np.zeros(pdm.n_modes, dtype=np.float32)
    local[0], local[1], local[2] = 10 * bound[0], -10 * bound[1], 0.5 * bound[2]
    g = np.array([1, 2.0, -2.5, 3.0, 5, 6], dtype=np.float32)
    new_l, new_g = pdm.clamp(local, g, limit_pose=True)
    assert new_l[0] == bound[0] and new_l[1] == -bound[1]
    assert new_l[2] == local[2]
    # OpenFace 2.x's pose limit is commented out: rotations pass through untouched.
    assert np.array_equal(new_g, g)
    _, clipped = pdm.clamp(local, g, clip_rotations=True)
    assert np.allclose(clipped[1:4], [np.pi / 2, -np.pi / 2, np.pi / 2])
    assert local[0] == np.float32(10 * bound[0])  # input not modified


# --------------------------------------------------------- internal consistency
def test_jacobian_predicts_update():
    """A small update moves the shape by J @ delta (to first order), rigid and local."""
    pdm = _pdm()
    rng = np.random.default_rng(0)
    l = (rng.standard_normal(pdm.n_modes) * np.sqrt(pdm.eigen_values) * 0.3).astype(np.float32)
    g = np.array([1.1, 0.15, -0.25, 0.1, 250.0, 240.0], dtype=np.float32)
    delta = np.concatenate([[1e-3, 2e-3, -1.5e-3, 1e-3, 0.1, -0.2],
                            rng.standard_normal(pdm.n_modes) * 1e-2]).astype(np.float32)
    new_l, new_g = pdm.update_parameters(delta, l, g)
    moved = pdm.calc_shape_2d(new_l, new_g).astype(np.float64) - pdm.calc_shape_2d(l, g)
    predicted = pdm.jacobian(l, g).astype(np.float64) @ delta
    predicted = np.stack([predicted[:68], predicted[68:]], axis=1)
    assert _max_abs(moved, predicted) < 0.02 * np.abs(predicted).max()
    rigid = pdm.rigid_jacobian(l, g)
    assert np.array_equal(rigid, pdm.jacobian(l, g)[:, :6])


def test_zero_invisible_rows():
    jac = np.ones((6, 4), dtype=np.float32)
    out = zero_invisible_rows(jac, [1, 0, 1])
    assert np.all(out[[1, 4]] == 0) and np.all(out[[0, 2, 3, 5]] == 1) and np.all(jac == 1)


def test_calc_bounding_box():
    pdm = _pdm()
    g = np.array([2.0, 0, 0, 0, 100, 50], dtype=np.float32)
    box = pdm.calc_bounding_box(g)
    shape = pdm.calc_shape_2d(pdm.zero_local(), g)
    assert np.allclose(box, [shape[:, 0].min(), shape[:, 1].min(),
                             np.ptp(shape[:, 0]), np.ptp(shape[:, 1])])
    # CalcParams(bbox) inverts CalcBoundingBox for a zero rotation.
    g2 = pdm.calc_params_from_bbox(box)
    assert np.allclose(g2, g, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------- rotations
EULERS = [(0.0, 0.0, 0.0), (0.1, -0.2, 0.3), (-0.5, 0.4, -1.0), (1.2, -1.0, 2.5)]


@pytest.mark.parametrize("euler", EULERS)
def test_euler_matrix_round_trip(euler):
    rot = euler_to_rotation_matrix(euler)
    assert rot.dtype == np.float32
    rx = cv2.Rodrigues(np.array([euler[0], 0, 0]))[0]
    ry = cv2.Rodrigues(np.array([0, euler[1], 0]))[0]
    rz = cv2.Rodrigues(np.array([0, 0, euler[2]]))[0]
    assert np.allclose(rot, rx @ ry @ rz, atol=1e-6)
    assert np.allclose(rotation_matrix_to_euler(rot), euler, atol=2e-6)
    assert np.allclose(axis_angle_to_euler(euler_to_axis_angle(euler)), euler, atol=2e-6)


@pytest.mark.parametrize("aa", [(0.0, 0.0, 0.0), (0.1, 0.2, -0.3), (1.0, -2.0, 0.5), (0.0, 3.1, 0.0)])
def test_axis_angle_matches_opencv(aa):
    aa = np.array(aa, dtype=np.float64)
    want = cv2.Rodrigues(aa)[0]
    got = axis_angle_to_rotation_matrix(aa)
    assert got.dtype == np.float32 and np.allclose(got, want, atol=1e-6)
    back = rotation_matrix_to_axis_angle(want)
    assert np.allclose(back, cv2.Rodrigues(want.astype(np.float32))[0].ravel(), atol=1e-5)


def test_rotation_matrix_to_axis_angle_half_turn():
    rot = np.diag([-1.0, 1.0, -1.0])  # pi about y
    aa = rotation_matrix_to_axis_angle(rot)
    assert np.allclose(np.abs(aa), [0, np.pi, 0], atol=1e-6)
    assert np.allclose(axis_angle_to_rotation_matrix(aa), rot, atol=1e-6)


def test_orthonormalise():
    w = np.float32([0.02, -0.03, 0.01])
    m = np.array([[1, -w[2], w[1]], [w[2], 1, -w[0]], [-w[1], w[0], 1]], dtype=np.float32)
    r = orthonormalise(m)
    assert r.dtype == np.float32
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-6) and np.isclose(np.linalg.det(r), 1, atol=1e-6)
    assert np.allclose(r, m, atol=1e-3)
    assert np.allclose(orthonormalise(-np.eye(3)) @ orthonormalise(-np.eye(3)).T, np.eye(3))
    assert np.isclose(np.linalg.det(orthonormalise(-np.eye(3))), 1)
