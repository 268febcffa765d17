"""The known-fault library: each fault, in isolated mode, on every golden case.

For every fault the gate must fail, the first diverging stage must be the
stage the fault corrupts, and the impact verdict (does the difference reach
the mean-shifts, the final landmarks) must be the one the fault documents.
Expectations come from clnfdiag.faults, written from the algorithm (a
rescaled map cannot move a weighted centroid; Sigma and the shift change the
shape of the map, ...), not from this code's output.
"""
from __future__ import annotations

import numpy as np
import pytest

from _models import model_or_fail
from conftest import SHARED_GOLDEN, case_dirs, project_cases
from clnfdiag.compare.comparator import compare_traces
from clnfdiag.compare.impact import impact
from clnfdiag.compare.isolated import isolated_trace
from clnfdiag.compare.noise import envelope
from clnfdiag.compare.tolerances import IMPACT_MEAN_SHIFT_PX
from clnfdiag.faults import FAULTS
from clnfdiag.fitter import Fitter
from clnfdiag.golden import read_case



def _unique_cases():
    """The main-model goldens (project copies and ../shared/golden), each case once."""
    seen, out = set(), []
    for d in project_cases() + case_dirs(SHARED_GOLDEN):
        if d.name not in seen:
            seen.add(d.name)
            out.append(d)
    return out


CASES = _unique_cases()


@pytest.fixture(scope="module")
def fitter():
    return Fitter(model_or_fail())


def _run(fitter, case_dir, fault, gate="stages"):
    case = read_case(case_dir)
    trace = isolated_trace(case, fitter, frozenset({fault}))
    # The impact is judged against the case's measured rounding noise (its envelope).
    cmp = compare_traces(case, trace, "isolated", gate=gate,
                         impact=lambda key: impact(case, trace, key, fitter),
                         envelope=envelope(case, fitter))
    return case, trace, cmp


def _first(cmp):
    return next(s for s in cmp.stages if s.stage == cmp.first_divergent_stage)


@pytest.mark.parametrize("case_dir", CASES, ids=lambda d: d.name)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_caught_where_it_lives(fitter, case_dir, fault):
    spec = FAULTS[fault]
    case, trace, cmp = _run(fitter, case_dir, fault)
    if fault == "uniform-weights" and float(case.stage("pass0/weight_factor")) <= 0:
        # OpenFace itself weights every landmark 1 when the weight factor is 0 (the default
        # preset): there the fault changes nothing, bit for bit.
        assert cmp.outcome == "identical"
        return
    assert cmp.verdict == "diverged"
    assert cmp.first_divergent_stage.split("/")[-1] == spec.stage
    assert cmp.first_divergent_stage.startswith(f"pass{spec.first_pass}/")  # where it first acts
    reached_ms = cmp.impact["mean_shifts_max_px"] > IMPACT_MEAN_SHIFT_PX
    assert reached_ms == spec.reaches_mean_shifts, cmp.impact
    if spec.reaches_landmarks is not None:
        assert _first(cmp).reaches_landmarks == spec.reaches_landmarks, cmp.impact


@pytest.mark.parametrize("case_dir", CASES, ids=lambda d: d.name)
def test_normalize_response_seed_bug(fitter, case_dir):
    """The seed investigation's bug: peak ratio 1/golden-peak on every visible landmark,
    mean-shifts and landmarks untouched, so the landmark gate passes."""
    case, trace, cmp = _run(fitter, case_dir, "normalize-response")
    first = _first(cmp)
    assert first.stage == "pass0/response"
    vis = case.stage("pass0/visibilities").astype(bool)
    golden_peak = case.stage("pass0/response").max(axis=(1, 2))[vis]
    np.testing.assert_allclose(np.asarray(first.peak_ratio)[vis], 1.0 / golden_peak, rtol=1e-5)
    assert np.all(np.asarray(first.peak_candidate)[vis] == pytest.approx(1.0))
    assert first.n_beyond == vis.sum()
    _, _, gated = _run(fitter, case_dir, "normalize-response", gate="landmarks")
    assert gated.verdict == "pass"


@pytest.mark.parametrize("case_dir", CASES, ids=lambda d: d.name)
def test_skip_sigma_reaches_landmarks(fitter, case_dir):
    _, _, cmp = _run(fitter, case_dir, "skip-sigma", gate="landmarks")
    assert cmp.first_divergent_stage == "pass0/response_sigma"
    assert cmp.verdict == "diverged"
    assert _first(cmp).reaches_landmarks is True
