"""Time loading OpenFace's CLNF model (main model and parts) into a Fitter: median of 5.

Single-threaded like the other benches (BLAS threads pinned to 1 before numpy
is imported). C++ reference in shared/golden/FORMAT.md: about 20-30 ms.

    .venv/bin/python bench/model_load.py [--runs N] [--models DIR]
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clnfdiag.errors import ClnfdiagError  # noqa: E402
from clnfdiag.fitter import Fitter  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", type=Path, default=None)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    times = []
    try:
        for _ in range(args.runs):
            t0 = time.perf_counter()
            Fitter(models=args.models)
            times.append((time.perf_counter() - t0) * 1e3)
    except ClnfdiagError as err:
        print(f"model_load: {err.kind}: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"model_load_ms_median": round(statistics.median(times), 1),
                      "min": round(min(times), 1), "max": round(max(times), 1),
                      "runs": args.runs, "cpp_ms_range": [20, 30], "threads": 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
