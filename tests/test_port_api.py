"""Another port writes its trace with TraceWriter; clnfdiag compares it like any golden.

The toy port below is deliberately different from OpenFace in one known way:
its mean-shift uses the exact Gaussian kernel at the landmark offset, not
OpenFace's 0.1-pixel kernel table. It computes that stage itself (plain numpy,
no clnfdiag code) from the golden's inputs and copies every other stage, so
the comparator must name exactly that stage.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import PROJECT_GOLDEN
from clnfdiag.cli import main
from clnfdiag.errors import InputError
from clnfdiag.golden import read_case
from clnfdiag.golden import TraceWriter

CASE = PROJECT_GOLDEN / "astronaut_default"


def toy_mean_shift(resp: np.ndarray, dx: np.ndarray, dy: np.ndarray, sigma: float) -> np.ndarray:
    """Exact-kernel KDE mean-shift, (n, w, w) maps -> (n, 2)."""
    n, w, _ = resp.shape
    jj, ii = np.meshgrid(np.arange(w), np.arange(w))
    k = np.exp(-0.5 * ((jj[None] - dx[:, None, None]) ** 2 + (ii[None] - dy[:, None, None]) ** 2)
               / sigma ** 2)
    v = resp * k
    s = v.sum(axis=(1, 2))
    return np.stack([(v * jj).sum(axis=(1, 2)) / s - dx, (v * ii).sum(axis=(1, 2)) / s - dy], 1)


def _toy_trace(tmp_path):
    case = read_case(CASE)
    rec = TraceWriter(case.case_id, case.image_path, case.bbox, case.preset, case.parameters,
                      producer="toy port (exact-kernel mean-shift)")
    for key in case.keys():
        value = case.stage(key)
        if key.endswith("/mean_shifts_ref"):
            pre = key.rsplit("/", 1)[0] + "/"
            p = key.split("/")[0]
            value = toy_mean_shift(case.stage(f"{p}/response"), case.stage(pre + "dxs"),
                                   case.stage(pre + "dys"), float(case.stage(f"{p}/sigma")))
        rec.record(key, value, case.stage(key).dtype)
    return rec.save(tmp_path / "traces")


def test_toy_port_diverges_at_its_mean_shift(tmp_path):
    from click.testing import CliRunner

    out = _toy_trace(tmp_path)
    res = CliRunner().invoke(main, ["compare", str(CASE), "--candidate", str(out.parent), "--mode", "isolated",
                                    "--json", str(tmp_path / "c.json")], catch_exceptions=False)
    assert res.exit_code == 1
    import json

    (case,) = json.loads((tmp_path / "c.json").read_text())["cases"]
    # clnfdiag reproduces OpenFace's mean-shift bit for bit, so the isolated tolerance there
    # is exact and the toy's double-precision sums already show at the first iteration;
    # its real difference, the kernel, shows once the offsets leave the 0.1-px grid.
    assert case["first_divergent_stage"] == "pass0/rigid/iter00/mean_shifts_ref"
    ms = {s["stage"]: s["max_abs"] for s in case["stages"] if s["stage"].endswith("mean_shifts_ref")}
    assert ms["pass0/rigid/iter00/mean_shifts_ref"] < 1e-4     # rounding only: on the grid
    off_grid = [k for k, v in ms.items() if v > 1e-3]         # the kernel itself
    assert off_grid, ms
    d = read_case(CASE).stage(off_grid[0].replace("mean_shifts_ref", "dxs"))
    assert np.any(np.abs(d * 10 - np.round(d * 10)) > 1e-3)


def test_unmodified_trace_through_the_writer_passes(tmp_path):
    case = read_case(CASE)
    rec = TraceWriter(case.case_id, case.image_path, case.bbox, case.preset, case.parameters)
    for key in case.keys():
        rec.record(key, case.stage(key))
    out = rec.save(tmp_path / "t")
    from click.testing import CliRunner

    res = CliRunner().invoke(main, ["compare", str(CASE), "--candidate", str(out), "--mode", "isolated"])
    assert res.exit_code == 0, res.output


def test_writer_rejects_unknown_keys_and_missing_landmarks(tmp_path):
    rec = TraceWriter("x", np.zeros((8, 8), np.uint8), (0, 0, 4, 4))
    with pytest.raises(InputError, match="not a stage key"):
        rec.record("pass0/respones", np.zeros((68, 11, 11)))
    with pytest.raises(InputError, match="final/landmarks"):
        rec.save(tmp_path)
