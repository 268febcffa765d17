"""OpenBLAS's SkylakeX small-matrix sgemm kernel (clnfdiag.numerics.sgemm) and its three call sites.

Hand-computable cases pin each summation path (FMA chain, 16 lanes with tree A,
16 lanes with tree B, beta 0 / 1); an exact rational reference checks the
generic kernel on random shapes; the specialised loops are checked against the
generic kernel; and the call sites are checked bit for bit against the C++
goldens: raw CCNF responses from the golden areas of interest, NU-RLMS
parameter updates from the golden Jacobians, weights and mean-shifts, and the
PDM's CalcShape3D through the reference shape (``CalcShape2D`` with zero
rotation) and, with the C library's ``sinf``/``cosf`` rotation, through every
golden shape and Jacobian.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from clnfdiag import optimiser as opt
from clnfdiag.experts import PatchExperts, _raw_response_numpy, raw_response
from clnfdiag.golden import read_case
from clnfdiag.numerics.sgemm import (chain_dot, gemv_m1_nb, hessian_nb, lane_row_start,
                                     lanes16_dot, opencv_gemv_add_nb, reduce_tree_a,
                                     reduce_tree_b, sgemm, sgemm_small_nn, small_kernel_permitted,
                                     uses_tree_a)
from clnfdiag.pdm import PDM, _jacobian_nb, _project_nb

from _models import model_or_fail
from conftest import project_cases, shared_cases

F32 = np.float32
T = F32(2.0 ** -24)            # half an ulp of 1.0 in float32
ONE_PLUS = F32(1 + 2.0 ** -23)  # 1.0 + one ulp


def _phase_start(case, k: int, phase: str, it: int):
    """Golden parameters at the start of iteration ``it`` of a phase."""
    if it > 0:
        prefix = f"pass{k}/{phase}/iter{it - 1:02d}/"
        return case.stage(prefix + "params_global"), case.stage(prefix + "params_local")
    if phase == "rigid":
        return case.stage(f"pass{k}/params_global_in"), case.stage(f"pass{k}/params_local_in")
    return case.stage(f"pass{k}/rigid/final_global"), case.stage(f"pass{k}/rigid/final_local")



def bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=F32).view(np.uint32)


# --------------------------------------------------------------------------- exact reference
def _round32(x: Fraction) -> F32:
    """Round a rational to the nearest float32, ties to even."""
    f = F32(float(x))
    cands = {float(f), float(np.nextafter(f, F32(np.inf))), float(np.nextafter(f, F32(-np.inf)))}
    return F32(min(cands, key=lambda c: (abs(Fraction(c) - x),
                                         int(np.array(c, F32).view(np.uint32)) & 1)))


def _fma_exact(a, b, c) -> F32:
    return _round32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def _reference(A, B, C, beta_one):
    """The kernel's element rules written out with exact rational FMAs."""
    M, K = A.shape
    N = B.shape[1]
    m16 = M & ~15
    lane_rows = M - m16 <= 8 and K >= 32
    out = np.empty((M, N), F32)
    for i in range(M):
        for j in range(N):
            if i < m16 or not lane_rows:
                s = F32(0)
                for k in range(K):
                    s = _fma_exact(A[i, k], B[k, j], s)
            else:
                x = [F32(0)] * 16
                for k in range(K):
                    x[k % 16] = _fma_exact(A[i, k], B[k, j], x[k % 16])
                if i < (M & ~3) or j < (N & ~3):
                    g = [(x[4 * q] + x[4 * q + 1]) + (x[4 * q + 2] + x[4 * q + 3]) for q in range(4)]
                    s = (g[0] + g[1]) + (g[2] + g[3])
                else:
                    h = [x[l + 8] + x[l] for l in range(8)]
                    q = [h[l + 4] + h[l] for l in range(4)]
                    s = (q[0] + q[2]) + (q[1] + q[3])
            out[i, j] = C[i, j] + s if beta_one else s
    return out


