"""The report pages (inline CSS/JS, no network).

:func:`render_pages` chooses the layout by size: while the whole report fits in
:data:`PAGE_BUDGET_BYTES`, one self-contained ``index.html`` with the PNGs as
data URIs; beyond, ``index.html`` holds the overview and each comparison gets
its own ``<case>/index.html`` linking the PNGs next to it, so no page grows
with the number of cases but the overview table.
"""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from . import INDEX_FILE
from ..keys import kind_of
from .tables import (BEYOND_NOISE, IDENTICAL, OUTCOME_LABELS, OUTCOMES, WITHIN_NOISE, CaseView, fmt,
                     stage_band, stage_outcome)

#: Columns of the per-landmark table on the page (all of them are in magnitude.csv).
PAGE_COLUMNS: list[tuple[str, str, str]] = [
    # (column of magnitude.csv, header, tooltip)
    ("pass", "pass", "window-size pass"),
    ("landmark", "lm", "landmark index (68-point iBUG)"),
    ("region", "region", "face region"),
    ("visible", "vis", "1 where a patch expert exists in this view"),
    ("peak_golden_shift", "peak G", "golden peak of the post-shift map"),
    ("peak_candidate_shift", "peak C", "candidate peak of the post-shift map"),
    ("peak_ratio_raw", "ratio raw", "candidate/golden peak, raw map"),
    ("peak_ratio_sigma", "ratio \u03a3", "candidate/golden peak, post-Sigma map"),
    ("peak_ratio_shift", "ratio shift", "candidate/golden peak, post-shift map"),
    ("rel_raw", "rel raw", "max |diff| / golden peak, raw map"),
    ("rel_sigma", "rel \u03a3", "max |diff| / golden peak, post-Sigma map"),
    ("rel_shift", "rel shift", "max |diff| / golden peak, post-shift map"),
    ("max_abs_shift", "abs shift", "max |diff|, post-shift map"),
    ("peak_shift_px_shift", "argmax \u0394 px", "distance between the argmax positions, post-shift map"),
    ("correlation_shift", "corr", "Pearson correlation of the post-shift maps"),
    ("within_tolerance", "ok", "all three maps within tolerance for this landmark"),
]

#: Plots of a case: (file stem, heading).
PLOTS = [
    ("landmarks", "Final landmarks and error vectors"),
    ("errors", "Per-landmark error by stage kind"),
    ("peak_ratio", "Peak-magnitude ratio per landmark"),
    ("maps", "Response maps of the worst landmarks"),
    ("convergence", "Convergence"),
    ("annotation", "Annotated points beside golden and candidate"),  # only where an annotation is present
]

#: Rows of the stage table shown per case (the rest is in summary.json).
MAX_STAGE_ROWS = 40
#: Causes per comparison in the "Fix these first" section at the top (all of them on the case's
#: own section and in causes.csv).
TOP_CAUSES = 5

#: Largest single-page report (bytes of index.html with the PNGs embedded); a larger
#: report gets one page per comparison instead (a browser opens a 4 MB page in about a second).
PAGE_BUDGET_BYTES = 4_000_000

#: ``src`` of a plot image: ``(file stem, PNG bytes) -> URL``.
ImageSource = Callable[[str, bytes], str]
#: ``href`` of a comparison from the overview: ``CaseView -> URL``.
CaseLink = Callable[[CaseView], str]

