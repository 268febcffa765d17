"""HTML/CSV/PNG report of a comparison run.

:func:`write_report` takes the comparator's results (CaseComparison objects or
the saved JSON), turns objects into their JSON first, and builds everything
from that JSON: the JSON is the single source of truth, so
``clnfdiag report summary.json`` rebuilds the same tables without re-running.

Output folder::

    summary.json         the comparator JSON ({"cases": [...], "summary": {...}})
    causes.csv           one row per (case, mode, rank): the ranked causes ("fix these first")
    magnitude.csv        one row per (case, mode, pass, landmark): response-map magnitudes
    convergence.csv      one row per (case, mode, pass, phase, iteration)
    <case>/*.png         the plots of each case
    report_arrays.npz    arrays behind the image and map plots (for rebuilds)
    index.html           the page (inline CSS/JS, no network)
    <case>/index.html    a case's own page, when the report is too large for one page

While everything fits in :data:`~clnfdiag.report.html.PAGE_BUDGET_BYTES`,
``index.html`` is one self-contained page with the PNGs embedded (one file to
mail or attach). A larger report keeps ``index.html`` to the overview and gives
every case its own page linking its PNGs, so the pages stay small and quick to
open however many cases there are.

The folder is built aside and moved into place whole
(:func:`clnfdiag.outputs.staged_folder`): an interrupted or failed build leaves
the previous report (or nothing), an earlier report there is replaced with none
of its files left, and two runs writing the same folder never mix.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..keys import parse
from ..outputs import staged_folder
from ..processes import ignore_interrupts, interrupts_blocked, interrupts_deferred, terminate_workers, usable_cpus

# matplotlib and pandas are imported on first use (inside the functions), so that registering
# the ``report`` command does not slow down every other ``clnfdiag`` command.

#: File next to summary.json holding the arrays of the image and map plots.
ARRAYS_FILE = "report_arrays.npz"
SUMMARY_FILE = "summary.json"
MAGNITUDE_FILE = "magnitude.csv"
CONVERGENCE_FILE = "convergence.csv"
CAUSES_FILE = "causes.csv"
INDEX_FILE = "index.html"
#: What a report folder is called when an existing folder is refused.
REPORT_WHAT = "a clnfdiag report"
#: Largest number of processes drawing plots.
MAX_WORKERS = 4


#: Map stages whose candidate arrays the report's plots draw.
REPORT_MAP_KINDS = frozenset({"area_of_interest", "response_raw", "response_sigma", "response"})


def keep_for_report(key: str) -> bool:
    """Candidate arrays the report's plots use: maps, final landmarks, the first KDE centres."""
    if key == "final/landmarks":
        return True
    sk = parse(key)
    if sk.part is not None or sk.pass_index is None:
        return False
    if sk.phase is None:
        return sk.name in REPORT_MAP_KINDS
    return sk.phase == "rigid" and sk.iteration == 0 and sk.name in ("dxs", "dys")


def is_report_folder(folder: str | Path) -> bool:
    """True for an empty folder or one holding a clnfdiag report (which may then be replaced whole).

    A report is recognised by its ``summary.json`` next to its page or one of its CSVs (an
    older clnfdiag could leave a report without ``index.html`` when interrupted).
    """
    names = {p.name for p in Path(folder).iterdir()}
    return not names or (SUMMARY_FILE in names and bool(names & {INDEX_FILE, MAGNITUDE_FILE, CONVERGENCE_FILE}))


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
                 arrays_file: str | Path | None = None, source: str = "", option: str = "report folder") -> Path:
    """Write the report of a comparison run.

    Parameters
    ----------
    comparisons : list or dict
        CaseComparison (and CaseFailure) objects, or the comparator JSON
        ``{"cases": [...], "summary": {...}}`` (or its list of cases).
    out_dir : path, optional
        Output folder; default ``reports/<timestamp>`` of the repository. Its
        parent must exist (except for the default); an existing folder is
        replaced whole when it holds a report, refused otherwise.
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
    option : str, optional
        What names the folder in error messages (``--out``).

    Returns
    -------
    Path
        The output folder (holding ``index.html``).

    Raises
    ------
    InputError
        Comparisons or saved arrays that cannot be read.
    OutputError
        The folder cannot be written or holds something other than a report.
    """
    from .tables import normalise

    summary = normalise(comparisons)
    if out_dir is None:
        out = default_out_dir()
        out.parent.mkdir(parents=True, exist_ok=True)
    else:
        out = Path(out_dir)
    saved = _load_arrays(arrays_file)  # before the build: a rebuild in place replaces that file
    with staged_folder(out, option, is_report_folder, REPORT_WHAT) as build:
        _build(build, summary, golden_cases, candidate_maps, saved, source)
    return out


