"""HTML/CSV/PNG report of a comparison run.

:func:`write_report` takes the comparator's results (CaseComparison objects or
the saved JSON), turns objects into their JSON first, and builds everything
from that JSON: the JSON is the single source of truth, so
``clnfdiag report summary.json`` rebuilds the same tables without re-running.

Output folder::

    summary.json         the comparator JSON ({"cases": [...], "summary": {...}})
    magnitude.csv        one row per (case, mode, pass, landmark): response-map magnitudes
    convergence.csv      one row per (case, mode, pass, phase, iteration)
    <case>/*.png         the plots of each case
    report_arrays.npz    arrays behind the image and map plots (for rebuilds)
    index.html           one self-contained page (PNGs embedded, inline CSS/JS)
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError

# matplotlib and pandas are imported on first use (inside the functions), so that registering
# the ``report`` command does not slow down every other ``clnfdiag`` command.

#: File next to summary.json holding the arrays of the image and map plots.
ARRAYS_FILE = "report_arrays.npz"
SUMMARY_FILE = "summary.json"
#: Largest number of processes drawing plots.
MAX_WORKERS = 4


def default_reports_dir() -> Path:
    """``reports/`` of the repository checkout (else of the current directory)."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "reports").is_dir() and (repo / "pyproject.toml").is_file():
        return repo / "reports"
    return Path.cwd() / "reports"


def default_out_dir(name: str | None = None) -> Path:
    """A fresh ``reports/<name or timestamp>`` folder path (not created)."""
    base = default_reports_dir() / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    out, i = base, 1
    while out.exists():
        out = base.with_name(f"{base.name}-{i}")
        i += 1
    return out


def write_report(comparisons: Any, out_dir: str | Path | None = None, golden_cases: Any = None,
                 candidate_maps: Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
                 arrays_file: str | Path | None = None, source: str = "") -> Path:
    """Write the report of a comparison run.

    Parameters
    ----------
    comparisons : list or dict
        CaseComparison (and CaseFailure) objects, or the comparator JSON
        ``{"cases": [...], "summary": {...}}`` (or its list of cases).
    out_dir : path, optional
        Output folder (created); default ``reports/<timestamp>`` of the repository.
    golden_cases : list or dict of GoldenCase, optional
        The golden cases (by case id, or a list): image and golden maps of the
        landmark and response-map plots.
    candidate_maps : dict, optional
        ``{case id: {stage key: array}}`` (or keyed by ``(case, mode)``): the
        candidate stages of those plots.
    arrays_file : path, optional
        A ``report_arrays.npz`` of an earlier report, used for the cases that
        ``golden_cases`` / ``candidate_maps`` do not cover.
    source : str, optional
        Where the comparisons come from, shown on the page.

    Returns
    -------
    Path
        The output folder (holding ``index.html``).
    """
    from . import html as _html
    from . import plots as _plots
    from .tables import case_views, convergence_table, dump_json, magnitude_table, normalise

    summary = normalise(comparisons)
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the report folder ({exc.strerror})", out) from None
    views = case_views(summary)

    dump_json(summary, out / SUMMARY_FILE)
    mag = magnitude_table(views)
    mag.to_csv(out / "magnitude.csv", index=False)
    convergence_table(views).to_csv(out / "convergence.csv", index=False)

    saved = _load_arrays(arrays_file)
    store: dict[str, np.ndarray] = {}
    jobs = []
    for v in views:
        if v.is_failure:
            continue
        golden = _plots._lookup(golden_cases, v)
        candidate = _plots._lookup(candidate_maps, v)
        if golden is not None or candidate is not None:
            arrays = _plots.gather_arrays(v, golden, candidate)
        elif saved is not None and any(k.startswith(v.slug + "/") for k in saved):
            arrays = _plots.CaseArrays.load_from(saved, v.slug)
        else:
            arrays = _plots.golden_only_arrays(v)
        arrays.save_into(store, v.slug)
        jobs.append((v, arrays))
    figures = dict(zip((v.slug for v, _ in jobs), _render_all(jobs)))

    sections = []
    for v in views:
        if v.is_failure:
            sections.append(_html.case_section(v, {}, mag))
            continue
        figs = figures[v.slug]
        case_dir = out / v.slug
        case_dir.mkdir(exist_ok=True)
        for stem, (png, _) in figs.items():
            if png is not None:
                (case_dir / f"{stem}.png").write_bytes(png)
        sections.append(_html.case_section(v, figs, mag))
    if store:
        np.savez_compressed(out / ARRAYS_FILE, **store)
    page = _html.render_page(views, summary, sections, source=source)
    (out / "index.html").write_text(page, encoding="utf-8")
    return out


def _render_case(view: Any, arrays: Any) -> dict[str, tuple[bytes | None, str | None]]:
    """Every plot of one case: ``{stem: (png or None, note)}``."""
    from . import plots as _plots
    from .tables import convergence_rows

    return {
        "landmarks": _plots.plot_landmarks(view, arrays),
        "errors": _plots.plot_errors(view),
        "peak_ratio": _plots.plot_peak_ratios(view),
        "maps": _plots.plot_maps(view, arrays),
        "convergence": _plots.plot_convergence(view, convergence_rows(view)),
    }


def _render_job(job: tuple) -> dict[str, tuple[bytes | None, str | None]]:
    return _render_case(*job)


def _render_all(jobs: list[tuple]) -> list[dict[str, tuple[bytes | None, str | None]]]:
    """Plots of every case; on a multi-core machine in forked worker processes (matplotlib is
    single-threaded and plots dominate the build time), else here."""
    workers = min(len(jobs), os.cpu_count() or 1, MAX_WORKERS)
    if workers >= 2 and "fork" in multiprocessing.get_all_start_methods():
        try:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                return list(pool.map(_render_job, jobs))
        except (OSError, BrokenProcessPool):
            pass  # no processes to be had here: draw in this one
    return [_render_case(v, a) for v, a in jobs]


def _load_arrays(path: str | Path | None) -> dict[str, np.ndarray] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read saved report arrays ({exc})", path) from None


def rebuild_report(summary_json: str | Path, out_dir: str | Path | None = None) -> Path:
    """Rebuild a report from a saved ``summary.json`` (and the ``report_arrays.npz`` next to it)."""
    from .tables import load_summary

    summary_json = Path(summary_json)
    data = load_summary(summary_json)
    return write_report(data, out_dir, arrays_file=summary_json.parent / ARRAYS_FILE, source=str(summary_json))


__all__ = ["write_report", "rebuild_report", "default_out_dir", "ARRAYS_FILE", "SUMMARY_FILE"]
