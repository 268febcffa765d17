"""The report's account of rounding noise: outcomes, ranked causes, honest headlines, envelope bands.

Every expectation here is read off the hand-built comparator JSON (the contract of
:meth:`clnfdiag.compare.struct.CaseComparison.to_json`), not off an earlier run of the report.
"""
from __future__ import annotations

import copy
import html as _html
import math
import re

import numpy as np
import pandas as pd
import pytest

from clnfdiag.report import CAUSES_FILE, write_report
from clnfdiag.report import plots
from clnfdiag.report.tables import (CAUSE_COLUMNS, CaseView, case_views, convergence_rows, normalise)

N = 68
K = 64


def _stage(key: str, kind: str, family: str, outcome: str, max_abs: float, *, atol: float = 0.0,
           rtol: float = 0.0, noise: float | None = None, reaches: bool | None = None, **lists) -> dict:
    within = outcome != "beyond_noise"
    return {"stage": key, "kind": kind, "family": family, "shape": [N, 2], "max_abs": max_abs, "rms": max_abs,
            "max_rel": max_abs, "ratio": 0.5 if within else 7.0, "atol": atol, "rtol": rtol,
            "within_tolerance": within, "reaches_landmarks": reaches, "worst_landmarks": [] if within else [3, 1],
            "n_beyond": 0 if within else 2, "outcome": outcome, "noise_floor_px": noise, **lists}


def _band(seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(v) for v in rng.uniform(1e-4, 5e-3, N)]


CAUSES = [  # sorted by landmark impact, as the comparator writes them
    {"stage_kind": "response_sigma", "first_stage": "pass0/response_sigma", "landmarks_impact_px": 6.365472793579102,
     "mean_shifts_impact_px": 9.187689781188965, "known_fault": "skip-sigma", "beyond_noise": True},
    {"stage_kind": "response", "first_stage": "pass0/response", "landmarks_impact_px": 5.25,
     "mean_shifts_impact_px": 8.5, "known_fault": None, "beyond_noise": True},
    {"stage_kind": "area_of_interest", "first_stage": "pass1/area_of_interest", "landmarks_impact_px": 3.125,
     "mean_shifts_impact_px": 3.484662771224976, "known_fault": None, "beyond_noise": True},
    {"stage_kind": "mean_shifts_ref", "first_stage": "pass0/rigid/iter00/mean_shifts_ref",
     "landmarks_impact_px": 0.7424135208129883, "mean_shifts_impact_px": 9.1, "known_fault": None,
     "beyond_noise": True},
    {"stage_kind": "dxs", "first_stage": "pass0/rigid/iter01/dxs", "landmarks_impact_px": 0.2972534596920013,
     "mean_shifts_impact_px": 1.1115, "known_fault": None, "beyond_noise": True},
    {"stage_kind": "sim_img_to_ref", "first_stage": "pass1/sim_img_to_ref", "landmarks_impact_px": 0.0785,
     "mean_shifts_impact_px": 0.0, "known_fault": None, "beyond_noise": False},
    {"stage_kind": "likelihood", "first_stage": "final/likelihood", "landmarks_impact_px": None,
     "mean_shifts_impact_px": None, "known_fault": None, "beyond_noise": None},
]


def _convergence(bands: bool) -> list[dict]:
    rows = []
    for phase in ("rigid", "nonrigid"):
        for it in range(4):
            rows.append({"pass": 0, "phase": phase, "iteration": it,
                         "shape_change_norm_golden": None if it == 0 else 10.0 / (it + 1),
                         "shape_change_norm_candidate": None if it == 0 else 11.0 / (it + 1),
                         "mean_shift_rms_diff": 0.3 / (it + 1), "landmark_rms_diff": 0.0 if it == 0 else 0.2 / it,
                         "landmark_band_px": (None if it == 0 else 1e-4 * it) if bands else None,
                         "mean_shift_band_px": 2e-5 * (it + 1) if bands else None})
    return rows