CSS = """
:root { --ok:#1b7f3a; --bad:#b3261e; --unk:#8a6d00; --noise:#1a5fb4; --line:#d8d8d8; --bg:#fafafa; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 18px 40px; color: #1d1d1d; background: #fff; }
h1 { font-size: 22px; margin: 18px 0 6px; }
h2 { font-size: 18px; margin: 28px 0 6px; padding-top: 8px; border-top: 2px solid #333; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.meta { color: #555; font-size: 12px; margin: 0 0 10px; }
.headline { font-size: 17px; font-weight: 600; padding: 8px 12px; border-radius: 6px; margin: 8px 0; }
.headline.pass, .pill.pass { background: #e3f4e8; color: var(--ok); }
.headline.diverged, .pill.diverged, .pill.error { background: #fbe4e2; color: var(--bad); }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px;
        white-space: nowrap; }
.pill.identical { background: #e3f4e8; color: var(--ok); }
.pill.within_noise { background: #e4eefb; color: var(--noise); }
.pill.beyond_noise { background: #fbe4e2; color: var(--bad); }
.band { color: #555; font-size: 11px; margin-left: 4px; }
section.fix { border: 2px solid var(--bad); border-radius: 6px; padding: 4px 12px 10px; margin: 10px 0 16px; }
section.fix.none { border-color: var(--ok); }
section.fix h2 { border-top: 0; margin-top: 4px; padding-top: 0; }
section.fix h3 { margin: 10px 0 4px; }
table.causes td.fault { color: var(--bad); font-weight: 600; }
.effect.ok { color: var(--ok); font-weight: 600; }
.effect.bad { color: var(--bad); font-weight: 600; }
.effect.unknown { color: var(--unk); font-weight: 600; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid var(--line); padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.beyond td { background: #fff1f0; }
#overview td { white-space: normal; }
table.sortable th { cursor: pointer; user-select: none; position: sticky; top: 0; z-index: 1; }
table.sortable th.asc::after { content: " \\25B2"; font-size: 9px; }
table.sortable th.desc::after { content: " \\25BC"; font-size: 9px; }
.tablewrap { max-height: 460px; overflow: auto; border: 1px solid var(--line); display: inline-block;
             max-width: 100%; }
.tablewrap table { border: 0; }
nav { font-size: 12px; margin: 6px 0 10px; }
nav a { margin-right: 10px; }
figure { margin: 8px 0 14px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #444; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 8px 18px;
        align-items: start; }
.note { color: var(--unk); font-size: 12px; }
code { background: var(--bg); padding: 0 3px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav, .noprint { display: none; }
  section.case { break-before: page; }
  .tablewrap { max-height: none; overflow: visible; border: 0; }
  table.sortable th { position: static; cursor: auto; }
  figure { break-inside: avoid; }
  .grid { display: block; }
  a { color: inherit; text-decoration: none; }
}
"""

JS = """
(function () {
  function key(td) {
    var v = td.getAttribute('data-v');
    if (v === null) v = td.textContent;
    if (v === '' || v === '-') return null;
    var f = parseFloat(v);
    return (isNaN(f) || !/^[-+0-9.eE]+$/.test(v.trim())) ? v.toLowerCase() : f;
  }
  function sortBy(th) {
    var table = th.closest('table'), body = table.tBodies[0];
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = !th.classList.contains('asc');
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.classList.remove('asc', 'desc'); });
    th.classList.add(asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[idx]), y = key(b.cells[idx]);
      if (x === null && y === null) return 0;
      if (x === null) return 1;           /* empty cells last either way */
      if (y === null) return -1;
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll('table.sortable th').forEach(function (th) {
    th.addEventListener('click', function () { sortBy(th); });
  });
  window.addEventListener('load', function () {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  });
})();
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


_DATA_URI_HEAD = "data:image/png;base64,"


def data_uri(png: bytes) -> str:
    return _DATA_URI_HEAD + base64.b64encode(png).decode("ascii")


def embedded(stem: str, png: bytes) -> str:
    """ImageSource of the single page: the PNG itself."""
    return data_uri(png)


def beside(stem: str, png: bytes) -> str:
    """ImageSource of a case page: the PNG file next to it."""
    return f"{stem}.png"


def anchor(v: CaseView) -> str:
    """CaseLink of the single page: the comparison's section."""
    return f"#{v.slug}"


def case_page_link(v: CaseView) -> str:
    """CaseLink of the paged layout: the comparison's own page (a failure stays on the overview)."""
    return anchor(v) if v.is_failure else f"{v.slug}/{INDEX_FILE}"


def _cell(value: Any, digits: int = 4) -> str:
    """A numeric table cell with its exact value in data-v (for sorting)."""
    if type(value) is float and math.isfinite(value):  # the common case first
        return f'<td data-v="{value!r}">{value:.{digits}g}</td>'
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-v="">-</td>'
    if isinstance(value, (bool, np.bool_)):
        return f'<td data-v="{int(value)}">{"yes" if value else "no"}</td>'
    if isinstance(value, (int, np.integer)):
        return f'<td data-v="{int(value)}">{int(value)}</td>'
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return f'<td data-v="{v!r}">{fmt(v, digits)}</td>' if math.isfinite(v) else \
            f'<td data-v="{1e308 if v > 0 else -1e308}">{"inf" if v > 0 else "-inf"}</td>'
    return f'<td class="l" data-v="{esc(value)}">{esc(value)}</td>'


