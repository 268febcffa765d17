"""Comparator core: metrics, tolerances, verdicts, JSON contract and the ``compare`` command.

Candidates are built here from a committed golden case (copies with deliberate
perturbations), so these tests judge the comparator itself, whatever the
fitter or the stage producers do.
"""
from __future__ import annotations

import json
import math
import operator
import sys
import tomllib
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clnfdiag.cli import main
from clnfdiag.compare import metrics
from clnfdiag.compare.producers import CandidateTraces
from clnfdiag.keys import kind_of
from clnfdiag.compare.comparator import (compare_stage, compare_traces, convergence_rows,
                                         parse_key, run)
from clnfdiag.compare.struct import CaseComparison, CaseFailure, Summary
from clnfdiag.compare.tolerances import (Tol, default_tolerances, landmark_floor, load_tolerances)
from clnfdiag.errors import InputError
from clnfdiag.golden import read_case, write_case

from conftest import PROJECT_GOLDEN

CASE = PROJECT_GOLDEN / "astronaut_default"
CASE2 = PROJECT_GOLDEN / "takeo_default"
DEFAULTS_TOML = Path(__file__).resolve().parents[1] / "clnfdiag" / "data" / "default_tolerances.toml"
CONTRACT_CASE_KEYS = {"case", "mode", "verdict", "first_divergent_stage", "impact", "stages"}
CONTRACT_STAGE_KEYS = {"stage", "max_abs", "max_rel", "within_tolerance", "reaches_landmarks", "worst_landmarks"}


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def golden():
    with read_case(CASE) as case:
        yield case


@pytest.fixture(scope="module")
def stages(golden) -> dict[str, np.ndarray]:
    """The golden's own arrays, in manifest order (a perfect candidate)."""
    return {k: np.array(golden.stage(k)) for k in golden.keys()}


def _copy(stages: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in stages.items()}


def _normalised_response(golden, stages) -> dict[str, np.ndarray]:
    """The seed bug: pass0/response of every visible landmark divided by its own max."""
    out = dict(stages)
    resp = stages["pass0/response"].copy()
    vis = golden.stage("pass0/visibilities").astype(bool)
    resp[vis] /= resp[vis].max(axis=(1, 2), keepdims=True)
    out["pass0/response"] = resp
    return out


def _write_candidate(parent: Path, golden, stages: dict[str, np.ndarray], case_id: str | None = None) -> Path:
    return write_case(parent, case_id or golden.case_id, golden.image_path, golden.bbox, golden.preset,
                      golden.parameters, stages, golden.manifest["result"], "test candidate")


def _invoke(args: list[str]):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


# --------------------------------------------------------------------------- metrics: known answers

def test_pearson_known_values():
    g = np.array([[1.0, 2, 3], [1, 2, 3], [5, 5, 5], [5, 5, 5], [1, 0, 0]])
    c = np.array([[2.0, 4, 6], [3, 2, 1], [7, 7, 7], [1, 2, 3], [0, 1, 0]])
    # last row: centred g = (2/3, -1/3, -1/3), c = (-1/3, 2/3, -1/3): r = (-2/9 - 2/9 + 1/9) / (6/9) = -1/2
    np.testing.assert_allclose(metrics.pearson(g, c), [1.0, -1.0, 1.0, 0.0, -0.5], atol=1e-12)


def test_map_metrics_known_answers():
    g = np.zeros((3, 3, 3))
    c = np.zeros((3, 3, 3))
    g[0, 0, 0] = 2.0            # landmark 0: peak 2 at (0, 0) ...
    c[0, 2, 2] = 4.0            # ... candidate peak 4 at (2, 2): ratio 2, shift sqrt(8)
    g[1] = np.arange(9).reshape(3, 3)
    c[1] = 3 * g[1]             # landmark 1: scaled by 3, same peak position, correlation 1
    g[2, 1, 1] = c[2, 1, 1] = 7.0  # landmark 2: invisible
    m = metrics.map_metrics(g, c, visible=np.array([1, 1, 0]))
    np.testing.assert_allclose(m["peak_golden"][:2], [2.0, 8.0])
    np.testing.assert_allclose(m["peak_candidate"][:2], [4.0, 24.0])
    np.testing.assert_allclose(m["peak_ratio"][:2], [2.0, 3.0])
    np.testing.assert_allclose(m["peak_shift_px"][:2], [math.sqrt(8), 0.0])
    np.testing.assert_allclose(m["max_abs_per_landmark"][:2], [4.0, 16.0])  # |0-4| ; |3*8-8|
    np.testing.assert_allclose(m["rel_per_landmark"][:2], [2.0, 2.0])
    np.testing.assert_allclose(m["correlation"][1], 1.0)
    # two one-hot maps at different positions over 9 values: r = (0 - 9*(2/9)*(4/9)) / ... = -1/8
    np.testing.assert_allclose(m["correlation"][0], -1 / 8)
    for name in ("peak_golden", "peak_ratio", "correlation", "max_abs_per_landmark"):
        assert np.isnan(m[name][2]), name