def _build(out: Path, summary: dict, golden_cases: Any, candidate_maps: Any,
           saved: dict[str, np.ndarray] | None, source: str) -> None:
    """Every file of the report into ``out`` (see :func:`write_report`)."""
    from . import html as _html
    from . import plots as _plots
    from .tables import case_views, causes_table, convergence_table, dump_json, magnitude_table

    views = case_views(summary)
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
    with _Plotter(jobs) as plotter:  # draws in worker processes while the tables are written here
        dump_json(summary, out / SUMMARY_FILE)
        mag = magnitude_table(views)
        mag.to_csv(out / MAGNITUDE_FILE, index=False)
        convergence_table(views).to_csv(out / CONVERGENCE_FILE, index=False)
        causes_table(views).to_csv(out / CAUSES_FILE, index=False)
        if store:
            np.savez_compressed(out / ARRAYS_FILE, **store)
        figures = dict(zip((v.slug for v, _ in jobs), plotter.results()))
    for slug, figs in figures.items():
        (out / slug).mkdir(exist_ok=True)
        for stem, (png, _) in figs.items():
            if png is not None:
                (out / slug / f"{stem}.png").write_bytes(png)
    for rel, text in _html.render_pages(views, summary, figures, mag, source=source).items():
        (out / rel).parent.mkdir(exist_ok=True)
        (out / rel).write_text(text, encoding="utf-8")


#: ``{stem: (png or None, note)}``: the plots of one case.
Plots = dict[str, tuple[bytes | None, str | None]]


def _render_case(view: Any, arrays: Any) -> Plots:
    """Every plot of one case."""
    from . import plots as _plots
    from .accuracy import plot_annotation
    from .tables import convergence_rows

    return {
        "landmarks": _plots.plot_landmarks(view, arrays),
        "errors": _plots.plot_errors(view),
        "peak_ratio": _plots.plot_peak_ratios(view),
        "maps": _plots.plot_maps(view, arrays),
        "convergence": _plots.plot_convergence(view, convergence_rows(view)),
        "annotation": plot_annotation(arrays),
    }


#: The jobs of the current :class:`_Plotter`. Forked workers inherit them with the process's
#: memory, so a job (a case's JSON and arrays) is never pickled; only the PNGs come back.
_JOBS: list[tuple] = []


def _render_index(i: int) -> Plots:
    """Worker task: the plots of job ``i`` of :data:`_JOBS`."""
    return _render_case(*_JOBS[i])


class _Plotter:
    """Draws every case's plots: in forked worker processes on a multi-core machine, started at
    once so that the caller can write the tables meanwhile, else in this process when asked.

    Parameters
    ----------
    jobs : list of (CaseView, CaseArrays)
    """

    def __init__(self, jobs: list[tuple]):
        global _JOBS
        _JOBS = jobs
        self.jobs = jobs
        self.pool: ProcessPoolExecutor | None = None
        workers = min(len(jobs), usable_cpus(), MAX_WORKERS)
        if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
            return
        try:
            # map starts the workers and submits every task (under the pool's locks: Ctrl-C is
            # taken after it, see processes.interrupts_deferred)
            with interrupts_blocked(), interrupts_deferred():
                self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                                                initializer=ignore_interrupts)
                # chunks of a few cases: fewer round trips than one per case, still balanced
                self._results = self.pool.map(_render_index, range(len(jobs)),
                                              chunksize=max(1, len(jobs) // (4 * workers)))
        except OSError:
            self.pool = None  # no processes to be had here: draw in this one

    def results(self) -> list[Plots]:
        """The plots of every job, in order."""
        if self.pool is not None:
            try:
                return list(self._results)
            except BrokenProcessPool:
                pass  # a worker died (memory?): draw in this process
        return [_render_case(*job) for job in self.jobs]

    def __enter__(self) -> "_Plotter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global _JOBS
        if self.pool is not None:
            with interrupts_deferred():  # a second Ctrl-C must not leave the pool's locks held
                if exc_type is not None:
                    terminate_workers(self.pool)  # interrupted or failed: the plots are not wanted
                self.pool.shutdown(wait=True, cancel_futures=True)
        _JOBS = []


def _load_arrays(path: str | Path | None) -> dict[str, np.ndarray] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read saved report arrays ({exc})", path) from None


def rebuild_report(summary_json: str | Path, out_dir: str | Path | None = None, option: str = "--out") -> Path:
    """Rebuild a report from a saved ``summary.json`` (and the ``report_arrays.npz`` next to it)."""
    from .tables import load_summary

    summary_json = Path(summary_json)
    from .drift import read_sequence_summary, write_drift_report
    sequences = read_sequence_summary(summary_json)  # a tracking comparison: its drift report
    if sequences is not None:
        return write_drift_report(sequences, out_dir or default_out_dir(), str(summary_json), option)
    data = load_summary(summary_json)
    return write_report(data, out_dir, arrays_file=summary_json.parent / ARRAYS_FILE, source=str(summary_json),
                        option=option)


__all__ = ["keep_for_report", "write_report", "rebuild_report", "default_out_dir", "is_report_folder", "ARRAYS_FILE", "SUMMARY_FILE",
           "INDEX_FILE", "CAUSES_FILE", "REPORT_WHAT"]
