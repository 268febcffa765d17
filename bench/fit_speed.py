"""Time a whole CLNF fit per golden case, single-threaded, model loaded once.

OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS are set to 1 before
numpy is imported, and OpenCV runs with 1 thread. Each case is fitted with its
manifest's parameters from its image and bbox, tracing off, ``--runs`` times
(>= 7) after one warm-up; then a few times with tracing on. One JSON line per
case, then a summary line.

The C++ reference is the midpoint of the per-preset range in
shared/golden/FORMAT.md (``default`` 10.8-15.6 ms, ``wild`` 23-31.5 ms; same
machine kind, single thread, model loaded, median of 7).

    .venv/bin/python bench/fit_speed.py [CASE_DIR ...] [--runs N] [--models DIR]
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clnfdiag.errors import ClnfdiagError  # noqa: E402
from clnfdiag.fitter import Fitter  # noqa: E402
from clnfdiag.golden import find_cases, read_case  # noqa: E402
from clnfdiag.parameters import FitParameters  # noqa: E402

#: FORMAT.md's C++ ranges (ms) per preset; the midpoint is the reference.
CPP_MS_RANGE = {"default": (10.8, 15.6), "wild": (23.0, 31.5)}


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", type=Path, default=[REPO / "golden"])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--traced-runs", type=int, default=3)
    ap.add_argument("--models", type=Path, default=None)
    args = ap.parse_args(argv)
    runs = max(7, args.runs)
    cv2.setNumThreads(1)
    print(f"# single thread: OPENBLAS/OMP/MKL_NUM_THREADS=1, cv2.setNumThreads(1); "
          f"{runs} untraced runs + {args.traced_runs} traced per case after 1 warm-up; "
          f"C++ ms = midpoint of FORMAT.md's per-preset range {CPP_MS_RANGE}", flush=True)
    try:
        t0 = time.perf_counter()
        fitter = Fitter(models=args.models)
        load_ms = (time.perf_counter() - t0) * 1e3
        case_dirs = find_cases(args.cases)
    except ClnfdiagError as err:
        print(f"fit_speed: {err.kind}: {err}", file=sys.stderr)
        return 2
    print(f"# model loaded once in {load_ms:.0f} ms", flush=True)
    ratios = []
    for d in case_dirs:
        with read_case(d, verify=False) as case:
            params = FitParameters.from_manifest(case.parameters, case.preset)
            image = case.load_image()
            bbox = case.bbox
            name, preset = case.case_id, case.preset
        fitter.fit(image, bbox=bbox, parameters=params)  # warm-up
        t = timed(lambda: fitter.fit(image, bbox=bbox, parameters=params), runs)
        tt = timed(lambda: fitter.fit(image, bbox=bbox, parameters=params, trace=True),
                   args.traced_runs)
        lo, hi = CPP_MS_RANGE.get(preset, (float("nan"), float("nan")))
        cpp = (lo + hi) / 2
        med = statistics.median(t)
        tmed = statistics.median(tt)
        ratios.append(med / cpp)
        print(json.dumps({
            "case": name, "preset": preset, "runs": runs,
            "ms_median": round(med, 2), "ms_min": round(min(t), 2), "ms_max": round(max(t), 2),
            "cpp_ms": cpp, "cpp_ms_range": [lo, hi], "ratio_vs_cpp": round(med / cpp, 2),
            "traced_ms_median": round(tmed, 2), "traced_ratio": round(tmed / med, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }), flush=True)
    if ratios:
        print(f"# summary: {len(ratios)} case(s), clnfdiag/C++ median-time ratio "
              f"median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
              f"peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