def test_compare_maps_tolerance_is_relative_to_each_landmarks_peak():
    g = np.ones((2, 2, 2))
    g[1] *= 100.0
    c = g.copy()
    c[0, 0, 0] += 0.5  # 0.5 of a peak of 1: beyond rtol 0.1
    c[1, 0, 0] += 5.0  # 5 of a peak of 100 = 0.05: within rtol 0.1
    out = metrics.compare_maps(g, c, Tol(0.0, 0.1))
    assert not out["within_tolerance"]
    assert out["worst_landmarks"] == [0]
    assert out["max_abs"] == pytest.approx(5.0)
    assert out["max_rel"] == pytest.approx(0.5)
    assert out["ratio"] == pytest.approx(5.0)  # 0.5 / (0.1 * 1)
    # RMS over all 8 values of both visible maps: sqrt((0.25 + 25) / 8)
    assert out["rms"] == pytest.approx(math.sqrt(25.25 / 8))


def test_compare_maps_ignores_invisible_landmarks():
    g = np.ones((2, 3, 3))
    c = g.copy()
    c[1] = 50.0
    out = metrics.compare_maps(g, c, Tol(0.0, 1e-5), visible=np.array([1, 0]))
    assert out["within_tolerance"] and out["max_abs"] == 0.0


def test_points_euclidean_error_and_worst_order():
    g = np.zeros((4, 2))
    c = g.copy()
    c[1] = [3.0, 4.0]   # 5 px
    c[3] = [0.0, 0.02]  # 0.02 px
    out = metrics.compare_points(g, c, Tol(0.01, 0.0), "mean_shifts")
    np.testing.assert_allclose(out["error_px"], [0, 5, 0, 0.02])
    assert out["worst_landmarks"] == [1, 3]
    assert out["max_abs"] == 5.0
    assert out["rms"] == pytest.approx(math.sqrt((25 + 0.0004) / 4))


def test_point_scales():
    pts = np.array([[10.0, 20.0], [40.0, 30.0], [20.0, 60.0]])
    assert metrics.point_scale(pts, "landmarks") == 40.0        # extent: max(30, 40)
    assert metrics.point_scale(pts, "mean_shifts") == pytest.approx(math.hypot(20, 60))


def test_vector_scale_groups_global_parameters():
    g = np.array([0.5, 0.1, -0.2, 0.05, 200.0, -100.0])
    np.testing.assert_allclose(metrics.vector_scale(g, "params_global"), [0.5, 0.2, 0.2, 0.2, 200, 200])
    upd = np.concatenate([g, [1.0, -3.0]])
    np.testing.assert_allclose(metrics.vector_scale(upd, "param_update")[6:], [3.0, 3.0])
    jac = np.array([[1.0, -10.0], [2.0, 5.0]])
    np.testing.assert_allclose(metrics.vector_scale(jac, "jacobian"), [[2, 10], [2, 10]])
    np.testing.assert_allclose(metrics.vector_scale(np.array([1.0, -4.0]), "dxs"), [4, 4])


def test_vector_scale_error_relative_to_its_group():
    g = np.array([0.5, 0.1, -0.2, 0.05, 200.0, -100.0])
    c = g.copy()
    c[0] += 1e-3  # 2e-3 of the scale 0.5 (would be 5e-6 of max|g| = 200)
    out = metrics.compare_vectors(g, c, Tol(0.0, 1e-5), "params_global")
    assert not out["within_tolerance"]
    assert out["max_rel"] == pytest.approx(2e-3)