def _pill(verdict: str) -> str:
    return f'<span class="pill {esc(verdict)}">{esc(verdict.upper())}</span>'


def outcome_pill(outcome: str, band: str = "") -> str:
    """Badge of an outcome (``identical`` / ``within_noise`` / ``beyond_noise``); ``band``: what
    "within rounding noise" allowed, shown next to it (and as the tooltip)."""
    label = OUTCOME_LABELS.get(outcome, outcome)
    title = f' title="{esc(band)}"' if band else ""
    pill = f'<span class="pill {esc(outcome)}" data-outcome="{esc(outcome)}"{title}>{esc(label.upper())}</span>'
    if band and outcome == WITHIN_NOISE:
        pill += f'<span class="band">({esc(band)})</span>'
    return pill


def _case_band(v: CaseView) -> str:
    """The band of a case's badge: its final-landmark rounding noise, else its landmark tolerance."""
    return v.noise_band_text() or f"final landmarks allowed {fmt(v.landmark_tolerance)} px"


def _outcome_counts(views: list[CaseView]) -> str:
    ok = [v for v in views if not v.is_failure]
    counts = {o: sum(v.outcome == o for v in ok) for o in OUTCOMES}
    return ", ".join(f"{counts[o]} {OUTCOME_LABELS[o]}" for o in OUTCOMES)


def headline(views: list[CaseView]) -> str:
    """The run's verdict in one line, with how many comparisons have each outcome."""
    ok_views = [v for v in views if not v.is_failure]
    n_div = sum(v.verdict != "pass" for v in ok_views)
    n_err = sum(v.is_failure for v in views)
    state = "pass" if (n_div == 0 and n_err == 0) else "diverged"
    head = (f"{'PASS' if state == 'pass' else 'DIVERGED'}: {len(ok_views) - n_div} of {len(ok_views)} "
            f"comparison(s) passed" + (f", {n_err} could not be compared" if n_err else ""))
    if ok_views:
        head += f" ({_outcome_counts(views)})"
    return f'<div class="headline {state}" id="verdict">{esc(head)}</div>'


def _cause_rows(v: CaseView, causes: list[dict], start: int = 1) -> str:
    rows = []
    for rank, c in enumerate(causes, start):
        beyond = c.get("beyond_noise")
        fault = c.get("known_fault")
        tr = '<tr class="beyond">' if beyond else "<tr>"
        rows.append(f'{tr}'
                    f'<td data-v="{rank}">{rank}</td><td class="l"><code>{esc(c.get("stage_kind"))}</code></td>'
                    f'<td class="l"><code>{esc(c.get("first_stage") or "-")}</code></td>'
                    f'{_cell(_num(c.get("landmarks_impact_px")))}{_cell(_num(c.get("mean_shifts_impact_px")))}'
                    f'<td class="l">{"-" if beyond is None else ("yes" if beyond else "no")}</td>'
                    + (f'<td class="l fault">{esc(fault)}</td>' if fault else '<td class="l">-</td>')
                    + "</tr>")
    return "".join(rows)


def _num(x: Any) -> float | None:
    try:
        return None if x is None or isinstance(x, bool) else float(x)
    except (TypeError, ValueError):
        return None


def causes_table(v: CaseView, limit: int | None = None) -> str:
    """The case's ranked causes (all, or the first ``limit``) as a table with their impact figures."""
    causes = v.causes
    shown = causes if limit is None else causes[:limit]
    how = ("every stage of the kind from the first one on" if v.is_isolated else "the first stage alone")
    note = (f'<p class="meta">Landmark impact: the largest final-landmark move when the candidate\'s values of '
            f'{how} replace clnfdiag\'s in a replay of the golden\'s fit; beyond noise: the move exceeds '
            f'the allowed {fmt(v.impact_allowed)} px.'
            + (f" Top {len(shown)} of {len(causes)}; all in <code>causes.csv</code>." if len(shown) < len(causes)
               else "") + "</p>")
    return (f'<table class="sortable causes" data-case="{esc(v.slug)}"><thead><tr><th>rank</th>'
            '<th class="l">stage kind</th><th class="l">first stage</th><th>landmarks impact px</th>'
            '<th>mean-shifts impact px</th><th class="l">beyond noise</th><th class="l">known fault</th>'
            f'</tr></thead><tbody>{_cause_rows(v, shown)}</tbody></table>' + note)


