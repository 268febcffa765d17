"""CCNF patch experts against the C++ goldens: raw, post-Sigma and post-shift responses.

Acceptance: on every golden case and pass, fed the golden ``area_of_interest``,
every visible landmark's map is within 1e-5 of that landmark's golden peak
(max |golden map|) at all three stages, and the visible set and the view match.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clnfdiag.clnf.ops import OpenFaceOps
from clnfdiag.experts import PatchExperts
from clnfdiag.faults import with_faults

from _models import model_or_fail
from conftest import case_pass_id, golden_passes, project_cases, shared_cases

REL_TOL = 1e-5
STAGES = (("raw", "response_raw"), ("sigma", "response_sigma"), ("response", "response"))


CASE_PASSES = [(c, p) for c in project_cases() + shared_cases() for p in golden_passes(c, "area_of_interest")]
_id = case_pass_id


def _load_pass(case_dir: Path, p: int) -> dict[str, np.ndarray]:
    keys = ["area_of_interest", "scale_index", "view_id", "visibilities", "params_global_in",
            "window_size"] + [g for _, g in STAGES]
    with np.load(case_dir / "stages.npz") as z:
        return {k: z[f"pass{p}/{k}"] for k in keys}


@pytest.fixture(scope="session")
def model():
    return model_or_fail()


@pytest.fixture(scope="session")
def experts(model) -> PatchExperts:
    return PatchExperts(model.main.scales)


@pytest.fixture(scope="module")
def astronaut_pass0():
    case = next((c for c in project_cases() if c.name == "astronaut_default"), None)
    assert case is not None, "golden/astronaut_default is missing from the project"
    return _load_pass(case, 0)


# --------------------------------------------------------------------------- acceptance

def test_goldens_present():
    assert len({c for c, _ in CASE_PASSES}) >= 5
    windows = {int(_load_pass(c, p)["window_size"]) for c, p in CASE_PASSES}
    assert windows == {7, 9, 11, 13, 15}


@pytest.mark.parametrize("case_dir,p", CASE_PASSES, ids=_id)
def test_responses_match_golden(experts, case_dir, p):
    g = _load_pass(case_dir, p)
    scale, view = int(g["scale_index"]), int(g["view_id"])
    assert experts.view_index(g["params_global_in"], scale) == view
    out = experts.responses(g["area_of_interest"], scale, view)
    np.testing.assert_array_equal(out.landmarks, np.flatnonzero(g["visibilities"]))
    w = int(g["window_size"])
    for stage, key in STAGES:
        ours = getattr(out, stage)
        gold = g[key][out.landmarks]
        assert ours.shape == gold.shape == (len(out.landmarks), w, w), stage
        assert ours.dtype == np.float32
        peak = np.abs(gold).max(axis=(1, 2))
        err = np.abs(ours.astype(np.float64) - gold).max(axis=(1, 2))
        bad = np.flatnonzero(err > REL_TOL * peak)
        assert bad.size == 0, (
            f"{key}: {bad.size} landmark(s) off by more than {REL_TOL:g} x peak, worst landmark "
            f"{out.landmarks[bad[np.argmax(err[bad] / peak[bad])]]} at "
            f"{(err[bad] / peak[bad]).max():.3g} x peak")


# --------------------------------------------------------------------------- banks, views, Sigma

def test_view_index_picks_each_centre(experts, model):
    for s, scale in enumerate(model.main.scales):
        for v in range(scale.n_views):
            params = np.zeros(6)
            params[0] = 1.0
            params[1:4] = scale.centers[v]
            assert experts.view_index(params, s) == v


def test_banks(experts, model):
    for s, scale in enumerate(model.main.scales):
        for v in range(scale.n_views):
            bank = experts.bank(s, v)
            has_expert = [i for i, e in enumerate(scale.experts[v]) if not e.empty]
            np.testing.assert_array_equal(bank.landmarks, np.flatnonzero(scale.visibility[v]))
            np.testing.assert_array_equal(bank.landmarks, has_expert)
            assert bank.confidence.shape == bank.landmarks.shape
            assert np.all(bank.confidence > 0), (s, v)
            assert (bank.height, bank.width) == (11, 11)


def test_sigma_window_13_is_scaled_identity(experts, model):
    for s, scale in enumerate(model.main.scales):
        assert 13 not in scale.sigma_components
        for v in range(scale.n_views):
            bank = experts.bank(s, v)
            sig = bank.sigma(13)
            assert sig.shape == (len(bank.landmarks), 169, 169) and sig.dtype == np.float32
            for row, lm in enumerate(bank.landmarks):
                sum_alpha = float(np.sum(scale.experts[v][lm].alphas))
                expect = np.eye(169) / (2.0 * sum_alpha)
                np.testing.assert_allclose(sig[row], expect, rtol=1e-6, atol=0)


def test_sigma_is_cached_and_read_only(experts):
    bank = experts.bank(0, 0)
    assert bank.sigma(11) is bank.sigma(11)
    assert not bank.sigma(11).flags.writeable


# --------------------------------------------------------------------------- fault switches

class _Stages:
    """The three response stages of the visible landmarks, through clnfdiag's stage ops."""

    def __init__(self, ops, g):
        scale, view = int(g["scale_index"]), int(g["view_id"])
        idx = ops.experts.bank(scale, view).landmarks
        raw = ops.response_raw(g["area_of_interest"], scale, view)
        sig = ops.response_sigma(raw, scale, view)
        resp = ops.response(sig, scale, view)
        self.raw, self.sigma, self.response = raw[idx], sig[idx], resp[idx]