def test_vector_rows_map_to_landmarks():
    g = np.ones(136)
    c = g.copy()
    c[68 + 2] = 2.0  # y row of landmark 2
    c[5] = 1.5       # x row of landmark 5
    out = metrics.compare_vectors(g, c, Tol(0.0, 1e-5), "weights", n_landmarks=68)
    assert out["worst_landmarks"] == [2, 5]
    assert out["n_beyond"] == 2


def test_scalars_exact_and_relative():
    assert not metrics.compare_scalars(np.array(0), np.array(1), Tol(0, 0))["within_tolerance"]
    assert metrics.compare_scalars(np.array(3), np.array(3), Tol(0, 0))["within_tolerance"]
    out = metrics.compare_scalars(np.array(2.0), np.array(2.001), Tol(0.0, 1e-3))
    assert out["within_tolerance"] and out["max_rel"] == pytest.approx(5e-4)


def test_nan_candidate_is_infinitely_wrong():
    g = np.zeros((3, 2))
    c = g.copy()
    c[2, 0] = np.nan
    out = metrics.compare_points(g, c, Tol(1.0, 0.0), "shape")
    assert not out["within_tolerance"] and out["worst_landmarks"] == [2] and math.isinf(out["max_abs"])


def test_safe_div():
    np.testing.assert_array_equal(metrics.safe_div(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.0, 4.0])),
                                  [0.0, np.inf, 0.5])


def test_parse_key_and_kind():
    k = parse_key("pass1/nonrigid/iter03/mean_shifts")
    assert (k.pass_index, k.phase, k.iteration, k.kind) == (1, "nonrigid", 3, "mean_shifts")
    k = parse_key("pass0/rigid/weights")
    assert (k.pass_index, k.phase, k.iteration, k.kind) == (0, "rigid", None, "weights")
    k = parse_key("pass2/response_raw")
    assert (k.pass_index, k.phase, k.iteration, k.kind) == (2, None, None, "response_raw")
    assert kind_of("final/landmarks") == "landmarks"
    assert parse_key("hierarchical/inner/landmarks").kind == "landmarks"


def test_shape_mismatch_is_a_divergence_with_a_note():
    res = compare_stage("pass0/response", np.zeros((68, 11, 11)), np.zeros((68, 9, 9)), Tol(0, 1e-5))
    assert not res.within_tolerance and "differs" in res.note and math.isinf(res.max_abs)


# --------------------------------------------------------------------------- tolerances

def test_defaults_come_from_the_shipped_toml():
    data = tomllib.loads(DEFAULTS_TOML.read_text())
    tol = default_tolerances()
    for kind, entry in data.items():
        if kind == "propagated":
            continue
        assert tol.get(kind) == Tol(entry["atol"], entry["rtol"]), kind
    for kind, entry in data["propagated"].items():
        assert tol.get(kind, "propagated") == Tol(entry["atol"], entry["rtol"]), kind
    # brief's values
    assert tol.get("response") == Tol(0.0, 1e-5)
    assert tol.get("landmarks") == Tol(0.01, 0.0)
    assert tol.get("view_id").exact and tol.get("n_updates").exact
    # a kind the propagated table does not name keeps the isolated value
    assert "view_id" not in data["propagated"] and tol.get("view_id", "propagated").exact
    # an unnamed kind gets `default`
    assert tol.get("some_future_kind") == tol.get("default")


def test_tolerance_file_overrides_only_given_fields(tmp_path):
    f = tmp_path / "tol.toml"
    f.write_text("response = { rtol = 0.5 }\n[propagated]\nmean_shifts = { atol = 3.0 }\n")
    tol = load_tolerances(f)
    assert tol.get("response") == Tol(0.0, 0.5)
    assert tol.get("mean_shifts", "propagated") == Tol(3.0, 0.0)
    assert tol.get("mean_shifts") == default_tolerances().get("mean_shifts")
    assert tol.source == str(f)