def propagated_beyond() -> dict:
    """Propagated, beyond noise, with causes, an envelope and per-iteration bands."""
    err = [0.5 + 0.01 * i for i in range(N)]
    return {
        "case": "einstein_default", "mode": "propagated", "gate": "stages", "verdict": "diverged",
        "first_divergent_stage": "pass0/response_sigma",
        "impact": {"mean_shifts_max_px": 9.187689781188965, "landmarks_max_px": 6.365472793579102,
                   "noise_floor_px": 0.0991},
        "observed": {"mean_shifts_max_px": 9.18, "landmarks_max_px": 11.36},
        "landmark_tolerance_px": 0.0991, "noise_floor_px": 0.0991, "noise_floor_source": f"envelope (K={K})",
        "cpp_floor_px": 0.0153, "landmark_band_px": _band(1), "outcome": "beyond_noise", "causes": CAUSES,
        "missing_keys": [], "extra_keys": [], "n_extra_keys": 0, "wall_time_s": 1.0,
        "stages": [
            _stage("pass0/response_sigma", "response_sigma", "map", "beyond_noise", 60.4, rtol=1e-5, noise=0.0,
                   reaches=True),
            _stage("pass0/rigid/iter00/mean_shifts", "mean_shifts", "points", "within_noise", 3e-6, atol=4e-6,
                   noise=3.5e-6),
            _stage("final/landmarks", "landmarks", "points", "beyond_noise", max(err), atol=0.0991, noise=0.0991,
                   error_px=err),
        ],
        "convergence": _convergence(bands=True),
    }


def propagated_within() -> dict:
    """Propagated, within rounding noise: one stage differs within its envelope band."""
    return {
        "case": "takeo_default", "mode": "propagated", "gate": "stages", "verdict": "pass",
        "first_divergent_stage": None, "impact": None,
        "observed": {"mean_shifts_max_px": 2.5e-6, "landmarks_max_px": 0.0004},
        "landmark_tolerance_px": 0.01634, "noise_floor_px": 0.00817, "noise_floor_source": f"envelope (K={K})",
        "cpp_floor_px": 0.0021, "landmark_band_px": _band(2), "outcome": "within_noise", "causes": [],
        "stages": [
            _stage("pass0/rigid/iter00/mean_shifts", "mean_shifts", "points", "within_noise", 2.5e-6, atol=4e-6,
                   noise=3.75e-6),
            _stage("final/landmarks", "landmarks", "points", "within_noise", 0.0004, atol=0.01634, noise=0.00817),
            _stage("pass0/response", "response", "map", "identical", 0.0, rtol=1e-5),
        ],
        "convergence": _convergence(bands=True),
    }


def isolated_unreplayed() -> dict:
    """Isolated, diverged, no impact replay; the trace's own final landmarks happen to equal the golden's."""
    return {
        "case": "astronaut_default", "mode": "isolated", "gate": "stages", "verdict": "diverged",
        "first_divergent_stage": "pass0/response_sigma", "impact": None,
        "observed": {"mean_shifts_max_px": 0.0, "landmarks_max_px": 0.0},
        "landmark_tolerance_px": 0.01, "noise_floor_px": 0.000315, "noise_floor_source": "golden/CPP_FLOOR.json",
        "cpp_floor_px": 0.000315, "landmark_band_px": [], "outcome": "beyond_noise", "causes": [],
        "stages": [
            _stage("pass0/response_sigma", "response_sigma", "map", "beyond_noise", 143.0, rtol=1e-5),
            _stage("final/landmarks", "landmarks", "points", "identical", 0.0, atol=0.01, error_px=[0.0] * N),
        ],
        "convergence": _convergence(bands=False),
    }


