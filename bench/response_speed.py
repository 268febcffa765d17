"""Time to compute the CCNF responses of all visible landmarks of one (scale, view), per window size.

Single-threaded: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS
are set to 1 before numpy is imported, and OpenCV runs with 1 thread. The
model is loaded and the expert banks and Sigma matrices are built before
timing; each window size uses the golden areas of interest of the first
golden pass with that window.

    .venv/bin/python bench/response_speed.py [--runs N] [--models DIR]
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from clnfdiag.experts import raw_response, shift_response, sigma_response  # noqa: E402
from response_errors import main_experts  # noqa: E402


def golden_passes() -> dict[int, tuple[str, np.ndarray, int, int]]:
    """First golden pass per window size: (name, visible-or-all areas, scale, view)."""
    out: dict[int, tuple[str, np.ndarray, int, int]] = {}
    for parent in (REPO / "golden", SHARED / "golden", SHARED / "golden-hierarchical"):
        if not parent.is_dir():
            continue
        for case in sorted(parent.iterdir()):
            if not (case / "stages.npz").is_file():
                continue
            with np.load(case / "stages.npz") as z:
                p = 0
                while f"pass{p}/area_of_interest" in z.files:
                    w = int(z[f"pass{p}/window_size"])
                    if w not in out:
                        out[w] = (f"{case.parent.name}/{case.name} pass{p}",
                                  z[f"pass{p}/area_of_interest"],
                                  int(z[f"pass{p}/scale_index"]), int(z[f"pass{p}/view_id"]))
                    p += 1
    return out


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--runs", type=int, default=50, help="timed runs per window (>= 20)")
    ap.add_argument("--models", type=Path, default=None)
    args = ap.parse_args()
    runs = max(args.runs, 20)
    cv2.setNumThreads(1)
    loaded = main_experts(args.models, "response_speed")
    if loaded is None:
        return 2
    experts, model_dir = loaded
    cases = golden_passes()

    print(f"CCNF responses of all visible landmarks for one (scale, view); median of {runs} runs")
    print("BLAS threads pinned to 1 (OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=1 set "
          "before importing numpy), cv2.setNumThreads(1); model loaded, banks and Sigmas warm")
    print(f"numpy {np.__version__}, opencv {cv2.__version__}, {os.cpu_count()} CPUs")
    print()
    print(f"{'window':<7}{'area':>6}{'visible':>9}{'total ms':>10}{'raw':>9}{'sigma':>9}"
          f"{'shift':>9}  golden pass")
    for w in sorted(cases):
        name, areas, scale, view = cases[w]
        bank = experts.bank(scale, view)
        vis = np.ascontiguousarray(areas[bank.landmarks])
        for _ in range(3):  # warm: bank, Sigma for this window, allocator
            out = experts.responses(vis, scale, view)
        total = median_ms(lambda: experts.responses(vis, scale, view), runs)
        raw_ms = median_ms(lambda: raw_response(bank, vis), runs)
        sig_ms = median_ms(lambda: sigma_response(bank, out.raw), runs)
        shift_ms = median_ms(lambda: shift_response(out.sigma), runs)
        print(f"{w:<7}{areas.shape[1]:>6}{len(bank.landmarks):>9}{total:>10.2f}{raw_ms:>9.2f}"
              f"{sig_ms:>9.2f}{shift_ms:>9.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