def test_tolerances_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'x'\n[tool.clnfdiag.tolerances]\nshape = { atol = 0.5 }\n"
        "[tool.clnfdiag.tolerances.propagated]\nresponse = { rtol = 0.25 }\n")
    tol = load_tolerances(cwd=tmp_path)
    assert tol.get("shape") == Tol(0.5, 0.0)
    assert tol.get("response", "propagated") == Tol(0.0, 0.25)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert load_tolerances(cwd=tmp_path).get("shape") == default_tolerances().get("shape")


@pytest.mark.parametrize("text, fragment", [
    ("respons = { rtol = 1e-3 }\n", "respons"),                  # unknown kind
    ("response = { rtol = 'small' }\n", "response.rtol"),         # non-numeric
    ("response = { rtol = true }\n", "response.rtol"),            # bool is not a number
    ("response = { atol = -1.0 }\n", "response.atol"),            # negative
    ("response = { rtoll = 1.0 }\n", "response.rtoll"),           # unknown field
    ("[propagated]\nbogus = { atol = 1.0 }\n", "propagated.bogus"),
    ("response = 1e-3\n", "response"),                            # not a table
    ("response = {\n", "invalid TOML"),
])
def test_bad_tolerance_file_names_file_and_key(tmp_path, text, fragment):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(InputError) as info:
        load_tolerances(f)
    assert str(f) in str(info.value) and fragment in str(info.value)


def test_bad_pyproject_key_names_the_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.clnfdiag.tolerances]\nnope = { atol = 1.0 }\n")
    with pytest.raises(InputError, match=r"tool\.clnfdiag\.tolerances\.nope"):
        load_tolerances(cwd=tmp_path)


def test_landmark_floor_read_next_to_the_case(tmp_path, golden):
    case_dir = tmp_path / "cases" / "c1"
    case_dir.mkdir(parents=True)
    assert landmark_floor(case_dir, "c1") == (None, None)
    floors = tmp_path / "cases" / "CPP_FLOOR.json"
    floors.write_text(json.dumps({"cases": {"c1": 0.05}}))
    assert landmark_floor(case_dir, "c1") == (0.05, str(floors.resolve()))


def test_landmark_floor_of_a_shipped_case_is_found_by_case_id_anywhere(tmp_path):
    """A copy of a shipped golden with no CPP_FLOOR.json beside it keeps its C++ floor: the value
    of ../shared/golden/CPP_FLOOR.json (and -hierarchical), looked up by case id."""
    from conftest import SHARED_GOLDEN, SHARED_GOLDEN_H
    for shared in (SHARED_GOLDEN, SHARED_GOLDEN_H):
        table = json.loads((shared / "CPP_FLOOR.json").read_text())["cases"]
        for case_id, value in table.items():
            where = tmp_path / "elsewhere" / case_id
            value_found, source = landmark_floor(where, case_id)
            assert value_found == value and source.endswith("cpp_floor.json"), case_id


# --------------------------------------------------------------------------- compare_traces

def test_identical_candidate_passes_everything(golden, stages):
    cmp = compare_traces(golden, stages)
    assert cmp.verdict == "pass" and cmp.first_divergent_stage is None
    assert [s.stage for s in cmp.stages] == golden.keys()
    assert all(s.within_tolerance and s.max_abs == 0 for s in cmp.stages)
    assert cmp.missing_keys == [] and cmp.impact is None
    assert cmp.observed == {"mean_shifts_max_px": 0.0, "landmarks_max_px": 0.0}


def test_first_divergent_stage_follows_execution_order(golden, stages):
    cand = _copy(stages)
    cand["pass1/response_raw"][3] *= 1.01
    cand["pass0/rigid/iter02/mean_shifts"][7] += [0.3, 0.4]
    cand = dict(reversed(list(cand.items())))  # the candidate's own order must not matter
    cmp = compare_traces(golden, cand)
    assert cmp.verdict == "diverged"
    assert cmp.first_divergent_stage == "pass0/rigid/iter02/mean_shifts"
    ms = cmp.stage("pass0/rigid/iter02/mean_shifts")
    assert ms.worst_landmarks == [7] and ms.max_abs == pytest.approx(0.5, rel=1e-6)
    assert ms.error_px[7] == pytest.approx(0.5, rel=1e-6)
    assert [s.stage for s in cmp.divergent_stages] == ["pass0/rigid/iter02/mean_shifts", "pass1/response_raw"]
    assert cmp.stage("pass1/response_raw").worst_landmarks == [3]