def fix_first(views: list[CaseView], link: CaseLink = anchor, top: int = TOP_CAUSES) -> str:
    """"Fix these first": per comparison with ranked causes, its top causes by replayed impact.

    Empty when no comparison has causes and none diverged."""
    ok = [v for v in views if not v.is_failure]
    with_causes = [v for v in ok if v.causes]
    without = [v for v in ok if not v.causes and v.verdict != "pass"]
    if not with_causes and not without:
        if not ok:
            return ""
        return ('<section class="fix none" id="fix-first"><h2>Fix these first</h2><p>Nothing to fix: no '
                'comparison diverged and none has a ranked cause.</p></section>')
    out = ['<section class="fix" id="fix-first"><h2>Fix these first</h2>',
           '<p class="meta">Stage kinds beyond tolerance, ranked by how far swapping in the candidate\'s values '
           'moves the final landmarks in a replay (largest first); a known fault is the fault of clnfdiag\'s '
           'library (<code>--inject</code>) whose values, computed from the same inputs, the candidate\'s '
           'match.</p>']
    for v in with_causes:
        out.append(f'<h3><a href="{esc(link(v))}">{esc(v.title)}</a> {outcome_pill(v.outcome)}</h3>')
        out.append(causes_table(v, top))
    if without:
        out.append('<p class="note">No causes ranked (the comparison ran without impact replays) for: '
                   + ", ".join(f'<a href="{esc(link(v))}">{esc(v.title)}</a>' for v in without) + ".</p>")
    out.append("</section>")
    return "\n".join(out)


def overview(views: list[CaseView], summary: dict, link: CaseLink = anchor, lead: str = "") -> str:
    """Headline, ``lead`` (the "Fix these first" section) and the table of every comparison."""
    ok_views = [v for v in views if not v.is_failure]
    firsts = [f"<code>{esc(v.first_divergent_stage)}</code> ({esc(v.title)})"
              for v in ok_views if v.first_divergent_stage]
    out = [headline(views)]
    if lead:
        out.append(lead)
    if firsts:
        out.append("<p>First diverging stage: " + "; ".join(firsts[:8])
                   + (f" and {len(firsts) - 8} more" if len(firsts) > 8 else "") + "</p>")
    rows = []
    for v in views:
        if v.is_failure:
            rows.append(f'<tr><td class="l"><a href="{esc(link(v))}">{esc(v.case)}</a></td>'
                        f'<td class="l">{esc(v.mode or "-")}</td><td class="l">{_pill("error")}</td>'
                        f'<td class="l" colspan="6">{esc(v.data.get("kind", "error"))}: {esc(v.data.get("error"))}</td></tr>')
            continue
        cls, phrase = v.landmark_verdict()
        _, sentence = v.landmark_effect()
        ms, _ = v.impact_value("mean_shifts_max_px")
        lm, _ = v.impact_value("landmarks_max_px")
        rows.append(
            f'<tr><td class="l"><a href="{esc(link(v))}">{esc(v.case)}</a></td><td class="l">{esc(v.mode)}</td>'
            f'<td class="l">{_pill(v.verdict)}</td>'
            f'<td class="l" data-v="{OUTCOMES.index(v.outcome)}">{outcome_pill(v.outcome, _case_band(v))}</td>'
            f'<td class="l"><code>{esc(v.first_divergent_stage or "-").replace("/", "/<wbr>")}</code></td>'
            f"{_cell(ms)}{_cell(lm)}{_cell(v.landmark_tolerance)}"
            f'<td class="l"><span class="effect {cls}" title="{esc(html.unescape(sentence))}">{phrase}</span>'
            f'</td></tr>')
    out.append('<table class="sortable" id="overview"><thead><tr><th class="l">case</th><th class="l">mode</th>'
               '<th class="l">verdict</th><th class="l">outcome</th><th class="l">first divergent stage</th>'
               '<th title="replayed (propagated mode: else observed end to end)">mean-shift impact px</th>'
               '<th title="replayed (propagated mode: else observed end to end)">landmark impact px</th>'
               '<th>landmark tol px</th><th class="l">impact</th></tr></thead><tbody>'
               + "".join(rows) + "</tbody></table>")
    worst = summary.get("worst")
    if isinstance(worst, dict) and worst.get("stage"):
        out.append(f'<p class="meta">Worst stage of the run: <code>{esc(worst["stage"])}</code> '
                   f'({esc(worst.get("case"))}, {esc(worst.get("mode"))}): max_abs {fmt(worst.get("max_abs"))}, '
                   f'max_rel {fmt(worst.get("max_rel"))}, {fmt(worst.get("ratio"))}\u00d7 tolerance.</p>')
    return "\n".join(out)