def isolated_identical() -> dict:
    return {
        "case": "takeo_wild", "mode": "isolated", "gate": "stages", "verdict": "pass",
        "first_divergent_stage": None, "impact": None, "observed": {"landmarks_max_px": 0.0},
        "landmark_tolerance_px": 0.01, "noise_floor_px": None, "noise_floor_source": None, "cpp_floor_px": None,
        "landmark_band_px": [], "outcome": "identical", "causes": [],
        "stages": [_stage("pass0/response", "response", "map", "identical", 0.0, rtol=1e-5),
                   _stage("final/landmarks", "landmarks", "points", "identical", 0.0, atol=0.01)],
        "convergence": [],
    }


def _run(cases: list[dict]) -> dict:
    return {"format": "clnfdiag-compare/1", "cases": cases, "errors": []}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    cases = [isolated_unreplayed(), propagated_beyond(), propagated_within(), isolated_identical()]
    out = write_report(_run(copy.deepcopy(cases)), tmp_path_factory.mktemp("noise") / "r")
    return {"out": out, "cases": cases, "page": (out / "index.html").read_text()}


def _section(page: str, case: str, mode: str) -> str:
    m = re.search(rf'<section class="case" id="\d+_{case}_{mode}">(.*?)</section>', page, re.S)
    assert m, f"no section for {case} {mode}"
    return m.group(1)


def _fix_section(page: str) -> str:
    m = re.search(r'<section class="fix" id="fix-first">(.*?)</section>', page, re.S)
    assert m, "no 'Fix these first' section"
    return m.group(1)


def _overview_row(page: str, case: str, mode: str) -> str:
    table = re.search(r'<table class="sortable" id="overview">(.*?)</table>', page, re.S).group(1)
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
        if f">{case}</a>" in row and f">{mode}</td>" in row:
            return row
    raise AssertionError(f"no overview row for {case} {mode}")


# --------------------------------------------------------------------------- "Fix these first"

def test_fix_these_first_leads_the_page(report):
    page = report["page"]
    body = page[page.index("<body"):]
    fix = body.index('id="fix-first"')
    assert body.index("<h1>") < body.index('id="verdict"') < fix < body.index('id="overview"')
    # Nothing else (no other section, heading or table) between the title/summary and the section.
    between = body[body.index('id="verdict"'):body.index('<section class="fix" id="fix-first"')]
    assert "<h2" not in between and "<table" not in between and "<section" not in between
    assert "<h2>Fix these first</h2>" in _fix_section(page)


def test_fix_these_first_has_the_top_causes_with_their_numbers(report):
    fix = _fix_section(report["page"])
    beyond = propagated_beyond()
    # Only comparisons with causes are listed, each by case and mode.
    assert f"{beyond['case']} ({beyond['mode']})" in fix
    assert "astronaut_default (isolated)" not in fix.split("No causes ranked")[0]
    table = re.search(r'<table class="sortable causes"[^>]*>(.*?)</table>', fix, re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], re.S)
    top = beyond["causes"][:5]
    assert len(rows) == len(top)
    for rank, (row, cause) in enumerate(zip(rows, top), 1):
        assert f'<td data-v="{rank}">{rank}</td>' in row
        assert f"<code>{cause['stage_kind']}</code>" in row and f"<code>{cause['first_stage']}</code>" in row
        assert f'data-v="{cause["landmarks_impact_px"]!r}"' in row
        assert f'data-v="{cause["mean_shifts_impact_px"]!r}"' in row
        if cause["known_fault"]:
            assert f">{cause['known_fault']}</td>" in row
    # Rows are in the JSON's order (largest landmark impact first).
    at = [fix.index(f"<code>{c['first_stage']}</code>") for c in top]
    assert at == sorted(at)
    # The sixth cause is left to the case section and causes.csv, and the section says so.
    assert f"<code>{CAUSES[5]['first_stage']}</code>" not in fix
    assert f"Top 5 of {len(CAUSES)}" in fix and "causes.csv" in fix
    # A diverged comparison without causes is named as such.
    assert "No causes ranked" in fix and "astronaut_default (isolated)" in fix.split("No causes ranked")[1]