def test_normalised_response_peak_ratios(golden, stages):
    cmp = compare_traces(golden, _normalised_response(golden, stages))
    assert cmp.first_divergent_stage == "pass0/response"
    s = cmp.stage("pass0/response")
    peaks = np.abs(golden.stage("pass0/response").astype(np.float64)).max(axis=(1, 2))
    np.testing.assert_allclose(s.peak_ratio, 1.0 / peaks, rtol=1e-6)
    np.testing.assert_allclose(s.peak_candidate, 1.0, rtol=1e-6)
    np.testing.assert_allclose(s.correlation, 1.0, atol=1e-6)    # same shape, other scale
    np.testing.assert_array_equal(s.peak_shift_px, 0.0)
    assert len(s.worst_landmarks) == 10 and s.n_beyond == 68
    # worst first: the smallest golden peak is the most amplified
    assert s.worst_landmarks[0] == int(np.argmin(peaks))


def test_gate_landmarks_ignores_stage_divergence_that_spares_the_landmarks(golden, stages):
    cand = _normalised_response(golden, stages)
    cmp = compare_traces(golden, cand, gate="landmarks")
    assert cmp.verdict == "pass" and cmp.first_divergent_stage == "pass0/response"
    assert compare_traces(golden, cand, gate="stages").verdict == "diverged"


def test_gate_landmarks_fails_on_final_landmarks(golden, stages):
    cand = dict(stages)
    lm = stages["final/landmarks"].copy()
    lm[30] += [0.03, 0.04]  # 0.05 px
    cand["final/landmarks"] = lm
    cmp = compare_traces(golden, cand, gate="landmarks")
    assert cmp.verdict == "diverged" and cmp.first_divergent_stage == "final/landmarks"
    assert cmp.stage("final/landmarks").worst_landmarks == [30]
    assert cmp.observed["landmarks_max_px"] == pytest.approx(0.05, rel=1e-4)


def test_impact_sets_reaches_landmarks_and_gates(golden, stages):
    cand = _normalised_response(golden, stages)
    calls = []

    def reaches(key):
        calls.append(key)
        return {"mean_shifts_max_px": 0.2, "landmarks_max_px": 0.5}

    cmp = compare_traces(golden, cand, gate="landmarks", impact=reaches)
    assert calls == ["pass0/response"]
    # The comparator adds the move it judged against: 0.01 px (the landmark minimum) or the
    # case's noise, whichever is larger (astronaut_default's C++ floor is 0.00031 px).
    assert cmp.impact == {"mean_shifts_max_px": 0.2, "landmarks_max_px": 0.5, "noise_floor_px": 0.01}
    assert cmp.stage("pass0/response").reaches_landmarks is True
    assert cmp.verdict == "diverged"

    cmp = compare_traces(golden, cand, gate="landmarks",
                         impact=lambda key: {"mean_shifts_max_px": 0.0, "landmarks_max_px": 0.0})
    assert cmp.stage("pass0/response").reaches_landmarks is False and cmp.verdict == "pass"

    def unknown(key):
        raise NotImplementedError

    cmp = compare_traces(golden, cand, impact=unknown)
    assert cmp.stage("pass0/response").reaches_landmarks is None and cmp.impact is None
    # no call when nothing diverges
    calls.clear()
    compare_traces(golden, stages, impact=reaches)
    assert calls == []


def test_missing_keys_reported_not_failed(golden, stages):
    cand = {k: v for k, v in stages.items() if "area_of_interest" not in k and "jacobian" not in k}
    cmp = compare_traces(golden, cand)
    assert cmp.verdict == "pass"
    assert "pass0/area_of_interest" in cmp.missing_keys and "pass2/nonrigid/iter04/jacobian" in cmp.missing_keys
    assert all(k not in [s.stage for s in cmp.stages] for k in cmp.missing_keys)


def test_missing_final_landmarks_is_bad_input(golden, stages):
    cand = {k: v for k, v in stages.items() if k != "final/landmarks"}
    with pytest.raises(InputError, match="final/landmarks"):
        compare_traces(golden, cand)


def test_non_numeric_candidate_is_bad_input(golden, stages):
    cand = dict(stages)
    cand["pass0/response"] = np.array(["a", "b"])
    with pytest.raises(InputError, match="pass0/response"):
        compare_traces(golden, cand)


