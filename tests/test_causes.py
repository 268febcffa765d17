"""Ranked causes, known-fault signatures, impact for written candidate traces, tolerance profiles.

A cause's expectations come from the fault library (what each fault corrupts and
computes) and from exact arithmetic; the replayed figures are checked against
independent replays, not against this code's own earlier output.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from _models import model_or_fail
from conftest import PROJECT_GOLDEN
from clnfdiag.cli import main
from clnfdiag.compare.comparator import compare_traces, rank_causes
from clnfdiag.compare.isolated import isolated_trace
from clnfdiag.compare.producers import Replays
from clnfdiag.compare.struct import StageResult
from clnfdiag.compare.tolerances import profile_tolerances
from clnfdiag.fitter import Fitter
from clnfdiag.golden import read_case, write_case

WILD = PROJECT_GOLDEN / "astronaut_wild"   # weight factor > 0: every fault acts there


@pytest.fixture(scope="module")
def replays():
    return Replays(fitter=Fitter(model_or_fail()))


@pytest.fixture(scope="module")
def wild():
    with read_case(WILD) as g:
        yield g


def _causes(case, replays, faults, mode="isolated", tolerances=None):
    trace = isolated_trace(case, replays.fitter, frozenset(faults))
    return trace, compare_traces(
        case, trace, mode, tolerances, impact=lambda keys: replays.impact(case, trace, keys),
        envelope=replays.envelope(case), signature=lambda key: replays.signature(case, trace, key),
        causes=True)


@pytest.mark.parametrize("fault,kind", [("no-kde-grid", "mean_shifts_ref"), ("skip-sigma", "response_sigma"),
                                        ("transpose-sigma", "response_sigma"),
                                        ("uniform-weights", "weights"), ("nearest-warp", "area_of_interest")])
def test_an_injected_fault_is_named_at_its_stage_kind(wild, replays, fault, kind):
    """The cause at the stage kind a fault corrupts first carries that fault's name."""
    _, cmp = _causes(wild, replays, [fault])
    by_kind = {c.stage_kind: c for c in cmp.causes}
    assert by_kind[kind].known_fault == fault
    # Downstream kinds are not named after a fault of another kind.
    assert all(c.known_fault in (None, fault) for c in cmp.causes)


def test_causes_are_ranked_by_landmark_impact_and_lead_the_line(wild, replays):
    _, cmp = _causes(wild, replays, ["skip-sigma", "no-kde-grid"])
    moves = [c.landmarks_impact_px for c in cmp.causes]
    assert moves == sorted(moves, reverse=True)
    assert {c.stage_kind for c in cmp.causes} >= {"response_sigma", "mean_shifts_ref"}
    assert len({c.stage_kind for c in cmp.causes}) == len(cmp.causes)  # one cause per kind
    from clnfdiag.compare.handoff import case_line
    line = case_line(cmp)
    assert "fix these first: " + cmp.causes[0].line() in line


def test_a_cause_is_the_replay_of_every_stage_of_its_kind(wild, replays):
    """Isolated mode: the cause's impact is exactly the replay with the candidate's values of all
    that kind's stages (an independent call of the replay)."""
    trace, cmp = _causes(wild, replays, ["no-kde-grid"])
    cause = next(c for c in cmp.causes if c.stage_kind == "mean_shifts_ref")
    keys = list(trace)
    start = keys.index(cause.first_stage)
    swap = tuple(k for k in keys[start:] if k.endswith("/mean_shifts_ref"))
    again = Replays(fitter=replays.fitter).impact(wild, trace, swap)
    assert cause.landmarks_impact_px == again["landmarks_max_px"]
    assert cause.mean_shifts_impact_px == again["mean_shifts_max_px"]
    assert cause.beyond_noise == (again["landmarks_max_px"] > max(0.01, cmp.noise_floor_px))


