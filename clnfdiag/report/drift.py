"""Drift of a tracking run: landmark error per frame against the C++, as a plot and a report page.

One plot per run (:func:`plot_drift`): the largest and the mean Euclidean
landmark error of every frame (log scale; a bit-identical frame sits on the
floor, marked), the frame's tolerance (twice the C++'s own spread, at least
0.01 px) as a shaded band, and the first differing / first beyond-tolerance
frames marked. :func:`write_drift_report` writes the report of a sequence
comparison: ``summary.json`` (the comparator JSON), ``drift.csv`` (one row per
run and frame) and ``index.html`` with the plots embedded, built aside and moved
into place whole.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import staged_folder
from .html import _document, data_uri, esc
from .plots import LOG_FLOOR, _Scale
from .raster import CYCLE, Canvas

#: What a sequence report folder holds (for the refusal message of a foreign folder).
REPORT_WHAT = "a clnfdiag sequence report"
#: Files of a sequence report.
SUMMARY_FILE, DRIFT_CSV, INDEX_FILE = "summary.json", "drift.csv", "index.html"
#: Lowest error drawn (px): bit-identical frames are drawn here.
DRIFT_FLOOR_PX = 1e-6


def is_drift_report(folder: str | Path) -> bool:
    """An empty folder or an earlier sequence report (replaceable whole)."""
    names = {p.name for p in Path(folder).iterdir()}
    if not names:
        return True
    return (SUMMARY_FILE in names and DRIFT_CSV in names
            and read_sequence_summary(Path(folder) / SUMMARY_FILE) is not None)


def read_sequence_summary(path: str | Path) -> dict | None:
    """A saved sequence comparison (``summary.json`` of ``compare <tracking reference> --report``),
    or None when the file is something else (left to the caller to read or refuse)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ok = isinstance(doc, dict) and str(doc.get("format", "")).startswith("clnfdiag-sequence-compare/")
    return doc if ok else None


def _series(run: dict, field: str) -> np.ndarray:
    vals = [f.get(field) for f in run.get("frames", [])]
    return np.array([np.nan if v is None else float(v) for v in vals], np.float64)


def plot_drift(run: dict) -> bytes:
    """PNG of one run's per-frame max and mean landmark error, with its tolerance band.

    Parameters
    ----------
    run : dict
        One entry of the comparator JSON's ``runs`` (``frames`` with ``max_px``,
        ``mean_px``, ``tolerance_px``; ``first_differing_frame``, ``first_beyond_frame``).
    """
    mx, mean, tol = _series(run, "max_px"), _series(run, "mean_px"), _series(run, "tolerance_px")
    n = len(mx)
    width, height = 7.0, 3.0
    left, right, top, bottom = 0.75, 0.15, 0.5, 0.75
    cv = Canvas(width, height)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    finite = np.concatenate([mx[np.isfinite(mx)], tol[np.isfinite(tol) & (tol > 0)]])
    hi = max(float(finite.max()) if finite.size else 1.0, 0.02) * 2
    scale = _Scale(DRIFT_FLOOR_PX, 10 ** math.ceil(math.log10(hi)), True)

    def xs(i):
        return x0 + (np.asarray(i, np.float64) + 0.5) / max(n, 1) * (x1 - x0)

    def ys(v):
        v = np.clip(np.nan_to_num(np.asarray(v, np.float64), nan=DRIFT_FLOOR_PX, posinf=scale.hi),
                    DRIFT_FLOOR_PX, scale.hi)
        return y1 - scale.frac(np.maximum(v, LOG_FLOOR)) * (y1 - y0)

    if n and np.all(np.isfinite(tol)) and np.all(tol > 0):
        xa, xb = xs(-0.5), xs(n - 0.5)
        band = ([(float(xa), float(y1)), (float(xa), float(ys(tol[0])))]
                + [(float(xs(i)), float(ys(t))) for i, t in enumerate(tol)]
                + [(float(xb), float(ys(tol[-1]))), (float(xb), float(y1))])
        cv.polygons([band], fill="#2ca02c", alpha=0.15, over_white=True)
    cv.frames([(x0, y0, x1, y1)])
    for v, label in scale.ticks():
        yv = float(ys(v))
        cv.lines([[(x0 - 0.05, yv), (x0, yv)]])
        cv.text(x0 - 0.08, yv, label, size=7, ha="right", va="center")
    step = max(1, int(math.ceil(n / 15)))
    for i in range(0, n, step):
        cv.lines([[(float(xs(i)), y1), (float(xs(i)), y1 + 0.05)]])
        cv.text(float(xs(i)), y1 + 0.08, str(i), size=7, ha="center", va="top")
    cv.text((x0 + x1) / 2, y1 + 0.3, "frame", size=8, ha="center", va="top")
    cv.text(0.12, (y0 + y1) / 2, "landmark error (px)", size=8, ha="center", va="center", rotation=90)
    for series, colour, label in ((mx, CYCLE[3], "max"), (mean, CYCLE[0], "mean")):
        cv.polyline(list(xs(np.arange(n))), list(ys(series)), colour=colour, width=1.2)
        cv.markers(list(xs(np.arange(n))), list(ys(series)), "o", 3.5, colour)
    for key, colour, dash in (("first_differing_frame", "#7f7f7f", (2, 2)), ("first_beyond_frame", "#d62728", (4, 2))):
        k = run.get(key)
        if k is not None and 0 <= k < n:
            cv.lines([[(float(xs(k)), y0), (float(xs(k)), y1)]], colour=colour, dash=dash)
    title = (f"{run.get('run')} vs {run.get('candidate')}\n{run.get('outcome')}, max "
             f"{_fmt(run.get('max_px'))} px; first differing frame {_dash(run.get('first_differing_frame'))}, "
             f"first beyond tolerance {_dash(run.get('first_beyond_frame'))}")
    cv.text(x0, y0 - 0.08, title, size=8, ha="left", va="bottom")
    cv.text(0.1, height - 0.05, "red: max, blue: mean over landmarks; green: tolerance; dashed: first differing "
            "(grey) / beyond (red) frame; identical frames on the floor", size=6.5, ha="left", va="bottom")
    return cv.png()


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3g}"


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def drift_csv(summary: dict) -> str:
    """One row per run and frame: run, candidate, frame, max_px, mean_px, tolerance_px, identical, beyond."""
    rows = ["run,candidate,frame,max_px,mean_px,tolerance_px,spread_px,identical,beyond"]
    for r in summary.get("runs", []):
        for f in r.get("frames", []):
            rows.append(",".join(str(v) for v in (
                r.get("run"), r.get("candidate"), f.get("frame"), f.get("max_px"), f.get("mean_px"),
                f.get("tolerance_px"), f.get("spread_px"), int(bool(f.get("identical"))),
                int(bool(f.get("beyond"))))))
    return "\n".join(rows) + "\n"


