"""OpenCV's small-matrix arithmetic and the libm calls, ported: bit for bit.

cv2 is the oracle for the scalar paths it shares with the goldens' OpenCV 4.6
(Jacobi SVD, own gemm, determinant, Rodrigues, sum/mean with IPP off); ctypes'
glibc for the math functions; the goldens for the similarity transforms and the
parameter update.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from clnfdiag import rotation
from clnfdiag.numerics import libm
from clnfdiag.numerics.cvlinalg import (det2, det3, gemm_f32, matx_mul, mean_col_f32, norm_l2_f32,
                                        sum_f32, svd_f32, svd_f64)
from clnfdiag.similarity import similarity_transforms
from conftest import shared_cases

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL_REL = Path("2.2.0/originals/lib/local/LandmarkDetector/model")
NONE = np.zeros((0, 0), np.float32)


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _matrices(rng, shape, dtype, n):
    """Random, near-identity, widely scaled and rank-deficient matrices."""
    for t in range(n):
        kind = t % 4
        if kind == 0:
            a = rng.standard_normal(shape)
        elif kind == 1:
            a = np.eye(*shape) + 1e-3 * rng.standard_normal(shape)
        elif kind == 2:
            a = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3)
        else:
            a = rng.standard_normal(shape)
            a[:, -1] = 2 * a[:, 0]
        yield a.astype(dtype)


@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (2, 3), (3, 2), (4, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_svd_matches_opencv(shape, dtype):
    rng = np.random.default_rng(shape[0] * 10 + shape[1] + (0 if dtype == np.float32 else 100))
    svd = svd_f32 if dtype == np.float32 else svd_f64
    for a in _matrices(rng, shape, dtype, 1500):
        w, u, vt = cv2.SVDecomp(a)
        w2, u2, vt2 = svd(a)
        assert _bits_equal(w2, w.reshape(-1)) and _bits_equal(u2, u) and _bits_equal(vt2, vt), a


@pytest.mark.parametrize("flags", range(8))
@pytest.mark.parametrize("mkn", [(2, 2, 2), (3, 3, 3), (4, 4, 4), (2, 68, 2), (68, 3, 2), (3, 4, 5),
                                 (40, 7, 1), (34, 5, 1), (5, 1, 4), (1, 7, 3), (2, 3, 3), (3, 2, 5)])
def test_gemm_matches_opencv(flags, mkn):
    # (The installed cv2 4.14 no longer runs 4.6's code for long matrix-vector
    # products: it differs where the sum cancels. Those are checked against the
    # 4.6 source's rule in test_gemm_vector_is_four_accumulators.)
    m, k, n = mkn
    rng = np.random.default_rng(flags * 1000 + m * 100 + k * 10 + n)
    for t in range(150):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        c = rng.standard_normal((m, n)).astype(np.float32)
        a = np.ascontiguousarray(a.T) if flags & 1 else a
        b = np.ascontiguousarray(b.T) if flags & 2 else b
        c = np.ascontiguousarray(c.T) if flags & 4 else c
        alpha = float(rng.choice([1.0, -1.0, rng.uniform(0.1, 3.0)]))
        beta = float(rng.choice([0.0, 1.0, -0.5]))
        use_c = t % 2 == 0
        want = cv2.gemm(a, b, alpha, c if use_c else None, beta if use_c else 0.0, flags=flags)
        got = gemm_f32(a, b, alpha, c if use_c else NONE, beta if use_c else 0.0, flags)
        assert _bits_equal(got, want)


@pytest.mark.parametrize("flags", [0, 1])
def test_gemm_vector_is_four_accumulators(flags):
    # OpenCV 4.6 gemmImpl: a one-column result takes GEMMSingleMul's B-transposed
    # branch: float64 accumulators for k mod 4 (tail into the first), summed in order.
    rng = np.random.default_rng(11 + flags)
    for t in range(300):
        a = rng.standard_normal((40, 99)).astype(np.float32)
        b = rng.standard_normal(99).astype(np.float32)
        a[:, -1] = 1
        b[-1] = np.float32(-(a[t % 40, :-1].astype(np.float64) @ b[:-1]))   # cancellation
        got = gemm_f32(np.ascontiguousarray(a.T) if flags else a, b.reshape(-1, 1), 1.0, NONE, 0.0, flags)
        for i in range(40):
            s = [0.0] * 4
            for k in range(96):
                s[k % 4] += float(a[i, k]) * float(b[k])
            for k in range(96, 99):
                s[0] += float(a[i, k]) * float(b[k])
            assert got[i, 0] == np.float32(((s[0] + s[1]) + s[2]) + s[3])


def test_gemm_rejects_blas_sizes():
    with pytest.raises(ValueError):
        gemm_f32(np.ones((100, 2), np.float32), np.ones((2, 1), np.float32), 1.0, NONE, 0.0, 0)


def test_determinant_and_matx_product():
    rng = np.random.default_rng(5)
    for _ in range(3000):
        a = rng.standard_normal((2, 2)).astype(np.float32)
        b = rng.standard_normal((3, 3)).astype(np.float32)
        assert det2(a) == cv2.determinant(a) and det3(b) == cv2.determinant(b)
        p = matx_mul(b, b)
        # Matx product: a float32 sum from zero, k = 0, 1, 2.
        want = np.empty((3, 3), np.float32)
        for i in range(3):
            for j in range(3):
                s = np.float32(0)
                for k in range(3):
                    s = np.float32(s + b[i, k] * b[k, j])
                want[i, j] = s
        assert _bits_equal(p, want)


@pytest.fixture
def no_ipp():
    old = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield
    cv2.ipp.setUseIPP(old)


def test_sum_and_mean_match_opencv(no_ipp):
    if "*AVX2" not in cv2.getCPUFeaturesLine().split():
        pytest.skip("cv2 runs its SSE2 sum here; the port is the AVX2 kernel the goldens used")
    rng = np.random.default_rng(6)
    for _ in range(2000):
        n = int(rng.integers(1, 300))
        v = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)).astype(np.float32)
        assert sum_f32(v) == cv2.sumElems(v)[0]
        pts = (rng.standard_normal((n, 2)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        assert mean_col_f32(pts, 1) == np.float32(cv2.mean(pts[:, 1:2])[0])


def test_norm_is_opencv_46_order():
    # OpenCV 4.6's normL2Sqr<float, double>: four squares summed, added; tail one by one.
    rng = np.random.default_rng(7)
    for _ in range(500):
        n = int(rng.integers(1, 200))
        v = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)).astype(np.float32)
        s, i = 0.0, 0
        while i <= n - 4:
            q = [float(x) for x in v[i:i + 4]]
            s += ((q[0] * q[0] + q[1] * q[1]) + q[2] * q[2]) + q[3] * q[3]
            i += 4
        for x in v[i:]:
            s += float(x) * float(x)
        assert norm_l2_f32(v) == np.sqrt(s)


# ---------------------------------------------------------------- libm
@functools.lru_cache(maxsize=None)
def _glibc():
    lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    out = {}
    for name, n, t in (("sinf", 1, ctypes.c_float), ("cosf", 1, ctypes.c_float),
                       ("asinf", 1, ctypes.c_float), ("atan2f", 2, ctypes.c_float),
                       ("expf", 1, ctypes.c_float), ("sin", 1, ctypes.c_double),
                       ("cos", 1, ctypes.c_double), ("acos", 1, ctypes.c_double)):
        f = getattr(lib, name)
        f.argtypes, f.restype = [t] * n, t
        out[name] = f
    return out


@pytest.mark.parametrize("name", ["sinf", "cosf", "asinf", "expf", "atan2f", "sin", "cos", "acos"])
def test_libm_is_glibc(name):
    rng = np.random.default_rng(8)
    f32 = name.endswith("f")
    dt = np.float32 if f32 else np.float64
    special = [0.0, -0.0, 1.0, -1.0, 0.5, np.pi, -np.pi, 1e-30, 1e30, np.inf, -np.inf, np.nan]
    xs = np.concatenate([np.array(special), rng.uniform(-4, 4, 3000),
                         rng.standard_normal(1000) * 10.0 ** rng.uniform(-8, 3, 1000)]).astype(dt)
    ys = rng.permutation(xs)
    ours, ref = getattr(libm, name), _glibc()[name]
    for x, y in zip(xs, ys):
        args = (x, y) if name == "atan2f" else (x,)
        got = np.array(ours(*args), dt)
        want = np.array(ref(*(float(a) for a in args)), dt)
        assert got.tobytes() == want.tobytes(), (name, x)


# ---------------------------------------------------------------- rotations
def test_rodrigues_matches_opencv():
    rng = np.random.default_rng(9)
    for t in range(4000):
        aa = (rng.standard_normal(3) * rng.choice([1e-6, 1e-3, 0.1, 1.0, 3.0])).astype(np.float32)
        m = cv2.Rodrigues(aa)[0]
        assert _bits_equal(rotation.axis_angle_to_rotation_matrix(aa), m)
        if t % 2:
            m = (m + 1e-4 * rng.standard_normal((3, 3))).astype(np.float32)
        assert _bits_equal(rotation.rotation_matrix_to_axis_angle(m), cv2.Rodrigues(m)[0].reshape(-1))
    for d in ([-1, 1, -1], [1, -1, -1], [-1, -1, 1], [1, 1, 1]):
        m = np.diag(np.float32(d))
        assert _bits_equal(rotation.rotation_matrix_to_axis_angle(m), cv2.Rodrigues(m)[0].reshape(-1))


# ---------------------------------------------------------------- goldens
case_param = pytest.mark.parametrize("case_dir", shared_cases(), ids=lambda p: p.name)


@case_param
def test_similarity_bit_identical(case_dir):
    with np.load(case_dir / "stages.npz") as z:
        passes = sorted({k.split("/")[0] for k in z.files if k.endswith("/sim_img_to_ref")})
        assert passes
        for p in passes:
            i2r, r2i = similarity_transforms(z[f"{p}/landmarks_at_response"], z[f"{p}/reference_shape"])
            assert _bits_equal(i2r, z[f"{p}/sim_img_to_ref"].astype(np.float32)), p
            assert _bits_equal(r2i, z[f"{p}/sim_ref_to_img"].astype(np.float32)), p


@functools.lru_cache(maxsize=None)
def _pdm():
    from clnfdiag.pdm import PDM
    root = Path(os.environ.get("OPENFACE_MODELS_DIR", SHARED / "OpenFaceModels"))
    path = root / MODEL_REL / "pdms/In-the-wild_aligned_PDM_68.txt"
    if not path.is_file():
        pytest.skip(f"OpenFace PDM not found: {path}")
    return PDM.from_file(path)


@case_param
def test_update_parameters_bit_identical(case_dir):
    # Every golden update: the previous iteration's parameters (the pass's input, or
    # the rigid phase's result for the first non-rigid iteration) plus the golden
    # param_update, through UpdateModelParameters and Clamp.
    pdm = _pdm()
    it_re = re.compile(r"^(pass\d+)/(rigid|nonrigid)/iter(\d+)/param_update$")
    n = 0
    with np.load(case_dir / "stages.npz") as z:
        for key in sorted(z.files):
            m = it_re.match(key)
            if not m:
                continue
            p, phase, it = m.group(1), m.group(2), int(m.group(3))
            if it:
                prev = f"{p}/{phase}/iter{it - 1:02d}/"
                g0, l0 = z[prev + "params_global"], z[prev + "params_local"]
            elif phase == "rigid":
                g0, l0 = z[p + "/params_global_in"], z[p + "/params_local_in"]
            else:
                g0, l0 = z[p + "/rigid/final_global"], z[p + "/rigid/final_local"]
            loc, g = pdm.clamp(*pdm.update_parameters(z[key], l0, g0))
            pre = key[: -len("param_update")]
            assert _bits_equal(g, z[pre + "params_global"].astype(np.float32)), key
            assert _bits_equal(loc, z[pre + "params_local"].astype(np.float32)), key
            n += 1
    assert n > 0