def test_case_section_lists_every_cause(report):
    sec = _section(report["page"], "einstein_default", "propagated")
    assert f"{len(CAUSES)} cause(s)" in sec
    for c in CAUSES:
        assert f"<code>{c['first_stage']}</code>" in sec
    unknown = CAUSES[6]
    row = re.search(rf"<tr[^>]*>((?:(?!</tr>).)*<code>{re.escape(unknown['first_stage'])}</code>.*?)</tr>",
                    sec, re.S).group(1)
    assert row.count('<td data-v="">-</td>') == 2  # impacts not replayed
    assert "skip-sigma" in sec


def test_causes_csv(report):
    df = pd.read_csv(report["out"] / CAUSES_FILE, keep_default_na=False)
    assert list(df.columns) == list(CAUSE_COLUMNS)
    assert len(df) == len(CAUSES)  # only the propagated case has causes
    assert set(df["case"]) == {"einstein_default"} and set(df["mode"]) == {"propagated"}
    assert list(df["rank"]) == list(range(1, len(CAUSES) + 1))
    for (_, row), cause in zip(df.iterrows(), CAUSES):
        assert row["stage_kind"] == cause["stage_kind"] and row["first_stage"] == cause["first_stage"]
        for name in ("landmarks_impact_px", "mean_shifts_impact_px"):
            if cause[name] is None:
                assert row[name] == ""
            else:
                assert float(row[name]) == cause[name]
        assert row["known_fault"] == (cause["known_fault"] or "")
        assert row["beyond_noise"] == ("" if cause["beyond_noise"] is None else str(cause["beyond_noise"]))


def test_no_causes_anywhere_gives_an_empty_csv_and_a_short_section(tmp_path):
    out = write_report(_run([isolated_identical()]), tmp_path / "r")
    df = pd.read_csv(out / CAUSES_FILE)
    assert list(df.columns) == list(CAUSE_COLUMNS) and df.empty
    page = (out / "index.html").read_text()
    assert "Nothing to fix" in page and '<section class="fix"' not in page


# --------------------------------------------------------------------------- outcomes

def test_three_outcomes_in_the_case_table(report):
    page = report["page"]
    expect = {("astronaut_default", "isolated"): ("beyond_noise", "BEYOND NOISE"),
              ("einstein_default", "propagated"): ("beyond_noise", "BEYOND NOISE"),
              ("takeo_default", "propagated"): ("within_noise", "WITHIN ROUNDING NOISE"),
              ("takeo_wild", "isolated"): ("identical", "BIT-IDENTICAL")}
    for (case, mode), (outcome, label) in expect.items():
        row = _overview_row(page, case, mode)
        assert f'<span class="pill {outcome}" data-outcome="{outcome}"' in row and f">{label}</span>" in row
    # Within rounding noise shows its band: the case's noise floor, its source and the C++ floor.
    within = propagated_within()
    row = _overview_row(page, within["case"], within["mode"])
    band = re.search(r'<span class="band">\((.*?)\)</span>', row).group(1)
    assert f"{within['noise_floor_px']:.3g} px" in band and within["noise_floor_source"] in band
    assert f"C++ floor {within['cpp_floor_px']:.3g} px" in band
    assert "(1 bit-identical, 1 within rounding noise, 2 beyond noise)" in page  # the headline's counts


