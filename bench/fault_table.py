"""Every known fault against every public golden with ``--gate landmarks``, isolated and propagated.

Prints one row per fault: how many cases pass (the fault's landmark move within the
case's rounding noise) and fail, per mode, and the largest landmark move seen with
what it was judged against (isolated: the largest replayed move, of the first
divergence or of a cause, against the case's noise; propagated: the end-to-end
error against the landmark tolerance); then the noise table (case, C++ floor,
noise and its source). The
verdicts are those of ``clnfdiag compare GOLDEN --inject FAULT --gate landmarks``:

    .venv/bin/python bench/fault_table.py [--noise-runs K] [--workers N] [--faults a,b] [CASE_PARENT ...]

Default case folders: ``../shared/golden`` and ``../shared/golden-hierarchical``
(``golden/`` holds copies of some of them).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from clnfdiag.compare.comparator import run  # noqa: E402
from clnfdiag.compare.noise import DEFAULT_RUNS  # noqa: E402
from clnfdiag.compare.producers import FitProducer  # noqa: E402
from clnfdiag.compare.struct import CaseComparison  # noqa: E402
from clnfdiag.faults import FAULTS  # noqa: E402
from clnfdiag.golden import find_cases  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parents", nargs="*", type=Path,
                    default=[SHARED / "golden", SHARED / "golden-hierarchical"])
    ap.add_argument("--noise-runs", type=int, default=DEFAULT_RUNS)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--faults", default=",".join(FAULTS))
    args = ap.parse_args()
    cases = find_cases(args.parents)
    noise: dict[str, tuple] = {}
    print(f"{len(cases)} cases; gate landmarks; K={args.noise_runs}")
    print(f"{'fault':<24} {'isolated pass/fail':>18} {'propagated pass/fail':>21}  largest move (case: move / noise px)")
    for fault in args.faults.split(","):
        t0 = time.perf_counter()
        producer = FitProducer(faults=[fault], noise_runs=args.noise_runs)
        r = producer.replays
        cells, worst = [], {}
        for mode in ("isolated", "propagated"):
            res = [c for c in run(cases, producer, (mode,), gate="landmarks", workers=args.workers,
                                  impact=r.impact, envelope=r.envelope, causes=True)
                   if isinstance(c, CaseComparison)]
            cells.append(f"{sum(c.passed for c in res)}/{sum(not c.passed for c in res)}")
            for c in res:
                noise[c.case] = (c.cpp_floor_px, c.noise_floor_px, c.noise_floor_source)
                # Isolated: the largest replayed move (first divergence or a cause).
                move = max([(c.impact or {}).get("landmarks_max_px") or 0.0]
                           + [x.landmarks_impact_px or 0.0 for x in c.causes]) if mode == "isolated" \
                    else c.observed.get("landmarks_max_px")
                allowed = (c.impact or {}).get("noise_floor_px") if mode == "isolated" else c.landmark_tolerance_px
                if move is not None and (mode not in worst or move > worst[mode][1]):
                    worst[mode] = (c.case, move, allowed)
        w = "; ".join(f"{m}: {v[0]} {v[1]:.3g}/{(v[2] or 0):.3g}" for m, v in worst.items())
        print(f"{fault:<24} {cells[0]:>18} {cells[1]:>21}  {w}  ({time.perf_counter() - t0:.0f} s)")
    print(f"\n{'case':<22} {'CPP floor px':>13} {'noise px':>10}  source")
    for case, (floor, band, source) in sorted(noise.items()):
        print(f"{case:<22} {floor if floor is not None else '-':>13} {band:>10.3g}  {source}")


if __name__ == "__main__":
    main()