def stage_table(v: CaseView) -> str:
    """Stages beyond noise, then stages within rounding noise (those that differ at all), in execution
    order, with each one's outcome and band; identical stages are counted, not listed."""
    entries = [s for s in v.data.get("stages") or [] if isinstance(s, dict) and "stage" in s]
    beyond = [s for s in entries if stage_outcome(s) == BEYOND_NOISE]
    noisy = [s for s in entries if stage_outcome(s) == WITHIN_NOISE]
    n_same = sum(stage_outcome(s) == IDENTICAL for s in entries)
    shown = (beyond + noisy)[:MAX_STAGE_ROWS]
    head = (f"{len(beyond)} of {len(entries)} stages beyond tolerance" if beyond
            else f"all {len(entries)} compared stages within tolerance")
    head += (f" ({n_same} {OUTCOME_LABELS[IDENTICAL]}, {len(noisy)} {OUTCOME_LABELS[WITHIN_NOISE]}, "
             f"{len(beyond)} {OUTCOME_LABELS[BEYOND_NOISE]})")
    if v.data.get("missing_keys"):
        head += f"; {len(v.data['missing_keys'])} golden key(s) missing from the candidate"
    out = [f"<h3>Stages</h3><p>{head}" + (f" (first {MAX_STAGE_ROWS} shown; all in summary.json)"
                                         if len(beyond) + len(noisy) > MAX_STAGE_ROWS else "") + "</p>"]
    if not shown:
        return "\n".join(out)
    rows = []
    for s in shown:
        worst = ", ".join(str(w) for w in (s.get("worst_landmarks") or [])[:6])
        reach = s.get("reaches_landmarks")
        outcome = stage_outcome(s)
        band = stage_band(s)
        tr = '<tr class="beyond">' if outcome == BEYOND_NOISE else "<tr>"
        rows.append(f'{tr}'
                    f'<td class="l"><code>{esc(s["stage"])}</code></td>'
                    f'<td class="l">{esc(s.get("kind") or kind_of(s["stage"]))}</td>'
                    f'<td class="l" data-v="{OUTCOMES.index(outcome)}">{outcome_pill(outcome, band)}</td>'
                    f'{_cell(s.get("max_abs"))}{_cell(s.get("max_rel"))}{_cell(s.get("ratio"))}'
                    f'{_cell(s.get("atol"))}{_cell(s.get("rtol"))}{_cell(s.get("noise_floor_px"))}'
                    f'{_cell(s.get("n_beyond"))}'
                    f'<td class="l">{"-" if reach is None else ("yes" if reach else "no")}</td>'
                    f'<td class="l">{esc(worst)}</td><td class="l">{esc(s.get("note", ""))}</td></tr>')
    out.append('<div class="tablewrap"><table class="sortable stages"><thead><tr><th class="l">stage</th>'
               '<th class="l">kind</th><th class="l">outcome</th><th>max abs</th><th>max rel</th>'
               '<th>\u00d7 tol</th><th>atol</th><th>rtol</th>'
               '<th title="the stage\'s band in the noise envelope (propagated mode)">envelope band</th>'
               '<th>n beyond</th><th class="l">reaches landmarks</th>'
               '<th class="l">worst landmarks</th><th class="l">note</th></tr></thead><tbody>'
               + "".join(rows) + "</tbody></table></div>")
    return "\n".join(out)