def test_propagated_final_landmarks_use_noise_floor(tmp_path, golden, stages):
    cand = dict(stages)
    lm = stages["final/landmarks"].copy()
    lm[0] += [0.08, 0.0]  # beyond the floor (0.05), within twice the floor
    cand["final/landmarks"] = lm
    case_dir = _write_candidate(tmp_path, golden, stages)  # a golden copy with a floor next to it
    (tmp_path / "CPP_FLOOR.json").write_text(json.dumps({"cases": {golden.case_id: 0.05}}))
    with read_case(case_dir) as g2:
        prop = compare_traces(g2, cand, mode="propagated")
        iso = compare_traces(g2, cand, mode="isolated")
        lm[0] += [0.03, 0.0]  # 0.11 px: beyond twice the floor
        far = compare_traces(g2, cand, mode="propagated")
    assert prop.landmark_tolerance_px == 0.1 and prop.noise_floor_px == 0.05
    assert prop.stage("final/landmarks").within_tolerance and prop.verdict == "pass"
    assert iso.landmark_tolerance_px == 0.01 and iso.verdict == "diverged"
    assert far.verdict == "diverged"


def test_propagated_mode_uses_the_looser_table(golden, stages):
    cand = _copy(stages)
    cand["pass0/rigid/iter01/mean_shifts"][5] += [0.01, 0.0]  # 0.01 px: beyond 1e-4, within 0.5
    assert compare_traces(golden, cand, mode="isolated").verdict == "diverged"
    assert compare_traces(golden, cand, mode="propagated").verdict == "pass"


def test_convergence_rows(golden, stages):
    rows = convergence_rows(golden, stages)
    n = sum(len(golden.iterations(p, ph)) for p in range(golden.n_passes) for ph, _, _ in golden.phases(p))
    assert len(rows) == n
    assert (rows[0].pass_index, rows[0].phase, rows[0].iteration) == (0, "rigid", 0)
    assert rows[0].shape_change_norm_golden is None
    r1 = rows[1]
    assert r1.shape_change_norm_golden == pytest.approx(float(golden.stage("pass0/rigid/iter01/shape_change_norm")))
    assert r1.dp_norm_golden == pytest.approx(np.linalg.norm(golden.stage("pass0/rigid/iter01/param_update")))
    assert r1.mean_shift_rms_diff == 0.0 and r1.landmark_rms_diff == 0.0


def test_json_contract(golden, stages):
    cand = _copy(stages)
    cand["pass0/rigid/iter00/dxs"][0] = np.nan
    cmp = compare_traces(golden, _normalised_response(golden, cand))
    data = json.loads(json.dumps(cmp.to_json(), allow_nan=False))
    assert CONTRACT_CASE_KEYS <= set(data)
    assert data["verdict"] == "diverged" and data["first_divergent_stage"] == "pass0/response"
    assert set(data["impact"] or {}) <= {"mean_shifts_max_px", "landmarks_max_px"}
    for s in data["stages"]:
        assert CONTRACT_STAGE_KEYS <= set(s)
    by_key = {s["stage"]: s for s in data["stages"]}
    assert by_key["pass0/rigid/iter00/dxs"]["max_abs"] is None  # inf written as null
    assert len(by_key["pass0/response"]["peak_ratio"]) == 68    # per-landmark lists of divergent stages
    assert "peak_ratio" not in by_key["pass1/response"]
    full = cmp.to_json(per_landmark="all")
    assert "peak_ratio" in {s["stage"]: s for s in full["stages"]}["pass1/response"]


def test_summary_counts_and_exit_code(golden, stages):
    ok = compare_traces(golden, stages)
    bad = compare_traces(golden, _normalised_response(golden, stages))
    s = Summary.from_results([ok, bad])
    assert (s.total, s.passed, s.diverged, s.errors, s.exit_code) == (2, 1, 1, 0, 1)
    assert s.worst["stage"] == "pass0/response" and s.first_divergent_kinds == {"response": 1}
    s = Summary.from_results([ok, CaseFailure("x", None, "golden error", "boom")])
    assert s.exit_code == 2 and "1/1" in s.line()