def drift_section(summary: dict) -> str:
    """HTML: a table of the runs (frames, max error, first differing / beyond frame) and each drift plot."""
    head = ("<table><tr><th>run</th><th>candidate</th><th>outcome</th><th>frames</th><th>max px</th>"
            "<th>first differing frame</th><th>first beyond</th><th>first above 0.01 px</th>"
            "<th>frame-0 first diverging stage</th></tr>")
    rows, figs = [], []
    for r in summary.get("runs", []):
        rows.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in (
            r.get("run"), r.get("candidate"), r.get("outcome"), r.get("n_frames"), _fmt(r.get("max_px")),
            _dash(r.get("first_differing_frame")), _dash(r.get("first_beyond_frame")),
            _dash(r.get("first_above_floor_frame")), r.get("first_divergence_stage") or "-")) + "</tr>")
        figs.append(f'<figure><img alt="drift {esc(r.get("run"))}" src="{data_uri(plot_drift(r))}">'
                    f"<figcaption>{esc(r.get('run'))}</figcaption></figure>")
    return "<h2>Drift per frame</h2>" + head + "".join(rows) + "</table>" + "".join(figs)


def write_drift_report(summary: dict, out_dir: str | Path, source: str = "", option: str = "--report") -> Path:
    """Write a sequence comparison's report folder whole (summary.json, drift.csv, index.html)."""
    s = summary.get("summary", {})
    title = (f"clnfdiag sequence report: {s.get('runs', 0)} run(s), {s.get('identical', 0)} bit-identical, "
             f"{s.get('runs', 0) - s.get('passed', 0)} beyond")
    body = (f"<h1>{esc(title)}</h1><p class=\"meta\">From <code>{esc(source)}</code>. Tolerance: "
            f"{esc(s.get('tolerance', ''))}. Files next to this page: <code>summary.json</code>, "
            f"<code>drift.csv</code>.</p>" + drift_section(summary))
    with staged_folder(out_dir, option, is_drift_report, REPORT_WHAT) as build:
        (build / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        (build / DRIFT_CSV).write_text(drift_csv(summary), encoding="utf-8")
        (build / INDEX_FILE).write_text(_document(title, body), encoding="utf-8")
    return Path(out_dir)


__all__ = ["read_sequence_summary", "plot_drift", "drift_csv", "drift_section", "write_drift_report", "is_drift_report", "REPORT_WHAT"]