def landmark_table(v: CaseView, mag: pd.DataFrame) -> str:
    """Sortable per-landmark table of one case (a subset of magnitude.csv's columns)."""
    sub = mag[(mag["case"] == v.case) & (mag["mode"] == v.mode)]
    if sub.empty:
        return '<p class="note">No per-landmark response-map data for this case.</p>'
    cols = [c for c in PAGE_COLUMNS if c[0] in sub.columns]
    head = "".join(f'<th class="{"l" if c[0] == "region" else ""}" title="{esc(c[2])}">{esc(c[1])}</th>'
                   for c in cols)
    # Column by column from plain Python values (tolist): a report has hundreds of thousands of cells.
    columns = [[_cell(_plain(x)) for x in sub[c[0]].tolist()] for c in cols]
    beyond = [x is False for x in sub["within_tolerance"].tolist()] if "within_tolerance" in sub.columns \
        else [False] * len(sub)
    body = [f'<tr class="beyond">{"".join(cells)}</tr>' if bad else f'<tr>{"".join(cells)}</tr>'
            for bad, cells in zip(beyond, zip(*columns))]
    return (f'<h3>Per landmark (response maps)</h3><p class="meta noprint">{len(body)} rows; click a column '
            f'header to sort. Every column is in <code>magnitude.csv</code>.</p>'
            f'<div class="tablewrap"><table class="sortable landmarks" data-case="{esc(v.slug)}"><thead><tr>{head}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _plain(x: Any) -> Any:
    """pandas/numpy cell value -> Python value (None for missing)."""
    if type(x) is float:
        return x
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x)
    try:
        if pd.isna(x):
            return None
    except (TypeError, ValueError):
        pass
    return x


def case_section(v: CaseView, plots: dict[str, tuple[bytes | None, str | None]], mag: pd.DataFrame,
                 src: ImageSource = embedded) -> str:
    """One case: verdict, impact, stage table, plots (``src`` says where each image is), per-landmark table."""
    if v.is_failure:
        return (f'<section class="case" id="{esc(v.slug)}"><h2>{esc(v.title)} {_pill("error")}</h2>'
                f'<p>Could not be compared: {esc(v.data.get("kind", "error"))}: {esc(v.data.get("error"))}</p>'
                "</section>")
    cls, sentence = v.landmark_effect()
    ms, ms_src = v.impact_value("mean_shifts_max_px")
    first = v.first_divergent_stage
    if ms is not None:
        ms_text = f"max {fmt(ms)} px" + ("" if ms_src == "impact" else " (observed end to end)")
    else:
        ms_text = "not replayed" if v.is_isolated else "not evaluated"
    parts = [f'<section class="case" id="{esc(v.slug)}"><h2>{esc(v.title)} {_pill(v.verdict)} '
             f'{outcome_pill(v.outcome)}</h2>',
             f'<p><b>Verdict:</b> {esc(v.verdict)}; <b>first diverging stage:</b> '
             f'<code>{esc(first or "none")}</code>'
             + (f'; gate: {esc(v.data["gate"])}' if v.data.get("gate") else "") + "</p>",
             f'<p><b>Outcome:</b> {outcome_pill(v.outcome, _case_band(v))} {esc(v.outcome_text())}</p>',
             f'<p><b>Impact:</b> <span class="effect {cls}">{sentence}</span>; mean-shifts {ms_text}</p>']
    if v.causes:
        parts.append(f"<h3>Fix these first: {len(v.causes)} cause(s), largest landmark impact first</h3>")
        parts.append('<div class="tablewrap">' + causes_table(v) + "</div>")
    if v.data.get("golden_path"):
        parts.append(f'<p class="meta">golden: <code>{esc(v.data["golden_path"])}</code></p>')
    parts.append(stage_table(v))
    figs = []
    for stem, heading in PLOTS:
        png, note = plots.get(stem, (None, "not made"))
        if png is None and stem == "annotation":
            continue  # most goldens have no annotation: no placeholder for it
        if png is None:
            figs.append(f'<figure><figcaption><b>{esc(heading)}</b></figcaption>'
                        f'<p class="note">Not shown: {esc(note)}.</p></figure>')
        else:
            figs.append(f'<figure><img src="{esc(src(stem, png))}" alt="{esc(heading)}, {esc(v.title)}" loading="eager">'
                        f'<figcaption><b>{esc(heading)}</b></figcaption></figure>')
    parts.append('<div class="grid">' + "".join(figs) + "</div>")
    parts.append(landmark_table(v, mag))
    parts.append("</section>")
    return "\n".join(parts)


