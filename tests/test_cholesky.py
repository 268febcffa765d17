"""``clnfdiag.numerics.cholesky``: OpenCV's Cholesky invert/solve of the goldens' build, on any CPU.

* below 100 x 100 the ports equal ``cv2.invert`` / ``cv2.solve`` bit for bit
  (OpenCV's own scalar code there, so ``cv2`` is a valid oracle on any CPU);
* at 100 x 100 and above (the LAPACK ``sposv`` path over OpenBLAS 0.3.21
  SkylakeX, emulated) the goldens' post-Sigma maps are reproduced bit for bit
  from their raw maps (windows 11 and 15 go through it; 7 and 9 through the
  small path; 13 is diagonal);
* sanity: the inverses and solutions are close to numpy's float64 ones.
"""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from clnfdiag.experts import PatchExperts, sigma_response
from clnfdiag.numerics.cholesky import (invert_cholesky, openblas_spotrf, opencv_cholesky_factor,
                                        solve_cholesky, spotrf_plan)

from _models import model_or_fail
from conftest import case_pass_id, golden_passes, project_cases, shared_cases

F32 = np.float32


def _spd(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    """A float32 SPD matrix; ``kind`` varies the conditioning and the scale."""
    a = rng.normal(size=(n, n))
    if kind == 0:
        h = a @ a.T + n * np.eye(n)
    elif kind == 1:
        h = a @ a.T + 1e-2 * np.eye(n)
    else:
        h = (a @ a.T) * 10.0 ** rng.uniform(-3, 3) + np.eye(n)
    return np.ascontiguousarray(h.astype(F32))


def _same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    x = np.ascontiguousarray(x, F32)
    y = np.ascontiguousarray(y, F32)
    return x.shape == y.shape and np.array_equal(x.view(np.uint32), y.view(np.uint32))


# ---------------------------------------------------------------------------------------------
# n < 100: OpenCV's own code, cv2 as the oracle
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [0, 1, 2])
def test_small_invert_equals_cv2(kind):
    rng = np.random.default_rng(100 + kind)
    for n in range(1, 100):
        h = _spd(rng, n, kind)
        ok_ref, ref = cv2.invert(h, flags=cv2.DECOMP_CHOLESKY)
        ours, ok = invert_cholesky(h)
        assert ok == bool(ok_ref), n
        assert ours.dtype == F32 and _same_bits(ours, ref), f"n = {n}"


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_small_solve_equals_cv2(kind):
    rng = np.random.default_rng(200 + kind)
    for n in range(1, 100):
        h = _spd(rng, n, kind)
        b = rng.normal(size=n).astype(F32)
        ok_ref, ref = cv2.solve(h, b.reshape(-1, 1), flags=cv2.DECOMP_CHOLESKY)
        x, ok = solve_cholesky(h, b)
        assert ok == bool(ok_ref)
        assert x.shape == (n,) and _same_bits(x, ref.reshape(-1)), f"n = {n}"
        # (n, 1) keeps its shape; several right-hand sides take the Cholesky path even for n <= 3.
        x1, _ = solve_cholesky(h, b.reshape(-1, 1))
        assert x1.shape == (n, 1) and _same_bits(x1, ref)
        bm = rng.normal(size=(n, 3)).astype(F32)
        _, refm = cv2.solve(h, bm, flags=cv2.DECOMP_CHOLESKY)
        xm, _ = solve_cholesky(h, bm)
        assert _same_bits(xm, refm), f"n = {n}, 3 right-hand sides"


@pytest.mark.parametrize("n", [6, 16, 38, 40])
def test_nu_rlms_sized_solves_equal_cv2(n):
    # Hessian-like systems (J^T W J + R) of the sizes the fit solves.
    rng = np.random.default_rng(n)
    for _ in range(20):
        j = rng.normal(size=(136, n)).astype(F32)
        h = (j.T.astype(np.float64) @ j + np.diag(rng.uniform(0, 50, n))).astype(F32)
        b = rng.normal(size=n).astype(F32)
        _, ref = cv2.solve(h, b.reshape(-1, 1), flags=cv2.DECOMP_CHOLESKY)
        x, ok = solve_cholesky(h, b)
        assert ok and _same_bits(x, ref.reshape(-1))


@pytest.mark.parametrize("n", [2, 3, 5, 40, 99, 100, 121])
def test_not_positive_definite_gives_zeros(n):
    h = -np.eye(n, dtype=F32)
    ok_ref, ref = cv2.invert(h, flags=cv2.DECOMP_CHOLESKY)
    inv, ok = invert_cholesky(h)
    if n >= 4:     # n <= 3 is Cramer's rule there: any non-singular matrix inverts
        assert not ok and not np.any(inv)
        x, ok = solve_cholesky(h, np.ones(n, F32))
        assert not ok and not np.any(x)
    if n < 100:
        assert ok == bool(ok_ref) and _same_bits(inv, ref)