# --------------------------------------------------------------------------- run

def test_run_streams_in_order_and_reports_failures(tmp_path, stages):
    seen = []

    def producer(case, mode):
        if case.case_id == "takeo_default":
            raise InputError("no trace for this one")
        return stages

    out = list(run([CASE, tmp_path / "nope", CASE2, CASE], producer, modes=("isolated", "propagated"),
                   progress=lambda done, total: seen.append((done, total))))
    assert [(type(r).__name__, r.mode) for r in out] == [
        ("CaseComparison", "isolated"), ("CaseComparison", "propagated"),
        ("CaseFailure", None),
        ("CaseFailure", "isolated"), ("CaseFailure", "propagated"),
        ("CaseComparison", "isolated"), ("CaseComparison", "propagated")]
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(r.passed for r in out if isinstance(r, CaseComparison))
    assert all(r.kept == {} for r in out if isinstance(r, CaseComparison))


def test_run_keep_and_parallel_workers(tmp_path, golden, stages):
    root = tmp_path / "cands"
    _write_candidate(root, golden, stages)
    with read_case(CASE2) as g2:
        _write_candidate(root, g2, _normalised_response(g2, {k: np.array(g2.stage(k)) for k in g2.keys()}))
    producer = CandidateTraces(root)
    keep = partial(operator.eq, "final/landmarks")
    serial = list(run([CASE, CASE2], producer, keep=keep))
    parallel = list(run([CASE, CASE2], producer, workers=2, keep=keep))
    for res in (serial, parallel):
        assert [(r.case, r.verdict, r.first_divergent_stage) for r in res] == [
            ("astronaut_default", "pass", None), ("takeo_default", "diverged", "pass0/response")]
        assert list(res[0].kept) == ["final/landmarks"]


# --------------------------------------------------------------------------- CLI with --candidate