# --------------------------------------------------------------------------- hand cases
# Products (B = ones) that tell the three sums apart:
#   V1 = [2^-24, 2^-24, 1]: a chain or tree A adds the two halves first -> 1 + ulp;
#                           tree B meets 1 with one half first -> 1.
#   V2 = [1, 0, 2^-24, 2^-24]: a chain rounds each half away -> 1; tree A adds the
#                           halves first -> 1 + ulp; tree B -> 1.
V1 = [T, T, F32(1)]
V2 = [F32(1), F32(0), T, T]


def _rows(patterns, K):
    A = np.zeros((len(patterns), K), F32)
    for i, v in enumerate(patterns):
        A[i, :len(v)] = v
    return A


def test_paths_by_position():
    assert lane_row_start(17, 32) == 16       # one tail row, K >= 32: 16 lanes
    assert lane_row_start(17, 31) == 17       # K < 32: chains
    assert lane_row_start(25, 122) == 25      # 9 tail rows: chains
    assert lane_row_start(48, 122) == 48      # no tail
    assert lane_row_start(225, 122) == 224    # window 15: the last window
    assert lane_row_start(40, 136) == 32 and lane_row_start(6, 136) == 0
    assert lane_row_start(16, 56) == 16       # eye Hessian: chains
    assert lane_row_start(1, 34) == 0 and lane_row_start(1, 10) == 1
    assert uses_tree_a(4, 4, 8, 5) and uses_tree_a(5, 3, 6, 6)
    assert not uses_tree_a(4, 4, 6, 6) and not uses_tree_a(48, 4, 49, 7)
    assert small_kernel_permitted(225, 7, 122) and not small_kernel_permitted(121, 1, 121 * 121)


def test_chain_rounds_every_step():
    a = np.array([T, T, F32(1)], F32)
    assert chain_dot(a, np.ones(3, F32)) == ONE_PLUS          # 2^-23 + 1: exact
    a = np.array([F32(1), T, T], F32)
    assert chain_dot(a, np.ones(3, F32)) == F32(1)            # each half rounds away (ties to even)


def test_chain_is_fused():
    # 1 + x*y with x*y = -(1 + 2^-11 + 2^-24): one rounding keeps the 2^-24.
    x = F32(1 + 2.0 ** -12)
    a = np.array([F32(1), -x], F32)
    b = np.array([F32(1), x], F32)
    assert chain_dot(a, b) == F32(-(2.0 ** -11 + 2.0 ** -24))


def test_trees_hand_values():
    x = np.zeros(16, F32)
    x[:3] = V1
    assert reduce_tree_a(x) == ONE_PLUS and reduce_tree_b(x) == F32(1)
    x[:] = 0
    x[:4] = V2
    assert reduce_tree_a(x) == ONE_PLUS and reduce_tree_b(x) == F32(1)
    x[:] = 0
    x[1], x[9], x[0] = T, T, F32(1)       # tree B: h1 = x9 + x1 = 2^-23 before meeting 1
    assert reduce_tree_b(x) == ONE_PLUS and reduce_tree_a(x) == F32(1)
    lanes = np.empty(16, F32)
    a = np.zeros(32, F32)
    a[16], a[17], a[18] = V1                          # lanes 0-2 again (k = 16..18)
    assert lanes16_dot(a, np.ones(32, F32), True, lanes) == ONE_PLUS
    assert lanes16_dot(a, np.ones(32, F32), False, lanes) == F32(1)


def test_tree_b_adds_upper_half_first():
    x = np.zeros(16, F32)
    x[0], x[8], x[1] = T, T, F32(1)        # h0 = 2^-23 exactly, then 1 + 2^-23
    assert reduce_tree_b(x) == ONE_PLUS
    assert reduce_tree_a(x) == F32(1)      # (x0 + x1) rounds the half away first


@pytest.mark.parametrize("M, lane_rows", [(17, [16]), (4, [0, 1, 2, 3]), (6, list(range(6))),
                                         (9, []), (33, [32])])