def test_small_factor_is_cholesky():
    rng = np.random.default_rng(3)
    h = _spd(rng, 40, 0)
    lo, ok = opencv_cholesky_factor(h)
    assert ok
    lo = lo.astype(np.float64)
    d = np.diag(lo).copy()
    np.fill_diagonal(lo, 1.0 / d)          # OpenCV stores 1/sqrt on the diagonal
    np.testing.assert_allclose(lo @ lo.T, h, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# n >= 100: the sposv emulation
# ---------------------------------------------------------------------------------------------

def test_spotrf_blocking_plan():
    # potrf_L_single: n/4 blocks (121 -> 30 x 4 + 1; 225 -> 56 x 4 + 1, each 56 -> 14 x 4).
    def potf2_blocks(n):
        return [(int(r[1]), int(r[2])) for r in spotrf_plan(n) if r[0] == 0]
    assert potf2_blocks(121) == [(0, 30), (30, 30), (60, 30), (90, 30), (120, 1)]
    b225 = potf2_blocks(225)
    assert b225[-1] == (224, 1) and len(b225) == 17
    assert all(size == 14 for _, size in b225[:-1])
    assert potf2_blocks(32) == [(0, 32)]


@pytest.mark.parametrize("n", [100, 121, 169, 225, 289])
def test_large_inverse_close_to_numpy(n):
    rng = np.random.default_rng(n)
    h = _spd(rng, n, 0)
    inv, ok = invert_cholesky(h)
    assert ok and inv.dtype == F32 and inv.shape == (n, n)
    ref = np.linalg.inv(h.astype(np.float64))
    assert np.abs(inv - ref).max() <= 1e-5 * np.abs(ref).max()
    # OpenCV's LAPACK path returns the solution against the identity: not exactly symmetric.
    assert np.abs(inv - inv.T).max() <= 1e-6 * np.abs(ref).max()
    b = rng.normal(size=n).astype(F32)
    x, ok = solve_cholesky(h, b)
    assert ok and x.shape == (n,)
    xr = ref @ b.astype(np.float64)
    assert np.abs(x - xr).max() <= 1e-5 * np.abs(xr).max()


def test_large_factor_is_cholesky():
    rng = np.random.default_rng(7)
    h = _spd(rng, 121, 0)
    w = h.copy()
    assert openblas_spotrf(w) == 0
    lo = np.triu(w).T.astype(np.float64)   # LAPACK's column-major lower = row-major upper
    np.testing.assert_allclose(lo @ lo.T, h, rtol=1e-5, atol=1e-3)
    bad = -np.eye(121, dtype=F32)
    assert openblas_spotrf(bad) == 1


def test_small_inverse_close_to_numpy():
    rng = np.random.default_rng(9)
    for n in (4, 49, 81):
        h = _spd(rng, n, 0)
        inv, ok = invert_cholesky(h)
        ref = np.linalg.inv(h.astype(np.float64))
        assert ok and np.abs(inv - ref).max() <= 1e-5 * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------
# The goldens' post-Sigma maps, from their raw maps
# ---------------------------------------------------------------------------------------------

CASE_PASSES = [(c, p) for c in project_cases() + shared_cases() for p in golden_passes(c, "response_raw")]
_id = case_pass_id


@pytest.fixture(scope="module")
def experts() -> PatchExperts:
    return PatchExperts(model_or_fail().main.scales)


def test_golden_cases_present():
    assert CASE_PASSES, "no golden case with response_raw found"
    windows = set()
    for case, p in CASE_PASSES:
        with np.load(case / "stages.npz") as z:
            windows.add(int(z[f"pass{p}/window_size"]))
    assert {11, 15} <= windows      # the LAPACK-sized Sigmas are exercised


@pytest.mark.parametrize("case_dir,p", CASE_PASSES, ids=_id)
def test_post_sigma_bit_identical_to_golden(experts, case_dir, p):
    with np.load(case_dir / "stages.npz") as z:
        scale, view = int(z[f"pass{p}/scale_index"]), int(z[f"pass{p}/view_id"])
        raw = z[f"pass{p}/response_raw"]
        gold = z[f"pass{p}/response_sigma"]
    bank = experts.bank(scale, view)
    lm = bank.landmarks
    ours = sigma_response(bank, raw[lm].astype(F32))
    gold = gold[lm].astype(F32)
    same = ours.view(np.uint32) == gold.view(np.uint32)
    assert same.all(), (f"{int((~same).sum())} of {same.size} post-Sigma values differ "
                        f"(window {raw.shape[-1]})")


def test_beyond_emulated_blocking_is_refused():
    with pytest.raises(ValueError):
        invert_cholesky(np.eye(449, dtype=F32))