def test_cli_unmodified_copy_exits_0(tmp_path, golden, stages):
    cand = _write_candidate(tmp_path / "cand", golden, stages)
    res = _invoke([CASE, "--candidate", cand, "--json", tmp_path / "out.json"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("PASS")
    data = json.loads((tmp_path / "out.json").read_text())
    (case,) = data["cases"]
    # A candidate trace is judged with the propagated table unless --mode says otherwise.
    assert case["verdict"] == "pass" and case["mode"] == "propagated"
    assert all(s["within_tolerance"] for s in case["stages"])
    assert data["summary"]["exit_code"] == 0 and data["errors"] == []


def test_cli_normalised_response_exits_1(tmp_path, golden, stages):
    cand = _write_candidate(tmp_path / "cand", golden, _normalised_response(golden, stages))
    res = _invoke([CASE, "--candidate", cand, "--json", "-"])
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)  # --json -: only JSON on stdout ...
    assert "DIVERGED" in res.stderr and "pass0/response" in res.stderr  # ... human lines on stderr
    (case,) = data["cases"]
    assert case["verdict"] == "diverged" and case["first_divergent_stage"] == "pass0/response"
    stage = next(s for s in case["stages"] if s["stage"] == "pass0/response")
    peaks = np.abs(golden.stage("pass0/response").astype(np.float64)).max(axis=(1, 2))
    np.testing.assert_allclose(stage["peak_ratio"], 1.0 / peaks, rtol=1e-6)
    assert stage["worst_landmarks"] and not stage["within_tolerance"]


def test_cli_gate_landmarks_and_pyproject_tolerances(tmp_path, golden, stages, monkeypatch):
    cand = _write_candidate(tmp_path / "cand", golden, _normalised_response(golden, stages))
    assert _invoke([CASE, "--candidate", cand, "--gate", "landmarks"]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.clnfdiag.tolerances]\nresponse = { rtol = 100.0 }\n")
    assert _invoke([CASE, "--candidate", cand, "--mode", "isolated"]).exit_code == 0
    (tmp_path / "pyproject.toml").write_text("[tool.clnfdiag.tolerances]\nresponze = { rtol = 100.0 }\n")
    res = _invoke([CASE, "--candidate", cand])
    assert res.exit_code == 2 and "pyproject.toml" in res.stderr and "responze" in res.stderr


def test_cli_bad_tolerances_file_exits_2(tmp_path, golden, stages):
    cand = _write_candidate(tmp_path / "cand", golden, stages)
    bad = tmp_path / "tol.toml"
    bad.write_text("mean_shifts = { atol = 'wide' }\n")
    res = _invoke([CASE, "--candidate", cand, "--tolerances", bad])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert str(bad) in res.stderr and "mean_shifts.atol" in res.stderr


def test_cli_malformed_candidate_exits_2(tmp_path, golden, stages):
    cand = _write_candidate(tmp_path / "cand", golden, stages)
    (cand / "stages.npz").write_text("not an archive")
    res = _invoke([CASE, "--candidate", cand])
    assert res.exit_code == 2
    assert "stages.npz" in res.stderr and res.stderr.startswith("clnfdiag: golden error:")


def test_cli_candidate_without_final_landmarks_exits_2(tmp_path, golden, stages):
    cand = _write_candidate(tmp_path / "cand", golden, {k: v for k, v in stages.items() if k != "final/landmarks"})
    res = _invoke([CASE, "--candidate", cand])
    assert res.exit_code == 2 and "final/landmarks" in res.stderr


def test_cli_candidate_folder_matched_by_case_id(tmp_path, golden, stages):
    root = tmp_path / "cands"
    _write_candidate(root, golden, stages)
    res = _invoke([CASE, CASE2, "--candidate", root])
    assert res.exit_code == 2  # takeo_default has no candidate
    assert "takeo_default" in res.stderr
    assert "PASS      astronaut_default" in res.stdout
    with read_case(CASE2) as g2:
        _write_candidate(root, g2, {k: np.array(g2.stage(k)) for k in g2.keys()})
    res = _invoke([CASE, CASE2, "--candidate", root, "--mode", "both", "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().startswith("4/4 comparisons passed")  # quiet: only the summary


def test_cli_usage_errors_exit_2(tmp_path, golden, stages):
    cand = _write_candidate(tmp_path / "cand", golden, stages)
    assert _invoke([CASE, "--candidate", cand, "--inject", "skip-sigma"]).exit_code == 2
    assert _invoke([CASE, "--candidate", cand, "--mode", "sideways"]).exit_code == 2
    assert _invoke([tmp_path / "missing", "--candidate", cand]).exit_code == 2
    assert _invoke([CASE, "--candidate", tmp_path / "nowhere"]).exit_code == 2
    assert _invoke([CASE, "--candidate", cand, "--workers", "0"]).exit_code == 2


def test_cli_report_gets_comparisons_goldens_and_kept_maps(tmp_path, golden, stages, monkeypatch):
    cand = _write_candidate(tmp_path / "cand", golden, _normalised_response(golden, stages))
    calls = {}

    def write_report(comparisons, out_dir, golden_cases=None, candidate_maps=None, source=""):
        calls.update(comparisons=comparisons, out_dir=out_dir, golden_cases=golden_cases,
                     candidate_maps=candidate_maps)
        return Path(out_dir)

    from clnfdiag.report import keep_for_report
    fake = types.ModuleType("clnfdiag.report")
    fake.write_report = write_report
    fake.keep_for_report = keep_for_report
    monkeypatch.setitem(sys.modules, "clnfdiag.report", fake)
    res = _invoke([CASE, "--candidate", cand, "--report", tmp_path / "rep"])
    assert res.exit_code == 1, res.output
    (cmp,) = calls["comparisons"]
    assert isinstance(cmp, CaseComparison) and calls["out_dir"] == tmp_path / "rep"
    assert set(calls["golden_cases"]) == {"astronaut_default"}
    kept = calls["candidate_maps"][("astronaut_default", "propagated")]
    assert {"final/landmarks", "pass0/response", "pass0/rigid/iter00/dxs"} <= set(kept)
    assert "pass0/rigid/iter01/dxs" not in kept


def test_cli_report_module_missing_exits_2(tmp_path, golden, stages, monkeypatch):
    cand = _write_candidate(tmp_path / "cand", golden, stages)
    monkeypatch.setitem(sys.modules, "clnfdiag.report", None)  # import raises ModuleNotFoundError
    res = _invoke([CASE, "--candidate", cand, "--report", tmp_path / "rep"])
    assert res.exit_code == 2 and "clnfdiag.report" in res.stderr
