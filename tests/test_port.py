"""A port plugged into the fit loop through the stage protocol: tests/_toy_port.py (45 lines).

The toy port computes responses, mean-shifts and updates itself with one
deviation (the exact-kernel KDE). Through ``--port`` and through the Python API
it gets isolated, propagated and impact results; the deviation is named at
the stage it lives in, and the stages it does not compute are listed as not
produced (missing), never judged.
"""
from __future__ import annotations

import json

from click.testing import CliRunner

from _models import model_or_fail, models_root
from conftest import REPO
from clnfdiag.cli import main
from clnfdiag.compare.comparator import compare_traces
import pytest

from clnfdiag.compare.producers import FitProducer
from clnfdiag.golden import read_case

PORT = f"{REPO / 'tests' / '_toy_port.py'}:ToyPort"
CASE = REPO / "golden" / "astronaut_default"


def _check(cmp_isolated, missing_isolated):
    # At iteration 0 every landmark sits at its window centre, a point of the 0.1-px grid,
    # where the exact kernel is the table's: the deviation shows from iteration 1 on.
    assert cmp_isolated["verdict"] == "diverged"
    assert cmp_isolated["first_divergent_stage"] == "pass0/rigid/iter01/mean_shifts_ref"
    assert "pass0/rigid/iter00/jacobian" in missing_isolated        # computed by clnfdiag: not produced
    assert "pass0/response" not in missing_isolated                  # the port's own stage


def test_port_through_the_cli(tmp_path):
    out = tmp_path / "port.json"
    res = CliRunner().invoke(main, ["compare", str(CASE), "--port", PORT, "--mode", "both",
                                    "--json", str(out), "--quiet", "--models", str(models_root())])
    assert res.exit_code == 1, res.output
    cases = {c["mode"]: c for c in json.loads(out.read_text())["cases"]}
    _check(cases["isolated"], cases["isolated"]["missing_keys"])
    stages = {s["stage"]: s for s in cases["isolated"]["stages"]}
    assert stages["pass0/response"]["within_tolerance"]            # same arithmetic as clnfdiag
    impact = cases["isolated"]["impact"]
    assert impact["mean_shifts_max_px"] > 1e-4                     # the exact kernel moves them
    assert cases["propagated"]["verdict"] == "diverged"
    assert cases["propagated"]["observed"]["landmarks_max_px"] > 0


def test_port_through_python(tmp_path):
    model_or_fail()
    producer = FitProducer(models=models_root(), port=PORT)
    case = read_case(CASE)
    trace = producer(case, "isolated")
    cmp = compare_traces(case, trace, "isolated",
                         impact=lambda key: producer.replays.impact(case, trace, key))
    data = cmp.to_json()
    _check(data, cmp.missing_keys)
    assert cmp.impact is not None and cmp.impact["landmarks_max_px"] >= 0


def test_bad_port_spec_is_one_line():
    res = CliRunner().invoke(main, ["compare", str(CASE), "--port", "no_such_module:Port"])
    assert res.exit_code == 2 and "cannot import the port" in res.output
    res = CliRunner().invoke(main, ["compare", str(CASE), "--port", "nocolon"])
    assert res.exit_code == 2 and "MODULE:OBJECT" in res.output


def test_a_ports_cause_is_its_method_swapped_into_clnfdiags_fit():
    """The toy port's one deviation is the exact-kernel KDE: its mean_shifts_ref cause is the
    fit with that method alone in clnfdiag's place, which is clnfdiag's fit with the no-kde-grid
    fault (the same arithmetic): the same final landmarks, so the same move from the golden.
    A kind no port method computes (parameters carried into a pass) has no cause impact."""
    import numpy as np
    from clnfdiag.compare.propagated import propagated_trace
    from clnfdiag.golden import read_case
    producer = FitProducer(models=models_root(), port=PORT)
    with read_case(REPO / "golden" / "astronaut_wild") as case:
        got = producer.cause_impact(case, {}, "pass0/rigid/iter01/mean_shifts_ref")
        faulted = propagated_trace(case, producer.fitter, frozenset({"no-kde-grid"}))
        move = np.linalg.norm(faulted["final/landmarks"].astype(np.float64) - case.stage("final/landmarks"),
                              axis=1).max()
        assert got["landmarks_max_px"] == move > 0
        with pytest.raises(NotImplementedError):
            producer.cause_impact(case, {}, "pass1/params_local_in")