def test_three_outcomes_in_the_stage_tables(report):
    page = report["page"]
    within = propagated_within()
    sec = _section(page, within["case"], within["mode"])
    assert '<span class="pill within_noise"' in sec.split("<h2>")[1].split("</h2>")[0]  # case badge
    stages = re.search(r'<table class="sortable stages">(.*?)</table>', sec, re.S).group(1)
    ms = within["stages"][0]
    row = re.search(rf"<tr>(<td class=\"l\"><code>{re.escape(ms['stage'])}</code>.*?)</tr>", stages, re.S).group(1)
    assert "WITHIN ROUNDING NOISE" in row
    assert f"envelope band {ms['noise_floor_px']:.3g} px" in row  # the stage's envelope band
    assert "(1 bit-identical, 2 within rounding noise, 0 beyond noise)" in sec
    # An isolated stage beyond noise: its band is the allowed atol/rtol (no envelope band).
    iso = isolated_unreplayed()
    sec = _section(page, iso["case"], iso["mode"])
    st = iso["stages"][0]
    row = re.search(rf'<tr class="beyond">(<td class="l"><code>{re.escape(st["stage"])}</code>.*?)</tr>', sec,
                    re.S).group(1)
    assert "BEYOND NOISE" in row and f"atol 0, rtol {st['rtol']:.3g}" in _html.unescape(row)
    # The case line names the case's band and its source (a floor file by its last parts).
    assert "rounding noise 0.000315 px (golden/CPP_FLOOR.json)" in sec


def test_outcome_of_an_older_json_is_derived():
    old = isolated_unreplayed()
    for key in ("outcome", "noise_floor_px", "noise_floor_source", "cpp_floor_px", "landmark_band_px", "causes"):
        old.pop(key)
    for s in old["stages"]:
        s.pop("outcome")
        s.pop("noise_floor_px")
    v = CaseView(old)
    assert v.outcome == "beyond_noise" and v.causes == [] and v.landmark_band is None
    same = isolated_identical()
    same.pop("outcome")
    for s in same["stages"]:
        s.pop("outcome")
    assert CaseView(same).outcome == "identical"
    noisy = propagated_within()
    noisy.pop("outcome")
    for s in noisy["stages"]:
        s.pop("outcome")
    assert CaseView(noisy).outcome == "within_noise"


def test_older_json_renders(tmp_path):
    cases = [propagated_beyond(), isolated_unreplayed()]
    for c in cases:
        for key in ("outcome", "noise_floor_px", "noise_floor_source", "cpp_floor_px", "landmark_band_px",
                    "causes"):
            c.pop(key)
        for s in c["stages"]:
            s.pop("outcome")
            s.pop("noise_floor_px")
        for r in c["convergence"]:
            r.pop("landmark_band_px")
            r.pop("mean_shift_band_px")
    out = write_report(_run(cases), tmp_path / "r")
    page = (out / "index.html").read_text()
    assert page.count("BEYOND NOISE") >= 2
    assert pd.read_csv(out / CAUSES_FILE).empty
    assert (out / "01_astronaut_default_isolated" / "errors.png").is_file()


# --------------------------------------------------------------------------- honest headlines

def test_isolated_without_impact_says_not_replayed(report):
    page = report["page"]
    iso = isolated_unreplayed()
    assert iso["observed"]["landmarks_max_px"] == 0.0  # what an observed-based headline would call unaffected
    sec = _section(page, iso["case"], iso["mode"])
    assert "landmark impact not replayed" in sec
    assert "landmarks unaffected" not in sec and "landmarks affected" not in sec
    row = _overview_row(page, iso["case"], iso["mode"])
    assert ">landmark impact not replayed</span>" in row
    # The impact columns do not fall back on the trace's own observations in isolated mode.
    assert row.count('<td data-v="">-</td>') == 2


def test_isolated_observed_error_is_never_a_headline():
    case = isolated_unreplayed()
    case["observed"]["landmarks_max_px"] = 5.0  # would have read "landmarks affected"
    cls, sentence = CaseView(case).landmark_effect()
    assert cls == "unknown" and sentence.startswith("landmark impact not replayed")
    assert CaseView(case).impact_value("landmarks_max_px") == (None, "")


