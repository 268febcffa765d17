"""Time a whole CLNF fit per golden case, single-threaded, model loaded once.

OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS are set to 1 before
numpy is imported, and OpenCV runs with 1 thread. Each case is fitted with its
manifest's parameters from its image and bbox, tracing off, ``--runs`` times
(>= 7) after one warm-up; then a few times with tracing on. One JSON line per
case, then a summary line.

The C++ reference is taken for the CPU this runs on: ``bench/cpp_times.json``
(from shared/golden/FORMAT.md: per-case ranges for an Intel Xeon with AVX-512,
per-preset ranges for an AMD EPYC without it), or ``--cpp-ref FILE`` in the same
layout; the midpoint of the range is the reference, and the first line says
which entry was used. A CPU no entry matches gets absolute times only: a ratio
against another CPU's C++ would mislead. ``first_fit_ms`` is each case's first
fit (for the first case, the first fit after loading the model; loading includes
the warm-up of :mod:`clnfdiag.clnf.warm`: compiled kernels and the frontal Sigma
sets), before the timed runs; ``cpu_ms_min`` is the least process CPU time of
the timed runs (robust when other processes share the machine). The summary
gives the ratio range, the first fit after loading against the steady state, and
the peak RSS.

    .venv/bin/python bench/fit_speed.py [CASE_DIR ...] [--runs N] [--models DIR] [--cpp-ref FILE]
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

#: Default C++ reference table (see the module docstring).
CPP_TIMES = Path(__file__).with_name("cpp_times.json")


def this_cpu() -> tuple[str, bool, str]:
    """(vendor id, has AVX-512F, model name) from /proc/cpuinfo ("" / False when unreadable)."""
    vendor, model, flags = "", "", ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return vendor, False, model
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "vendor_id" and not vendor:
            vendor = val
        elif key == "model name" and not model:
            model = val
        elif key == "flags" and not flags:
            flags = val
    return vendor, "avx512f" in flags.split(), model


def cpp_reference(path: Path) -> dict | None:
    """The entry of a C++ times table matching this CPU's vendor and AVX-512 flag, or None."""
    vendor, avx512, _ = this_cpu()
    table = json.loads(path.read_text(encoding="utf-8"))
    for entry in table.get("cpus", []):
        if entry.get("vendor") == vendor and bool(entry.get("avx512")) == avx512:
            return entry
    return None


def cpp_range(ref: dict | None, case: str, preset: str) -> tuple[float, float] | None:
    """C++ time range (ms) of a case on the reference CPU: per case, else per preset."""
    if ref is None:
        return None
    r = ref.get("per_case", {}).get(case) or ref.get("per_preset", {}).get(preset)
    return None if r is None else (float(r[0]), float(r[1]))


def timed(fn, runs: int) -> list[float]:
    return [t for t, _ in timed_cpu(fn, runs)]


def timed_cpu(fn, runs: int) -> list[tuple[float, float]]:
    """(wall ms, process CPU ms) of each of ``runs`` calls."""
    out = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", type=Path, default=[REPO / "golden"])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--traced-runs", type=int, default=3)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--cpp-ref", type=Path, default=CPP_TIMES,
                    help="C++ times table (layout of bench/cpp_times.json)")
    args = ap.parse_args(argv)
    runs = max(7, args.runs)
    cv2.setNumThreads(1)
    ref = cpp_reference(args.cpp_ref)
    vendor, avx512, model = this_cpu()
    print(f"# single thread: OPENBLAS/OMP/MKL_NUM_THREADS=1, cv2.setNumThreads(1); "
          f"{runs} untraced runs + {args.traced_runs} traced per case after 1 warm-up", flush=True)
    print(f"# CPU: {model or '?'} ({vendor or '?'}, AVX-512 {'yes' if avx512 else 'no'}); C++ reference: "
          + (f"{ref['name']} from {args.cpp_ref} (midpoint of its range)" if ref is not None
             else f"none in {args.cpp_ref} for this CPU: absolute times only"), flush=True)
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
    first = True
    first_after_load = None
    for d in case_dirs:
        with read_case(d, verify=False) as case:
            params = FitParameters.from_manifest(case.parameters, case.preset)
            image = case.load_image()
            bbox = case.bbox
            name, preset = case.case_id, case.preset
        warm = timed(lambda: fitter.fit(image, bbox=bbox, parameters=params), 1)[0]
        tc = timed_cpu(lambda: fitter.fit(image, bbox=bbox, parameters=params), runs)
        t = [w for w, _ in tc]
        tt = timed(lambda: fitter.fit(image, bbox=bbox, parameters=params, trace=True),
                   args.traced_runs)
        med = statistics.median(t)
        tmed = statistics.median(tt)
        row = {"case": name, "preset": preset, "runs": runs,
               "ms_median": round(med, 2), "ms_min": round(min(t), 2), "ms_max": round(max(t), 2),
               "cpu_ms_min": round(min(c for _, c in tc), 2), "first_fit_ms": round(warm, 2)}
        if first:
            first_after_load, first = (warm, med), False
        rng = cpp_range(ref, name, preset)
        if rng is not None:
            cpp = (rng[0] + rng[1]) / 2
            ratios.append(med / cpp)
            row |= {"cpp_ms": cpp, "cpp_ms_range": list(rng), "ratio_vs_cpp": round(med / cpp, 2)}
        row |= {"traced_ms_median": round(tmed, 2), "traced_ratio": round(tmed / med, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1)}
        print(json.dumps(row), flush=True)
    if first_after_load is not None:
        print(f"# first fit after loading {first_after_load[0]:.1f} ms, that case's steady state "
              f"{first_after_load[1]:.1f} ms (median)")
    if ratios:
        print(f"# summary: {len(ratios)} case(s) with a same-CPU C++ time, clnfdiag/C++ median-time "
              f"ratio median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
              f"max {max(ratios):.2f}); peak RSS {peak_rss_mb():.0f} MB")
    else:
        print(f"# summary: {len(case_dirs)} case(s); peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
