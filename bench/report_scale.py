"""Size and build time of the HTML report as the number of cases grows.

The case set is made like ``bench/compare_scaling.py`` makes it: copies of the
golden cases (``golden/`` by default) under new folder names and case ids. The
comparisons are run once, in this process's workers (``--mode both``, this
project's fit, ``--inject`` optional so that cases diverge and carry their
per-landmark data), then the report is built from them exactly as
``clnfdiag compare --report`` builds it, and timed alone (wall and CPU time:
on a shared machine only the CPU time is free of the other processes' load).
Printed: the build time, the size of ``index.html`` and of the whole folder,
the largest page, and, when Chromium is installed (``/usr/bin/chromium``,
Debian's package), the wall time of a headless ``--dump-dom`` of ``index.html``
and of the largest comparison page (paged layout), with what it saw (images
loaded, table rows).

    OPENFACE_MODELS_DIR=../shared/OpenFaceModels .venv/bin/python bench/report_scale.py \\
        [GOLDEN_DIR] [--cases 48] [--inject normalize-response] [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]

from compare_scaling import golden_cases, make_set  # noqa: E402


def folder_size(root: Path) -> int:
    """Bytes of every regular file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def compare_all(case_dir: Path, inject: list[str], workers: int) -> list:
    """Every comparison of the set, both modes, with the arrays the report keeps."""
    from clnfdiag.report import keep_for_report
    from clnfdiag.compare.comparator import run
    from clnfdiag.compare.producers import FitProducer
    from clnfdiag.golden import find_cases
    from clnfdiag.models import load_model

    load_model()  # a model problem is reported here, once
    producer = FitProducer(None, inject)
    return list(run(find_cases([case_dir]), producer, ("isolated", "propagated"), workers=workers,
                    impact=producer.replays.impact, keep=keep_for_report))


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the plot workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def build(results: list, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds to build the report of ``results`` into ``out`` (as ``compare --report``
    does). CPU time does not grow when other processes compete for the cores; wall time does."""
    from clnfdiag.compare.cli import _write_report
    from clnfdiag.report import write_report

    t0, c0 = time.perf_counter(), _cpu()
    _write_report(write_report, results, out, "bench/report_scale.py")
    return time.perf_counter() - t0, _cpu() - c0


def render(page: Path) -> str:
    """Headless Chromium's wall time and what it saw, or why it was not run."""
    from browser_check import check, find_chromium

    browser = find_chromium()
    if browser is None:
        return "no chromium (apt-get install chromium)"
    t0 = time.perf_counter()
    r = check(page, browser)
    dt = time.perf_counter() - t0
    return (f"{dt:.1f} s (--dump-dom), images loaded {r.images_loaded}, overview rows {r.overview_rows}, "
            f"per-landmark rows {r.landmark_rows}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("golden", nargs="?", type=Path, default=REPO / "golden")
    ap.add_argument("--cases", type=int, default=48)
    ap.add_argument("--inject", action="append", default=[],
                    help="fault to inject so that the comparisons diverge (repeatable)")
    ap.add_argument("--workers", type=int, default=min(2, len(os.sched_getaffinity(0))))
    ap.add_argument("--keep", type=Path, default=None, help="copy the report here")
    args = ap.parse_args(argv)
    sources = golden_cases(args.golden)
    if not sources:
        print(f"report_scale: no golden cases under {args.golden}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="clnfdiag-report-scale-") as tmp:
        case_dir = make_set(sources, args.cases, Path(tmp) / "cases")
        t0 = time.perf_counter()
        results = compare_all(case_dir, args.inject, args.workers)
        print(f"# {args.cases} cases x 2 modes = {len(results)} comparisons from {args.golden}"
              f"{' with ' + ', '.join(args.inject) if args.inject else ''}; compared in "
              f"{time.perf_counter() - t0:.1f} s ({args.workers} workers)", flush=True)
        out = Path(tmp) / "report"
        load = os.getloadavg()[0]
        seconds, cpu = build(results, out)
        index = out / "index.html"
        pages = sorted(out.rglob("*.html"), key=lambda p: p.stat().st_size)
        print(f"report build   {seconds:.1f} s wall, {cpu:.1f} s CPU (load average before: {load:.1f} "
              f"on {len(os.sched_getaffinity(0))} CPUs)")
        print(f"index.html     {index.stat().st_size / 1e6:.2f} MB")
        print(f"largest page   {pages[-1].relative_to(out)} {pages[-1].stat().st_size / 1e6:.2f} MB "
              f"({len(pages)} pages)")
        print(f"folder         {folder_size(out) / 1e6:.1f} MB")
        print(f"chromium       index.html: {render(index)}", flush=True)
        case_pages = [p for p in pages if p != index]
        if case_pages:  # paged layout: the largest comparison page too
            print(f"chromium       {case_pages[-1].relative_to(out)}: {render(case_pages[-1])}", flush=True)
        if args.keep is not None:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
