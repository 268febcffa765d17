"""Noise envelopes and the verdicts judged against them (propagated mode, impact, three outcomes).

Expectations come from the goldens (CPP_FLOOR.json: how far faithful C++ builds land
apart), from the envelope's definition (a band is the largest spread over the runs)
and from exact arithmetic on hand-built envelopes, not from this code's output.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from _models import model_or_fail
from conftest import SHARED_GOLDEN, SHARED_GOLDEN_H, PROJECT_GOLDEN, case_dirs
from clnfdiag.compare import noise
from clnfdiag.compare.comparator import compare_traces
from clnfdiag.compare.struct import BEYOND_NOISE, IDENTICAL, WITHIN_NOISE, CaseComparison, Envelope
from clnfdiag.compare.tolerances import FLOOR_FACTOR
from clnfdiag.fitter import Fitter
from clnfdiag.golden import read_case

CASE = PROJECT_GOLDEN / "astronaut_default"
PUBLIC = case_dirs(SHARED_GOLDEN) + case_dirs(SHARED_GOLDEN_H)


@pytest.fixture(scope="module")
def fitter():
    return Fitter(model_or_fail())


@pytest.fixture(scope="module")
def golden():
    with read_case(CASE) as g:
        yield g


@pytest.fixture(scope="module")
def stages(golden):
    return {k: np.array(golden.stage(k)) for k in golden.keys()}


@pytest.fixture(scope="module")
def small(golden, fitter):
    """A 3-run envelope of astronaut_default (uncached)."""
    return noise.measure(golden, fitter, runs=3)


def test_envelope_bands_every_stage_and_its_landmarks(golden, small):
    """Every golden stage has a band (clnfdiag's unperturbed fit is the golden's key set), the
    final-landmark band is the largest per-landmark band and the largest run."""
    assert set(golden.keys()) <= set(small.stage_bands)
    assert all(b >= 0 for b in small.stage_bands.values())
    assert small.runs == 3 and len(small.per_run_px) == 3
    assert small.band_px == max(small.per_run_px) == max(small.landmark_band_px)
    assert small.stage_bands["final/landmarks"] == pytest.approx(small.band_px, rel=1e-6)
    # Never perturbed and read before the perturbed stages: the image and the start.
    for key in ("input/gray", "init/params_global", "init/shape", "pass0/response_raw"):
        assert small.stage_bands[key] == 0.0, key
    # Perturbed (one ulp on every nonzero value): its band is at least one ulp of its largest value.
    resp = golden.stage("pass0/response")
    assert small.stage_bands["pass0/response"] >= np.spacing(np.float32(resp.max())) * 0.5


def test_envelope_round_trips_json(small):
    assert Envelope.from_json(json.loads(json.dumps(small.to_json()))) == small


def test_envelope_cached_by_content(tmp_path, monkeypatch, golden, fitter):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = noise.envelope(golden, fitter, runs=2)
    assert len(list((tmp_path / "clnfdiag" / "noise").glob("*.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("measured again although cached")

    monkeypatch.setattr(noise, "measure", boom)
    assert noise.envelope(golden, fitter, runs=2) == first
    with pytest.raises(AssertionError, match="measured again"):
        noise.envelope(golden, fitter, runs=3)  # another K is another envelope


@pytest.mark.parametrize("case_dir", PUBLIC, ids=lambda d: d.name)
def test_envelope_band_covers_the_cpp_floor(case_dir, fitter):
    """The perturbation model makes the kind of difference two C++ builds make: on every public
    golden the band is of the size of the C++'s own spread (at least the floor over the factor
    the landmark tolerance already grants it; the closing note tabulates both), the case's noise
    is never below its floor, and clnfdiag's fit passes propagated mode, bit-identical."""
    floors = json.loads((case_dir.parent / "CPP_FLOOR.json").read_text())["cases"]
    floor = floors[case_dir.name]
    with read_case(case_dir) as case:
        env = noise.envelope(case, fitter)
        assert env.band_px >= floor / FLOOR_FACTOR, (env.band_px, floor)
        trace = {k: np.array(case.stage(k)) for k in case.keys()}
        cmp = compare_traces(case, trace, "propagated", envelope=env)
    assert cmp.outcome == IDENTICAL and cmp.passed
    assert cmp.noise_floor_px == max(env.band_px, floor) >= floor