def test_isolated_impact_is_judged_against_its_noise_floor():
    case = isolated_unreplayed()
    # Beyond the 0.01 px landmark tolerance but within the replay's allowed move: unaffected.
    case["impact"] = {"mean_shifts_max_px": 0.2, "landmarks_max_px": 0.03, "noise_floor_px": 0.05}
    cls, sentence = CaseView(case).landmark_effect()
    assert cls == "ok" and sentence.startswith("landmarks unaffected")
    assert "0.03 px" in sentence and "allowed 0.05 px" in sentence
    # The comparator's own judgement of the first divergent stage wins.
    case["stages"][0]["reaches_landmarks"] = True
    cls, sentence = CaseView(case).landmark_effect()
    assert cls == "bad" and sentence.startswith("landmarks affected")
    # No noise_floor_px in the impact (older JSON): the landmark tolerance.
    case["stages"][0]["reaches_landmarks"] = None
    case["impact"] = {"mean_shifts_max_px": 0.2, "landmarks_max_px": 0.03}
    cls, sentence = CaseView(case).landmark_effect()
    assert cls == "bad" and "allowed 0.01 px" in sentence


def test_isolated_identical_is_unaffected(report):
    sec = _section(report["page"], "takeo_wild", "isolated")
    assert "landmarks unaffected" in sec and "bit-identical" in sec


def test_propagated_observed_error_counts(report):
    beyond = propagated_beyond()
    sec = _section(report["page"], beyond["case"], beyond["mode"])
    assert "landmarks affected" in sec and "observed end to end" in sec
    # The replayed impact within its allowed move does not hide an observed final error beyond tolerance.
    case = propagated_beyond()
    case["impact"]["landmarks_max_px"] = 0.001
    case["stages"][0]["reaches_landmarks"] = False
    cls, sentence = CaseView(case).landmark_effect()
    obs = case["observed"]["landmarks_max_px"]
    assert cls == "bad" and sentence.startswith(f"landmarks affected: final error max {obs:.3g} px")
    assert "replayed impact of pass0/response_sigma moves them 0.001 px &le;" in sentence


# --------------------------------------------------------------------------- envelope bands on the plots

class _Spy:
    """Records the polygons and texts drawn on every Canvas."""

    def __init__(self, monkeypatch):
        self.polygons: list[tuple[list, object, float]] = []
        self.texts: list[str] = []
        real_polygons, real_text = plots.Canvas.polygons, plots.Canvas.text

        def polygons(canvas, polys, fill=None, alpha=1.0, **kw):
            polys = [list(p) for p in polys]
            self.polygons.append((polys, fill, alpha))
            return real_polygons(canvas, polys, fill, alpha, **kw)

        def text(canvas, x, y, s, *a, **kw):
            self.texts.append(s)
            return real_text(canvas, x, y, s, *a, **kw)

        monkeypatch.setattr(plots.Canvas, "polygons", polygons)
        monkeypatch.setattr(plots.Canvas, "text", text)

    def filled(self, colour: str) -> list[list]:
        return [p for polys, fill, _ in self.polygons if fill == colour for p in polys]


def test_landmark_band_series_is_the_json_band():
    case = propagated_beyond()
    band, label = plots.landmark_band_series(CaseView(case))
    np.testing.assert_array_equal(band, np.array(case["landmark_band_px"]))
    assert label == f"rounding noise (envelope K={K})"
    assert plots.landmark_band_series(CaseView(isolated_unreplayed())) is None  # no envelope: no band


def test_error_plot_draws_the_landmark_band(monkeypatch):
    case = propagated_beyond()
    band = np.array(case["landmark_band_px"])
    spy = _Spy(monkeypatch)
    png, note = plots.plot_errors(CaseView(case))
    assert png is not None and note is None
    rects = spy.filled(plots.NOISE_COLOUR)
    assert len(rects) == N  # one per landmark (every band > 0 here)
    tops = np.array([min(y for _, y in r) for r in rects])
    bottoms = np.array([max(y for _, y in r) for r in rects])
    assert np.allclose(bottoms, bottoms[0]) and (tops < bottoms).all()
    # Higher band, higher top (smaller y): the same order as the JSON's band.
    order = np.argsort(band)
    assert (np.diff(tops[order]) <= 1e-9).all()
    # Each rectangle sits over its landmark, left to right.
    lefts = np.array([min(x for x, _ in r) for r in rects])
    assert (np.diff(lefts) > 0).all()
    assert any(f"grey = rounding noise (envelope K={K})" in t for t in spy.texts)


