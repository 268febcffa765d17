"""AlignShapesWithScale and its inverse, against OpenFace C++ 2.x goldens and by construction."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from clnfdiag.pdm import PDM
from clnfdiag.similarity import align_shapes_with_scale, invert_2x2, similarity_transforms
from conftest import shared_cases

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL_REL = Path("2.2.0/originals/lib/local/LandmarkDetector/model")


CASES = shared_cases()
case_param = pytest.mark.parametrize("case_dir", CASES, ids=lambda p: p.name)


@functools.lru_cache(maxsize=None)
def _golden(case_dir: Path) -> tuple[dict, dict]:
    manifest = json.loads((case_dir / "manifest.json").read_text())
    with np.load(case_dir / "stages.npz") as z:
        keys = [k for k in z.files if k.startswith("pass") and k.count("/") == 1]
        return manifest, {k: z[k] for k in keys}


@functools.lru_cache(maxsize=None)
def _pdm() -> PDM:
    root = Path(os.environ.get("OPENFACE_MODELS_DIR", SHARED / "OpenFaceModels"))
    path = root / MODEL_REL / "pdms/In-the-wild_aligned_PDM_68.txt"
    if not path.is_file():
        pytest.skip(f"OpenFace PDM not found: {path}")
    return PDM.from_file(path)


def _passes(z: dict) -> list[str]:
    return sorted(k.split("/")[0] for k in z if k.endswith("/window_size"))


def _rel(a, b) -> float:
    b64 = np.asarray(b, dtype=np.float64)
    return float(np.abs(np.asarray(a, dtype=np.float64) - b64).max() / np.abs(b64).max())


@case_param
def test_similarity_from_golden_shapes(case_dir):
    # measured: sim_img_to_ref 1.1e-7, sim_ref_to_img 1.9e-7 relative to the largest entry
    _, z = _golden(case_dir)
    for p in _passes(z):
        i2r, r2i = similarity_transforms(z[f"{p}/landmarks_at_response"], z[f"{p}/reference_shape"])
        assert i2r.dtype == np.float32 and r2i.dtype == np.float32
        assert _rel(i2r, z[f"{p}/sim_img_to_ref"]) <= 1e-6, p
        assert _rel(r2i, z[f"{p}/sim_ref_to_img"]) <= 1e-6, p


@case_param
def test_similarity_from_params(case_dir):
    # The whole chain from the pass's parameters: PDM shapes, then the transforms.
    m, z = _golden(case_dir)
    pdm = _pdm()
    for p in _passes(z):
        scale = m["parameters"]["patch_scales"][int(z[f"{p}/scale_index"])]
        local = z[f"{p}/params_local_in"]
        img = pdm.calc_shape_2d(local, z[f"{p}/params_global_in"])
        ref = pdm.calc_shape_2d(local, [scale, 0, 0, 0, 0, 0])
        i2r, r2i = similarity_transforms(img, ref)
        assert _rel(i2r, z[f"{p}/sim_img_to_ref"]) <= 1e-6, p
        assert _rel(r2i, z[f"{p}/sim_ref_to_img"]) <= 1e-6, p


@case_param
def test_inverse_is_opencv_closed_form(case_dir):
    # measured: bit-identical to the golden's sim_ref_to_img
    _, z = _golden(case_dir)
    for p in _passes(z):
        assert np.array_equal(invert_2x2(z[f"{p}/sim_img_to_ref"]), z[f"{p}/sim_ref_to_img"]), p


def test_recovers_known_similarity():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, size=(30, 2)).astype(np.float32)
    theta, s = 0.3, 0.25
    a = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    dst = (src @ a.T + [5.0, -7.0]).astype(np.float32)  # translation is ignored
    got = align_shapes_with_scale(src, dst)
    assert got.dtype == np.float32 and got.shape == (2, 2)
    assert np.allclose(got, a, atol=1e-6)
    # src -> dst direction: applying the result to centred src gives centred dst.
    mapped = (src - src.mean(0)) @ got.T.astype(np.float64)
    assert np.allclose(mapped, dst - dst.mean(0), atol=1e-3)


def test_no_reflection():
    rng = np.random.default_rng(2)
    src = rng.standard_normal((20, 2)).astype(np.float32)
    dst = (src * [1, -1]).astype(np.float32)  # a mirror image
    got = align_shapes_with_scale(src, dst)
    assert np.linalg.det(got.astype(np.float64)) > 0


def test_invert_2x2():
    a = np.array([[0.3, -0.1], [0.1, 0.3]], dtype=np.float32)
    inv = invert_2x2(a)
    assert inv.dtype == np.float32
    assert np.allclose(inv @ a, np.eye(2), atol=1e-6)
    assert np.array_equal(invert_2x2(np.zeros((2, 2))), np.zeros((2, 2), np.float32))