def _document(title: str, body: str) -> str:
    """A complete HTML page: head with the inline CSS, ``body``, the inline script."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
            "<body data-images-loaded=\"pending\">\n" + body + f"\n<script>{JS}</script>\n</body></html>\n")


def report_title(views: list[CaseView]) -> str:
    """``clnfdiag report: N comparison(s), all pass`` (or how many diverged)."""
    ok = [v for v in views if not v.is_failure]
    n_div = sum(v.verdict != "pass" for v in ok)
    return (f"clnfdiag report: {len(views)} comparison(s), "
            + ("all pass" if n_div == 0 and len(ok) == len(views) else f"{n_div} diverged"))


def render_page(views: list[CaseView], summary: dict, sections: list[str], source: str = "",
                link: CaseLink = anchor) -> str:
    """The overview page: headline, overview table, navigation, then ``sections``."""
    title = report_title(views)
    nav = " ".join(f'<a href="{esc(link(v))}">{esc(v.title)}</a>' for v in views)
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    paged = link is not anchor
    body = (f"<h1>{esc(title)}</h1>"
            f'<p class="meta">Generated {when}'
            + (f" from <code>{esc(source)}</code>" if source else "")
            + ". Files next to this page: <code>summary.json</code> (comparator output), "
              "<code>causes.csv</code>, <code>magnitude.csv</code>, <code>convergence.csv</code>, per-case PNGs"
            + ("; each comparison has its own page (plots, stage and per-landmark tables), linked from "
               "the table below" if paged else "") + ".</p>\n"
            + overview(views, summary, link, lead=fix_first(views, link))
            + f"\n<nav>Cases: {nav}</nav>\n"
            + "\n".join(sections))
    return _document(title, body)


def case_page(v: CaseView, section: str, source: str = "") -> str:
    """A comparison's own page (paged layout), next to its PNGs."""
    back = f'<nav><a href="../{INDEX_FILE}">\u2190 all comparisons</a></nav>'
    body = (f"<h1>clnfdiag report: {esc(v.title)}</h1>"
            + (f'<p class="meta">From <code>{esc(source)}</code>.</p>' if source else "")
            + back + section + back)
    return _document(f"clnfdiag report: {v.title}", body)


def _embedded_size(plots: dict[str, tuple[bytes | None, str | None]]) -> int:
    """Bytes the plots add to a page as data URIs."""
    return sum(len(_DATA_URI_HEAD) + 4 * ((len(png) + 2) // 3) for png, _ in plots.values() if png is not None)


def render_pages(views: list[CaseView], summary: dict, figures: dict[str, dict], mag: pd.DataFrame,
                 source: str = "") -> dict[str, str]:
    """Every page of the report: ``{path relative to the report folder: HTML}``.

    One self-contained ``index.html`` while it fits in :data:`PAGE_BUDGET_BYTES`;
    otherwise ``index.html`` (overview, failures) and ``<case>/index.html`` per comparison.

    Parameters
    ----------
    views : list of CaseView
    summary : dict
        The normalised comparator JSON.
    figures : dict
        ``{slug: {stem: (png or None, note)}}`` of the compared (non-failure) views.
    mag : pandas.DataFrame
        The magnitude table (per-landmark rows).
    source : str
        What was compared, shown on the pages.
    """
    linked = {v.slug: case_section(v, figures.get(v.slug, {}), mag, beside) for v in views}
    size = sum(len(s) for s in linked.values()) + sum(_embedded_size(f) for f in figures.values())
    if size <= PAGE_BUDGET_BYTES:
        sections = [case_section(v, figures.get(v.slug, {}), mag, embedded) for v in views]
        return {INDEX_FILE: render_page(views, summary, sections, source)}
    pages = {INDEX_FILE: render_page(views, summary, [linked[v.slug] for v in views if v.is_failure], source,
                                     case_page_link)}
    for v in views:
        if not v.is_failure:
            pages[f"{v.slug}/{INDEX_FILE}"] = case_page(v, linked[v.slug], source)
    return pages