def _responses(model, g, faults=frozenset()):
    return _Stages(with_faults(OpenFaceOps(model.main), faults), g)


def test_fault_skip_sigma(model, astronaut_pass0):
    out = _responses(model, astronaut_pass0, {"skip-sigma"})
    np.testing.assert_array_equal(out.sigma, out.raw)


def test_fault_normalize_response(model, astronaut_pass0):
    good = _responses(model, astronaut_pass0)
    out = _responses(model, astronaut_pass0, {"normalize-response"})
    np.testing.assert_allclose(out.response.max(axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(out.sigma, good.sigma)  # only the last stage changes
    np.testing.assert_allclose(out.response, good.response / good.response.max(axis=(1, 2),
                               keepdims=True), rtol=1e-5, atol=1e-7)


def test_fault_clip_instead_of_shift(model, astronaut_pass0):
    good = _responses(model, astronaut_pass0)
    out = _responses(model, astronaut_pass0, {"clip-instead-of-shift"})
    assert out.response.min() >= 0
    neg = good.sigma.min(axis=(1, 2)) < 0
    assert neg.any()
    for i in np.flatnonzero(neg):
        assert not np.array_equal(out.response[i], good.response[i])
        np.testing.assert_array_equal(out.response[i], np.maximum(good.sigma[i], 0))
    np.testing.assert_array_equal(out.response[~neg], good.response[~neg])


def test_fault_sigmoid_no_double_alpha(model, astronaut_pass0):
    good = _responses(model, astronaut_pass0)
    out = _responses(model, astronaut_pass0, {"sigmoid-no-double-alpha"})
    np.testing.assert_allclose(out.raw, good.raw / 2, rtol=1e-6, atol=0)


def test_sigma_components_commute_with_transpose(model):
    """Every S_b is unchanged by swapping x and y (the edge potentials are isotropic).

    So ``Sigma @ vec(raw.T)``, transposed back, equals ``Sigma @ vec(raw)``:
    so a port that merely multiplied by a transposed Sigma would go unnoticed: the
    ``transpose-sigma`` fault is therefore the layout slip (result read back transposed).
    """
    for scale in model.main.scales:
        for w, comps in scale.sigma_components.items():
            perm = np.arange(w * w).reshape(w, w).T.ravel()
            for c in comps:
                np.testing.assert_array_equal(c[np.ix_(perm, perm)], c)


def test_fault_transpose_sigma(model, astronaut_pass0):
    good = _responses(model, astronaut_pass0)
    out = _responses(model, astronaut_pass0, {"transpose-sigma"})
    np.testing.assert_array_equal(out.raw, good.raw)
    np.testing.assert_allclose(out.sigma, good.sigma.transpose(0, 2, 1), rtol=1e-5, atol=1e-7)
    diff = np.abs(out.sigma - good.sigma).max(axis=(1, 2)) / np.abs(good.sigma).max(axis=(1, 2))
    assert np.median(diff) > 1e-3, np.median(diff)
