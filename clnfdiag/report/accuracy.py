"""The accuracy report: per-face table (CSV/JSON), CED plot, annotated points beside the fits, HTML.

Pieces for ``clnfdiag accuracy`` (:mod:`clnfdiag.cli_accuracy`); rows are
:meth:`clnfdiag.benchmark.Row.as_dict` dictionaries plus, for the pictures,
each row's landmarks. Drawn with the report's raster canvas, written whole by
the CLI (:mod:`clnfdiag.outputs`).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

import numpy as np

from ..accuracy import FAILURE_THRESHOLD, NORMALISATIONS, POINT_SETS, ced, failure_rate, nme, nme_name
from .html import _document, data_uri, esc
from .raster import Canvas

#: Columns of the per-face table, in order.
COLUMNS = ("face", "source", "preset", "box", "bbox", "success", "hypothesis", "likelihood",
           *(nme_name(p, n) for p in POINT_SETS for n in NORMALISATIONS), "note")
#: The NME the CED plot, the failure rate and the text table use.
HEADLINE = nme_name("68", "inter-ocular")
#: Colours of the series of a face picture: annotation, then one per fit shown.
_POINT_COLOURS = ("#2ca02c", "#d62728", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b")


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The per-face table as CSV text (``bbox`` as ``x y w h``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        out = dict(r)
        out["bbox"] = "" if r.get("bbox") is None else " ".join(f"{v:.4f}" for v in r["bbox"])
        w.writerow({k: ("" if out.get(k) is None else out.get(k)) for k in COLUMNS})
    return buf.getvalue()


def series_key(r: dict[str, Any]) -> str:
    """A series of the CED: one per (source, preset, box); every golden (candidate) case is one source."""
    source = r["source"].split(":", 1)[0] if r["source"].startswith(("golden:", "candidate:")) else r["source"]
    return f"{source} {r['preset']} {r['box']}"


def summary(rows: Sequence[dict[str, Any]], threshold: float = FAILURE_THRESHOLD) -> list[dict[str, Any]]:
    """Per series: faces, mean headline NME, failure rate at ``threshold``."""
    out = []
    for key in dict.fromkeys(series_key(r) for r in rows):
        errs = [r.get(HEADLINE, float("nan")) for r in rows if series_key(r) == key]
        finite = [e for e in errs if np.isfinite(e)]
        out.append({"series": key, "faces": len(errs),
                    "mean_" + HEADLINE: float(np.mean(finite)) if finite else float("nan"),
                    "failure_rate": failure_rate(errs, threshold), "threshold": threshold})
    return out


def table_json(rows: Sequence[dict[str, Any]], threshold: float) -> str:
    """The JSON document: rows, per-series summary, the definitions used."""
    doc = {"rows": list(rows), "summary": summary(rows, threshold),
           "definitions": {"headline": HEADLINE, "failure_threshold": threshold,
                           "point_sets": {k: list(v) for k, v in POINT_SETS.items()},
                           "normalisations": list(NORMALISATIONS)}}
    return json.dumps(doc, indent=1, default=float) + "\n"


def text_table(rows: Sequence[dict[str, Any]], threshold: float) -> str:
    """What the command prints: one line per row, then one per series."""
    lines = [f"{'face':<14}{'source':<30}{'preset':<13}{'box':<11}{'hyp':>4}"
             + "".join(f"{nme_name(p, n):>22}" for p in POINT_SETS for n in NORMALISATIONS)]
    for r in rows:
        hyp = "" if r.get("hypothesis") is None else str(r["hypothesis"])
        vals = "".join(f"{r.get(nme_name(p, n), float('nan')):>22.4f}" for p in POINT_SETS for n in NORMALISATIONS)
        note = f"  ({r['note']})" if r.get("note") else ""
        lines.append(f"{r['face']:<14}{r['source'][:29]:<30}{r['preset']:<13}{r['box']:<11}{hyp:>4}{vals}{note}")
    for s in summary(rows, threshold):
        lines.append(f"{s['series']}: {s['faces']} face(s), mean {HEADLINE} {s['mean_' + HEADLINE]:.4f}, "
                     f"failure rate {s['failure_rate']:.2f} (NME > {threshold})")
    return "\n".join(lines)


def ced_png(rows: Sequence[dict[str, Any]], threshold: float = FAILURE_THRESHOLD, top: float = 0.3) -> bytes:
    """Cumulative error distribution of the headline NME, one curve per series, failure line dashed."""
    c = Canvas(6.4, 4.0)
    x0, y0, x1, y1 = 0.7, 0.3, 4.4, 3.5  # plot area (inches)
    c.lines([[(x0, y1), (x1, y1)], [(x0, y0), (x0, y1)]])
    levels = np.linspace(0.0, top, 301)
    for i in range(0, 7):
        v = top * i / 6
        x = x0 + (x1 - x0) * v / top
        c.text(x, y1 + 0.18, f"{v:.2f}", size=7, ha="center")
    for f in (0.0, 0.5, 1.0):
        c.text(x0 - 0.08, y1 - (y1 - y0) * f, f"{f:.1f}", size=7, ha="right", va="center")
    c.text((x0 + x1) / 2, y1 + 0.4, f"{HEADLINE} (NME)", size=8, ha="center")
    c.text(x0, y0 - 0.1, "fraction of faces with NME <= x", size=8)
    xt = x0 + (x1 - x0) * threshold / top
    c.lines([[(xt, y0), (xt, y1)]], colour="grey", dash=(3, 3))
    keys = list(dict.fromkeys(series_key(r) for r in rows))
    for i, key in enumerate(keys):
        errs = [r.get(HEADLINE, float("nan")) for r in rows if series_key(r) == key]
        frac = ced(errs, levels)
        colour = _POINT_COLOURS[(i + 1) % len(_POINT_COLOURS)]
        dash = None if i < len(_POINT_COLOURS) - 1 else (4, 2)
        c.polyline(x0 + (x1 - x0) * levels / top, y1 - (y1 - y0) * frac, colour=colour, width=1.3, dash=dash)
        c.lines([[(4.55, 0.4 + 0.2 * i), (4.8, 0.4 + 0.2 * i)]], colour=colour, width=1.3, dash=dash)
        c.text(4.85, 0.4 + 0.2 * i, key[:34], size=6, va="center")
    return c.png()


def face_png(gray: np.ndarray, truth: np.ndarray, fits: Sequence[tuple[str, np.ndarray]],
             margin: float = 0.25) -> bytes:
    """The face cropped around its annotation, annotated points beside each fit's.

    Parameters
    ----------
    gray : (H, W) uint8
    truth : (68, 2) annotated ``(x, y)``
    fits : [(label, (68, 2) landmarks)], drawn in order after the annotation
    margin : crop margin, fraction of the annotation's extent
    """
    lo, hi = truth.min(axis=0), truth.max(axis=0)
    pad = (hi - lo) * margin
    ix0, iy0 = (int(max(0, v)) for v in np.floor(lo - pad))
    ix1 = int(min(gray.shape[1], np.ceil(hi[0] + pad[0])))
    iy1 = int(min(gray.shape[0], np.ceil(hi[1] + pad[1])))
    crop = gray[iy0:iy1, ix0:ix1]
    side = 4.0
    scale = side / max(crop.shape)
    w, h = crop.shape[1] * scale, crop.shape[0] * scale
    c = Canvas(w + 2.2, max(h, 0.3 + 0.2 * (len(fits) + 1)))
    c.image(crop, (0, 0, w, h), smooth=True)
    series = [("annotation", truth)] + list(fits)
    for i, (label, pts) in enumerate(series):
        colour = _POINT_COLOURS[i % len(_POINT_COLOURS)]
        xs = (np.asarray(pts[:, 0], np.float64) - ix0 + 0.5) * scale
        ys = (np.asarray(pts[:, 1], np.float64) - iy0 + 0.5) * scale
        inside = (xs >= 0) & (xs <= w) & (ys >= 0) & (ys <= h)
        c.markers(np.where(inside, xs, np.nan), np.where(inside, ys, np.nan),
                  marker="o" if i == 0 else "+", size=3.0, colour=colour, filled=i == 0)
        c.markers([w + 0.15], [0.2 + 0.2 * i], marker="o" if i == 0 else "+", size=4.0, colour=colour)
        c.text(w + 0.3, 0.2 + 0.2 * i, label[:32], size=6, va="center")
    return c.png()


def plot_annotation(arrays: Any) -> tuple[bytes | None, str | None]:
    """The comparison report's annotation figure: annotated points beside golden and candidate.

    ``arrays`` is the case's :class:`clnfdiag.report.plots.CaseArrays`; without an
    annotation (``annotation.pts`` / ``annotation.ljson`` in the golden's folder) there
    is no figure. The legend gives each side's 68-point inter-ocular NME.
    """
    truth, img = getattr(arrays, "annotation", None), arrays.image
    if truth is None or img is None:
        return None, "no annotation in the golden's folder"
    origin = np.zeros(2) if arrays.image_origin is None else np.asarray(arrays.image_origin, np.float64)
    gray = img if img.ndim == 2 else img[..., 1]  # any channel shows the face; points carry the colour
    full = np.zeros((int(origin[1]) + gray.shape[0], int(origin[0]) + gray.shape[1]), np.uint8)
    full[int(origin[1]):, int(origin[0]):] = gray
    fits = []
    for label, pts in (("golden", arrays.golden_landmarks), ("candidate", arrays.candidate_landmarks)):
        if pts is not None and np.asarray(pts).shape == truth.shape and np.isfinite(pts).all():
            err = nme(np.asarray(pts, np.float64), truth)
            fits.append((f"{label}: NME {err:.4f}", np.asarray(pts, np.float64)))
    return face_png(full, truth, fits), None


def page(rows: Sequence[dict[str, Any]], ced_plot: bytes, faces: Sequence[tuple[str, bytes]],
         threshold: float, source: str = "") -> str:
    """The self-contained HTML page: summary, CED, per-face table and pictures."""
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body_rows = []
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c)
            if isinstance(v, float):
                v = f"{v:.4f}"
            elif c == "bbox" and v is not None:
                v = ", ".join(f"{x:.1f}" for x in v)
            cells.append(f"<td>{esc('' if v is None else v)}</td>")
        body_rows.append("<tr>" + "".join(cells) + "</tr>")
    summ = "".join(f"<li>{esc(s['series'])}: {s['faces']} face(s), mean {esc(HEADLINE)} "
                   f"{s['mean_' + HEADLINE]:.4f}, failure rate {s['failure_rate']:.2f} "
                   f"(NME &gt; {threshold})</li>" for s in summary(rows, threshold))
    pics = "".join(f"<figure><img alt=\"{esc(name)}\" src=\"{data_uri(png)}\"><figcaption>{esc(name)}: "
                   "annotated points (green circles) beside the fits</figcaption></figure>"
                   for name, png in faces)
    body = (f"<h1>Landmark accuracy against annotations</h1><p>{esc(source)}</p><ul>{summ}</ul>"
            f"<h2>Cumulative error distribution</h2><img alt=\"CED\" src=\"{data_uri(ced_plot)}\">"
            f"<h2>Per face</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(body_rows)}</tbody></table>"
            f"<h2>Faces</h2>{pics}")
    return _document("clnfdiag accuracy", body)


__all__ = ["COLUMNS", "HEADLINE", "table_csv", "table_json", "text_table", "summary", "ced_png", "face_png",
           "page", "plot_annotation"]