def test_rank_causes_groups_by_kind_and_puts_unknown_impacts_last():
    stages = [StageResult("pass0/response", "response", "map"), StageResult("pass1/response", "response", "map"),
              StageResult("pass0/rigid/iter00/mean_shifts", "mean_shifts", "points"),
              StageResult("pass0/rigid/iter00/param_update", "param_update", "vector")]
    impacts = {"pass0/response": 0.1, "pass0/rigid/iter00/mean_shifts": 0.3}

    def impact(keys):
        first = keys if isinstance(keys, str) else keys[0]
        if first not in impacts:
            raise NotImplementedError
        return {"landmarks_max_px": impacts[first], "mean_shifts_max_px": 0.0}

    causes = rank_causes(stages, {s.stage: 0 for s in stages}, "propagated", impact, None, 0.2)
    assert [c.stage_kind for c in causes] == ["mean_shifts", "response", "param_update"]
    assert [c.beyond_noise for c in causes] == [True, False, None]
    assert causes[1].first_stage == "pass0/response"


def test_candidate_traces_get_impact_and_causes(tmp_path, wild, replays):
    """--candidate: a written trace (here: the no-kde-grid fault's isolated trace) gets the same
    impact and causes as the fit that produced it."""
    trace = isolated_trace(wild, replays.fitter, frozenset({"no-kde-grid"}))
    write_case(tmp_path, wild.case_id, wild.image_path, wild.bbox, wild.preset, wild.parameters, trace,
               wild.manifest["result"], "written by the test")
    res = CliRunner().invoke(main, ["compare", str(WILD), "--candidate", str(tmp_path / wild.case_id),
                                    "--mode", "isolated", "--json", str(tmp_path / "out.json")])
    assert res.exit_code == 1, res.output
    data = json.loads((tmp_path / "out.json").read_text())["cases"][0]
    assert data["impact"] is not None and data["impact"]["landmarks_max_px"] is not None
    assert data["causes"] and data["causes"][0]["stage_kind"] == "mean_shifts_ref"
    assert data["causes"][0]["known_fault"] == "no-kde-grid"
    first = next(s for s in data["stages"] if s["stage"] == data["first_divergent_stage"])
    assert first["reaches_landmarks"] is not None
    assert "fix these first: mean_shifts_ref" in res.output


def test_port_profile_passes_float64_and_still_catches_algorithm_faults(wild, replays):
    """profile port: a float64 implementation is within every bound (derived in
    port_tolerances.toml from float32 rounding); an exact-kernel KDE still is not."""
    port = profile_tolerances("port")
    exact = profile_tolerances("exact")
    trace = isolated_trace(wild, replays.fitter, frozenset({"float64"}))
    assert compare_traces(wild, trace, "isolated", port).passed
    assert not compare_traces(wild, trace, "isolated", exact).passed
    kde = isolated_trace(wild, replays.fitter, frozenset({"no-kde-grid"}))
    cmp = compare_traces(wild, kde, "isolated", port)
    assert not cmp.passed and cmp.first_divergent_stage.endswith("/mean_shifts_ref")


def test_one_quantity_one_tolerance_in_every_profile():
    for name in ("exact", "port"):
        tol = profile_tolerances(name)
        for group in (("params_global_in", "params_global", "final_global"),
                      ("params_local_in", "params_local", "final_local")):
            for mode in ("isolated", "propagated"):
                assert len({tol.get(k, mode) for k in group}) == 1, (name, mode, group)


def test_first_divergence_line_names_where_its_max_abs_is(wild, replays):
    _, cmp = _causes(wild, replays, ["no-kde-grid"])
    s = cmp.stage(cmp.first_divergent_stage)
    at = s.max_abs_landmark
    assert math.isclose(float(np.max(s.error_px)), s.max_abs) and float(s.error_px[at]) == s.max_abs
    from clnfdiag.compare.handoff import case_line
    assert f"max_abs {s.max_abs:.3g} at landmark {at}" in case_line(cmp)


def test_signature_is_judged_where_the_fault_shows(wild, replays):
    """An exact-kernel KDE equals OpenFace's table at grid-point offsets (iter00 here): a float64
    port differs there by rounding only, which matches no fault; the kind's later stages show it."""
    trace = dict(isolated_trace(wild, replays.fitter, frozenset({"no-kde-grid"})))
    k0 = "pass0/rigid/iter00/mean_shifts_ref"
    assert np.array_equal(trace[k0], wild.stage(k0))
    trace[k0] = trace[k0] + np.float32(4e-6)         # a float64 port's rounding
    keys = tuple(k for k in trace if k.endswith("/mean_shifts_ref"))
    assert replays.signature(wild, trace, k0) is None
    assert replays.signature(wild, trace, keys) == "no-kde-grid"