def test_kernel_hand_cases(M, lane_rows):
    """Rows alternate V1 / V2; B is ones, N = 5 (columns 0-3 a 4-column block, 4 the tail)."""
    K, N = 32, 5
    A = _rows([V1 if i % 2 == 0 else V2 for i in range(M)], K)
    B = np.ones((K, N), F32)
    out = sgemm(A, B)
    m4 = M & ~3
    for i in range(M):
        for j in range(N):
            v1 = i % 2 == 0
            if i not in lane_rows:
                want = ONE_PLUS if v1 else F32(1)                      # chain
            elif i < m4 or j < 4:
                want = ONE_PLUS                                        # tree A
            else:
                want = F32(1)                                          # tree B
            assert out[i, j] == want, (i, j, out[i, j])


def test_k_below_32_is_chains():
    A = _rows([V2], 31)
    assert np.all(sgemm(A, np.ones((31, 6), F32)) == F32(1))


def test_beta_one_adds_c_once_and_beta_zero_ignores_c():
    A = _rows([[T, T]], 2)
    B = np.ones((2, 1), F32)
    C = np.ones((1, 1), F32)
    # Chain 2^-24 + 2^-24 = 2^-23, then C + 2^-23 once (accumulating into C would give 1).
    assert sgemm(A, B, C, beta=1.0)[0, 0] == ONE_PLUS
    assert sgemm(A, B, np.full((1, 1), np.nan, F32), beta=0.0)[0, 0] == F32(2.0 ** -23)
    # The same on the 16-lane path (K = 32).
    A = _rows([[T, T]], 32)
    B = np.ones((32, 5), F32)
    C = np.ones((1, 5), F32)
    assert np.all(sgemm(A, B, C, beta=1.0) == ONE_PLUS)
    assert np.all(sgemm(A, B, np.full((1, 5), np.nan, F32)) == F32(2.0 ** -23))
    with pytest.raises(ValueError):
        sgemm(A, B, C, beta=0.5)
    with pytest.raises(ValueError):
        sgemm(A, B, C, beta=1.0, alpha=2.0)


@pytest.mark.parametrize("M, N, K", [(6, 6, 40), (40, 5, 33), (17, 7, 40), (1, 13, 34),
                                     (1, 9, 10), (6, 5, 50), (25, 3, 40), (3, 4, 16)])
def test_generic_kernel_against_exact_reference(M, N, K):
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    A = rng.standard_normal((M, K)).astype(F32)
    B = rng.standard_normal((K, N)).astype(F32)
    C = rng.standard_normal((M, N)).astype(F32)
    for beta_one in (False, True):
        out = C.copy()
        sgemm_small_nn(A, B, out, beta_one)
        np.testing.assert_array_equal(bits(out), bits(_reference(A, B, C, beta_one)))


# --------------------------------------------------------------------------- specialised loops
@pytest.mark.parametrize("R, k", [(136, 6), (136, 40), (102, 38), (56, 16), (56, 6), (102, 6),
                                  (40, 21), (20, 7)])
@pytest.mark.parametrize("unit", [True, False])
def test_hessian_kernel_is_the_generic_kernel(R, k, unit):
    rng = np.random.default_rng(R * k)
    J = rng.standard_normal((R, k)).astype(F32)
    jw = J if unit else J * rng.random((R, 1)).astype(F32)
    reg = rng.random(k).astype(F32)
    # sgemm_(N, N, k, k, R, J, k, J_w_t, R, 1, H, k): A(i, r) = J[r, i], B(r, j) = jw[r, j],
    # C(i, j) = H[j, i].
    ref = sgemm(J.T, jw, np.diag(reg).astype(F32).T, beta=1.0).T
    np.testing.assert_array_equal(bits(hessian_nb(J, jw, reg)), bits(ref))
    np.testing.assert_array_equal(bits(opt.hessian_sgemm(jw, J, reg)), bits(ref))