def _hand_envelope(golden, bands: dict[str, float], band_px: float) -> Envelope:
    n = golden.stage("final/landmarks").shape[0]
    return Envelope(band_px, 7, (band_px,), (band_px,) * n, bands)


def test_propagated_stage_judged_against_its_band(golden, stages):
    """A stage moved by less than its band is within noise; by more, beyond; its atol is the band."""
    key = "pass0/rigid/iter01/mean_shifts"
    cand = dict(stages)
    ms = stages[key].copy()
    ms[5, 0] += np.float32(0.25)  # 0.25 px on landmark 5
    cand[key] = ms
    within = compare_traces(golden, cand, "propagated", envelope=_hand_envelope(golden, {key: 0.3}, 0.0))
    beyond = compare_traces(golden, cand, "propagated", envelope=_hand_envelope(golden, {key: 0.2}, 0.0))
    s_in, s_out = within.stage(key), beyond.stage(key)
    assert s_in.outcome == WITHIN_NOISE and s_in.atol == 0.3 and s_in.noise_band_px == 0.3
    assert within.outcome == WITHIN_NOISE and within.passed
    assert s_out.outcome == BEYOND_NOISE and s_out.worst_landmarks == [5]
    assert beyond.outcome == BEYOND_NOISE and not beyond.passed
    # Every other stage is equal to the golden's: identical.
    assert all(s.outcome == IDENTICAL for s in within.stages if s.stage != key)


def test_final_landmarks_judged_at_the_largest_of_minimum_band_and_floor(golden, stages):
    floor = 0.00031  # astronaut_default in CPP_FLOOR.json
    cand = dict(stages)
    lm = stages["final/landmarks"].copy()
    lm[10, 1] += np.float32(0.04)
    cand["final/landmarks"] = lm
    wide = compare_traces(golden, cand, "propagated", envelope=_hand_envelope(golden, {}, 0.05))
    narrow = compare_traces(golden, cand, "propagated", envelope=_hand_envelope(golden, {}, 0.003))
    assert wide.landmark_tolerance_px == 0.05 and wide.passed
    assert wide.noise_floor_px == 0.05 and wide.noise_floor_source == "envelope (K=7)"
    assert narrow.landmark_tolerance_px == max(0.01, 0.003, FLOOR_FACTOR * floor) == 0.01
    assert not narrow.passed and narrow.stage("final/landmarks").outcome == BEYOND_NOISE
    tiny = compare_traces(golden, stages, "propagated", envelope=_hand_envelope(golden, {}, 1e-5))
    assert tiny.noise_floor_px == floor and tiny.noise_floor_source.endswith("CPP_FLOOR.json")


def test_json_carries_noise_fields_and_reads_back(golden, stages):
    key = "pass1/nonrigid/iter00/shape"
    cand = dict(stages)
    cand[key] = stages[key] + np.float32(0.001)
    cmp = compare_traces(golden, cand, "propagated", envelope=_hand_envelope(golden, {key: 0.01}, 0.02))
    data = json.loads(json.dumps(cmp.to_json(per_landmark="all")))
    assert data["noise_floor_px"] == 0.02 and data["noise_floor_source"] == "envelope (K=7)"
    assert data["outcome"] == WITHIN_NOISE and data["cpp_floor_px"] == 0.00031
    stage = next(s for s in data["stages"] if s["stage"] == key)
    assert stage["noise_floor_px"] == 0.01 and stage["outcome"] == WITHIN_NOISE
    assert len(data["landmark_band_px"]) == 68
    assert CaseComparison.from_json(data).to_json(per_landmark="all") == data


def test_exact_tolerances_ignore_the_envelope(golden, stages):
    from clnfdiag.compare.tolerances import exact_tolerances
    key = "pass0/rigid/iter01/mean_shifts"
    cand = dict(stages)
    cand[key] = stages[key] + np.float32(1e-3)
    cmp = compare_traces(golden, cand, "propagated", exact_tolerances(),
                         envelope=_hand_envelope(golden, {key: 1.0}, 1.0))
    assert cmp.stage(key).outcome == BEYOND_NOISE and cmp.noise_floor_px == 0.00031
