"""The comparator's result types round-trip through their JSON: from_json(to_json(x)) writes the same JSON."""
from __future__ import annotations

import json

import numpy as np

from _models import models_root
from conftest import REPO
from clnfdiag.compare.comparator import run
from clnfdiag.compare.producers import FitProducer
from clnfdiag.compare.struct import CaseComparison, CaseFailure, StageResult, Summary


def _through_json(obj) -> dict:
    return json.loads(json.dumps(obj, allow_nan=False))


def test_comparisons_round_trip():
    producer = FitProducer(models=models_root(), faults=["normalize-response"])
    results = list(run([REPO / "golden" / "astronaut_default"], producer, ("isolated", "propagated"),
                       impact=producer.replays.impact))
    assert [r.verdict for r in results] == ["diverged", "diverged"]
    for cmp in results:
        for per_landmark in ("all", "diverged", "none"):
            data = _through_json(cmp.to_json(per_landmark))
            back = CaseComparison.from_json(data)
            assert _through_json(back.to_json(per_landmark)) == data
        back = CaseComparison.from_json(_through_json(cmp.to_json("all")))
        assert back.first_divergent_stage == cmp.first_divergent_stage
        assert [s.stage for s in back.divergent_stages] == [s.stage for s in cmp.divergent_stages]
        first = back.stage(back.first_divergent_stage)
        np.testing.assert_array_equal(first.peak_ratio, cmp.stage(cmp.first_divergent_stage).peak_ratio)
    summary = Summary.from_results(results, 1.25)
    data = _through_json(summary.to_json())
    assert _through_json(Summary.from_json(data).to_json()) == data
    assert Summary.from_json(data).exit_code == 1


def test_non_finite_values_and_failures_round_trip():
    s = StageResult(stage="pass0/response", kind="response", family="map", shape=(68, 11, 11),
                    max_abs=float("inf"), max_rel=float("inf"), ratio=float("inf"),
                    within_tolerance=False, n_beyond=1, worst_landmarks=[3],
                    peak_ratio=np.array([1.0, np.nan]), note="1 NaN value(s) in the candidate")
    back = StageResult.from_json(_through_json(s.to_json(per_landmark=True)))
    assert back.max_abs == float("inf") and not back.within_tolerance
    assert back.pass_index == 0 and back.note == s.note
    np.testing.assert_array_equal(back.peak_ratio, s.peak_ratio)
    f = CaseFailure("x", "isolated", "golden error", "bad manifest")
    assert CaseFailure.from_json(_through_json(f.to_json())) == f