def test_hessian_is_not_symmetric_where_the_paths_differ():
    rng = np.random.default_rng(3)
    J = rng.standard_normal((136, 40)).astype(F32)
    H = hessian_nb(J, J, np.zeros(40, F32))
    # Both chains (q < 32) or both lanes (p, q >= 32): mirrored exactly.
    np.testing.assert_array_equal(H[:32, :32], H[:32, :32].T)
    np.testing.assert_array_equal(H[32:, 32:], H[32:, 32:].T)
    assert not np.array_equal(H[:32, 32:], H[32:, :32].T)


@pytest.mark.parametrize("N, K", [(204, 34), (153, 32), (84, 10), (7, 40), (5, 31)])
@pytest.mark.parametrize("beta_one", [True, False])
def test_gemv_m1_is_the_generic_kernel(N, K, beta_one):
    rng = np.random.default_rng(N + K)
    x = rng.standard_normal(K).astype(F32)
    V = rng.standard_normal((N, K)).astype(F32)
    c = rng.standard_normal(N).astype(F32)
    out = np.empty(N, F32)
    gemv_m1_nb(x, np.ascontiguousarray(V.T), c, out, beta_one)
    ref = sgemm(x[None, :], V.T, c[None, :], beta=1.0 if beta_one else 0.0)[0]
    np.testing.assert_array_equal(bits(out), bits(ref))


def test_opencv_gemv_order():
    """OpenCV's A·Bᵀ branch: four double accumulators over k mod 4 while k <= K - 4,
    the leftovers on the first, ``((s0 + s1) + s2) + s3 + c`` rounded once."""
    rng = np.random.default_rng(7)
    V = rng.standard_normal((84, 10)).astype(F32)
    p = rng.standard_normal(10).astype(F32)
    c = rng.standard_normal(84).astype(F32)
    out = np.empty(84, F32)
    opencv_gemv_add_nb(V, p, c, out)
    t = V.astype(np.float64) * p.astype(np.float64)           # exact products
    s0 = ((t[:, 0] + t[:, 4]) + t[:, 8]) + t[:, 9]
    s1, s2, s3 = t[:, 1] + t[:, 5], t[:, 2] + t[:, 6], t[:, 3] + t[:, 7]
    want = ((((s0 + s1) + s2) + s3) + c.astype(np.float64)).astype(F32)
    np.testing.assert_array_equal(bits(out), bits(want))


# --------------------------------------------------------------------------- goldens
CASES = project_cases() + shared_cases()


def _case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.fixture(scope="module")
def model():
    return model_or_fail()


@pytest.fixture(scope="module")
def experts(model) -> PatchExperts:
    return PatchExperts(model.main.scales)


@pytest.fixture(scope="module")
def pdm(model) -> PDM:
    return PDM(model.main.pdm)


def _passes(case) -> list[int]:
    return [k for k in range(case.n_passes) if case.has(f"pass{k}/area_of_interest")]


