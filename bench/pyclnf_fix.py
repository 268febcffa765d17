"""Is the ranking a diagnosis? Fix pyclnf's top-ranked cause and measure how far its landmarks move.

For each golden case: pyclnf's isolated trace is ranked (``clnfdiag compare --port pyclnf``'s
causes: each kind's impact is pyclnf's methods of that kind run inside clnfdiag's fit); the top cause is fixed in pyclnf (monkeypatched: weights -> the experts' confidences,
mean_shifts_ref -> pyclnf's own 0.1-px grid KDE, reference_shape -> the current local
parameters); pyclnf's end-to-end fit is run before and after. Printed per case: the top cause and
its replayed landmark impact, the measured move of the final landmarks, the margin (the other
causes' impacts + twice the case's noise: the move and the impact can differ by what the other
deviations move), and the end-to-end error before and after.

    .venv/bin/python bench/pyclnf_fix.py [CASE_DIR ...]     (default: ../shared/golden/*)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clnfdiag.compare.comparator import compare_traces  # noqa: E402
from clnfdiag.compare.isolated import isolated_trace  # noqa: E402
from clnfdiag.compare.producers import FitProducer  # noqa: E402
from clnfdiag.compare.tolerances import profile_tolerances  # noqa: E402
from clnfdiag.compare.propagated import propagated_trace  # noqa: E402
from clnfdiag.golden import find_cases, read_case  # noqa: E402
from clnfdiag.ports import port_trace  # noqa: E402


def fixes(ops):
    """The fix of each cause kind pyclnf shows: ``kind -> (object, attribute, value)``."""
    def confidences(scale, view):
        bank = ops.experts.bank(scale, view)
        conf = np.zeros(ops.n_points)
        conf[bank.landmarks] = bank.confidence
        return conf
    return {"weights": (ops, "_landmark_weights", confidences),
            "mean_shifts_ref": (ops.optimizer, "use_direct_kde", False),
            "reference_shape": (ops, "_reference_local", lambda params_local: params_local)}


def main() -> None:
    dirs = [Path(a) for a in sys.argv[1:]] or find_cases([REPO.parent / "shared" / "golden"])
    producer = FitProducer(port="pyclnf")          # what `compare --port pyclnf` uses
    fitter = producer.candidate_fitter
    ops = fitter.main
    replays = producer.replays
    print("| case | top cause | impact px | move px | margin px | |move - impact| <= margin | error before px | error after px |")
    print("|---|---|---|---|---|---|---|---|")
    for d in dirs:
        with read_case(d) as case:
            trace = port_trace(isolated_trace(case, fitter), ops)
            # The profile `compare --port` uses: pyclnf computes in float64.
            cmp = compare_traces(case, trace, "isolated", profile_tolerances("port"),
                                 impact=lambda k: replays.impact(case, trace, k),
                                 envelope=replays.envelope(case),
                                 signature=lambda k: replays.signature(case, trace, k), causes=True,
                                 cause_impact=lambda k: producer.cause_impact(case, trace, k))
            top, others = cmp.causes[0], cmp.causes[1:]
            before = port_trace(propagated_trace(case, fitter), ops)["final/landmarks"].astype(np.float64)
            obj, attr, value = fixes(ops)[top.stage_kind]
            old = getattr(obj, attr)
            setattr(obj, attr, value)
            try:
                after = port_trace(propagated_trace(case, fitter), ops)["final/landmarks"].astype(np.float64)
            finally:
                setattr(obj, attr, old)
            golden = case.stage("final/landmarks")
        move = float(np.linalg.norm(after - before, axis=1).max())
        margin = sum(c.landmarks_impact_px or 0.0 for c in others) + 2 * cmp.noise_floor_px
        err = [float(np.linalg.norm(x - golden, axis=1).max()) for x in (before, after)]
        ok = abs(move - top.landmarks_impact_px) <= margin
        print(f"| {case.case_id} | {top.stage_kind} [{top.known_fault}] | {top.landmarks_impact_px:.3g} | "
              f"{move:.3g} | {margin:.3g} | {'yes' if ok else 'NO'} | {err[0]:.3g} | {err[1]:.3g} |", flush=True)


if __name__ == "__main__":
    main()