def test_error_plot_shows_the_band_even_where_the_final_error_is_zero(monkeypatch):
    case = propagated_within()  # no per-landmark error lists at all
    spy = _Spy(monkeypatch)
    png, _ = plots.plot_errors(CaseView(case))
    assert png is not None
    assert len(spy.filled(plots.NOISE_COLOUR)) == N
    assert any(t.startswith("landmarks: per-landmark error not in the JSON") for t in spy.texts)


def test_error_plot_without_band_draws_none(monkeypatch):
    spy = _Spy(monkeypatch)
    png, _ = plots.plot_errors(CaseView(isolated_unreplayed()))
    assert png is None or not spy.filled(plots.NOISE_COLOUR)
    assert not any("rounding noise" in t for t in spy.texts)


def test_convergence_series_carries_the_bands():
    case = propagated_beyond()
    v = case_views(normalise(_run([case])))[0]
    ser = plots.convergence_series(convergence_rows(v))
    for name in ("landmark_band_px", "mean_shift_band_px", "landmark_rms_diff", "mean_shift_rms_diff"):
        expected = [math.nan if r[name] is None else r[name] for r in case["convergence"]]
        np.testing.assert_array_equal(ser[name], np.array(expected))


def test_convergence_plot_draws_the_bands(monkeypatch):
    case = propagated_beyond()
    v = case_views(normalise(_run([case])))[0]
    spy = _Spy(monkeypatch)
    png, note = plots.plot_convergence(v, convergence_rows(v))
    assert png is not None and note is None
    for field, band_field, colour, *_ in plots.DIFF_SERIES:
        bands = [r[band_field] for r in case["convergence"]]
        n_pos = sum(b is not None and b > 0 for b in bands)
        drawn = [(polys, alpha) for polys, fill, alpha in spy.polygons if fill == colour]
        assert len(drawn) == 1 and len(drawn[0][0]) == n_pos and drawn[0][1] == plots.BAND_ALPHA
        rects = drawn[0][0]
        lefts = np.array([min(x for x, _ in r) for r in rects])
        tops = np.array([min(y for _, y in r) for r in rects])
        assert (np.diff(lefts) > 0).all()
        # Within each phase the bands grow with the iteration here: their tops rise (y shrinks).
        pos = [b for b in bands if b is not None and b > 0]
        for i in range(1, len(pos)):
            if pos[i] > pos[i - 1]:
                assert tops[i] < tops[i - 1]
    assert any(f"shaded = rounding noise (envelope K={K})" in t for t in spy.texts)
    assert any(t.startswith("difference from golden") for t in spy.texts)


def test_convergence_plot_without_bands_draws_none(monkeypatch):
    case = isolated_unreplayed()
    v = case_views(normalise(_run([case])))[0]
    spy = _Spy(monkeypatch)
    png, _ = plots.plot_convergence(v, convergence_rows(v))
    assert png is not None
    assert not any(fill in (c for _, _, c, *_ in plots.DIFF_SERIES) for _, fill, _ in spy.polygons)


def test_convergence_csv_has_the_bands(report):
    conv = pd.read_csv(report["out"] / "convergence.csv")
    sub = conv[(conv["case"] == "einstein_default") & (conv["mode"] == "propagated")]
    expected = [np.nan if r["landmark_band_px"] is None else r["landmark_band_px"]
                for r in propagated_beyond()["convergence"]]
    np.testing.assert_array_equal(sub["landmark_band_px"].to_numpy(), np.array(expected))
    assert "mean_shift_band_px" in conv.columns