def test_goldens_present():
    assert len(CASES) >= 5


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_raw_responses_bit_identical(experts, path):
    """The activation sgemm (FMA chains, the 16-lane last window of w = 7, 9, 15)."""
    with read_case(path) as case:
        for k in _passes(case):
            pre = f"pass{k}/"
            bank = experts.bank(int(case.stage(pre + "scale_index")), int(case.stage(pre + "view_id")))
            idx = bank.landmarks
            areas = case.stage(pre + "area_of_interest")[idx]
            gold = case.stage(pre + "response_raw")[idx]
            ours = raw_response(bank, areas)
            np.testing.assert_array_equal(bits(ours), bits(gold), err_msg=f"{pre} compiled path")
            if k == 0 or gold.shape[1] in (7, 9, 15):
                # The numpy formulation (single-landmark banks) sums the same way.
                ref = _raw_response_numpy(bank, areas[:3])
                np.testing.assert_array_equal(bits(ref), bits(gold[:3]), err_msg=f"{pre} numpy path")


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_param_updates_bit_identical(pdm, path):
    """The Hessian sgemm (plus the right-hand side and OpenCV's Cholesky solve)
    from the golden Jacobians, weights and mean-shifts."""
    n_checked = 0
    with read_case(path) as case:
        for k in range(case.n_passes):
            pre = f"pass{k}/"
            visible = case.stage(pre + "visibilities").astype(bool)
            reg = float(case.stage(pre + "reg_factor"))
            for phase in ("rigid", "nonrigid"):
                w = case.stage(f"{pre}{phase}/weights")
                for it in case.iterations(k, phase):
                    tag = f"{pre}{phase}/iter{it:02d}/"
                    if not case.has(tag + "param_update"):
                        continue
                    _, l0 = _phase_start(case, k, phase, it)
                    dp = opt.solve_update(case.stage(tag + "jacobian"), w, case.stage(tag + "mean_shifts"),
                                          l0, pdm.eigen_values, reg, phase == "rigid", visible=visible)
                    np.testing.assert_array_equal(bits(dp), bits(case.stage(tag + "param_update")),
                                                  err_msg=tag)
                    n_checked += 1
    assert n_checked > 0


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_reference_shape_bit_identical(model, pdm, path):
    """CalcShape3D through CalcShape2D at zero rotation (no sin/cos involved)."""
    with read_case(path) as case:
        for k in range(case.n_passes):
            pre = f"pass{k}/"
            ps = model.main.patch_scales[int(case.stage(pre + "scale_index"))]
            g = np.array([ps, 0, 0, 0, 0, 0], F32)
            ours = pdm.calc_shape_2d(case.stage(pre + "params_local_in"), g)
            np.testing.assert_array_equal(bits(ours), bits(case.stage(pre + "reference_shape")),
                                          err_msg=pre)


def _libm():
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    for f in ("sinf", "cosf"):
        getattr(lib, f).restype = ctypes.c_float
        getattr(lib, f).argtypes = [ctypes.c_float]
    return lib


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_shapes_and_jacobians_with_libm_rotation(pdm, path):
    """CalcShape3D inside every golden shape and Jacobian, the rotation taken from
    the C library's ``sinf``/``cosf`` as the C++ build did (so that only the 3D
    shape and the float32 projection are under test here)."""
    libm = _libm()
    if libm is None:
        pytest.skip("no C math library to call sinf/cosf from")

    def rotation(e):
        # Euler2RotationMatrix: float32 sinf/cosf, products grouped left to right.
        s1, s2, s3 = (F32(libm.sinf(float(v))) for v in e)
        c1, c2, c3 = (F32(libm.cosf(float(v))) for v in e)
        return np.array([[c2 * c3, -c2 * s3, s2],
                         [c1 * s3 + c3 * s1 * s2, c1 * c3 - s1 * s2 * s3, -c2 * s1],
                         [s1 * s3 - c1 * c3 * s2, c3 * s1 + c1 * s2 * s3, c1 * c2]], F32)

    with read_case(path) as case:
        for key in case.keys():
            if not key.endswith("/jacobian"):
                continue
            pass_, phase, it = key.split("/")[:3]
            g0, l0 = _phase_start(case, int(pass_[4:]), phase, int(it[4:]))
            g0 = np.asarray(g0, F32)
            xyz = pdm._shape_3d_xyz(l0)
            rot = rotation(g0[1:4])
            gold = case.stage(key)
            jac = _jacobian_nb(xyz, rot, g0[0], pdm._pc_xyz, phase == "nonrigid")
            seen = np.any(gold != 0, axis=1)          # invisible rows are zeroed in the golden
            np.testing.assert_array_equal(bits(jac[seen]), bits(gold[seen]), err_msg=key)
            shape_key = key.replace("jacobian", "shape")
            if case.has(shape_key):
                np.testing.assert_array_equal(bits(_project_nb(xyz, rot, g0)),
                                              bits(case.stage(shape_key)), err_msg=shape_key)
