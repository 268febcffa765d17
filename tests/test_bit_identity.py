"""clnfdiag's own fit is judged by bit identity on every shipped golden, in both modes.

Isolated mode recomputes every stage from the golden's own inputs; propagated
mode fits end to end from the image and box. Either way every value of every
golden stage must have the C++ golden's bits: clnfdiag follows the operation
order of each library call the reference build made (CLNF-NOTES §3–5), in
fixed-order code that gives the same bits on any CPU (tests/test_determinism.py).
The same check runs through the CLI as ``clnfdiag compare --exact``.
"""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from _models import model_or_fail, models_root
from conftest import project_cases, shared_cases
from clnfdiag.cli import main
from clnfdiag.compare.isolated import isolated_trace
from clnfdiag.compare.metrics import bit_identical
from clnfdiag.compare.propagated import propagated_trace
from clnfdiag.fitter import Fitter
from clnfdiag.golden import read_case


def _unique(dirs):
    seen, out = set(), []
    for d in dirs:
        if d.name not in seen:
            seen.add(d.name)
            out.append(d)
    return out


CASES = _unique(project_cases() + shared_cases())
PRODUCERS = {"isolated": isolated_trace, "propagated": propagated_trace}


@pytest.fixture(scope="module")
def fitter():
    return Fitter(model_or_fail())


@pytest.mark.parametrize("mode", list(PRODUCERS))
@pytest.mark.parametrize("case_dir", CASES, ids=lambda d: d.name)
def test_every_stage_bit_identical(fitter, case_dir, mode):
    case = read_case(case_dir)
    trace = PRODUCERS[mode](case, fitter)
    missing = [k for k in case.keys() if k not in trace]
    assert not missing, f"stages not produced: {missing[:5]}"
    differ = {}
    for key in case.keys():
        eq = bit_identical(trace[key], case.stage(key))
        if not eq.all():
            differ[key] = f"{eq.size - int(eq.sum())}/{eq.size}"
    assert not differ, f"{len(differ)} stages differ (values differing/total): " + \
        ", ".join(f"{k} {v}" for k, v in list(differ.items())[:8])


def test_bit_identical_helper():
    g = np.array([0.0, 1.0, np.nan], np.float32)
    assert bit_identical(g.copy(), g).all()
    assert not bit_identical(np.array([-0.0, 1.0, np.nan], np.float32), g)[0]
    assert not bit_identical(np.nextafter(g, np.float32(2)), g)[1]
    assert not bit_identical(np.zeros(2, np.float32), g).any()
    one = np.float32(0.5)
    assert bit_identical(np.array(one), np.array(one)).shape == ()
    assert bool(bit_identical(np.array(one), np.array(one)))


def test_cli_exact_gate_passes_on_project_goldens():
    res = CliRunner().invoke(main, ["compare", "golden/", "--exact", "--quiet",
                                    "--models", str(models_root())])
    assert res.exit_code == 0, res.output


def test_cli_exact_catches_a_rounding_level_fault():
    # float64 arithmetic differs from the C++ only in the last bits of a few stages:
    # the default tolerances can let it through, --exact cannot.
    res = CliRunner().invoke(main, ["compare", "golden/astronaut_default", "--exact", "--quiet",
                                    "--mode", "isolated", "--inject", "float64",
                                    "--models", str(models_root())])
    assert res.exit_code == 1, res.output


def test_exact_and_tolerances_conflict(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text("")
    res = CliRunner().invoke(main, ["compare", "golden/", "--exact", "--tolerances", str(f)])
    assert res.exit_code == 2 and "--exact" in res.output
