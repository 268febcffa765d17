"""Bit-identity digests of every golden case: run before and after a speed change, compare.

For every case found under the given folders (default ``golden/``, ``../shared/golden``,
``../shared/golden-hierarchical`` when present): the SHA-256 (:func:`clnfdiag.trace.trace_digest`)
of the isolated and of the propagated trace, of an untraced fit's result (landmarks,
parameters, likelihoods, success: the compiled fast path, which no trace sees), of a
4-run noise envelope, and, for the first two cases, of every known fault's propagated
trace, keyed ``<case folder's name>/<case id>/<what>``. Writes them as JSON; with
``--compare BASE.json`` exits 1 (listing the keys) when any digest differs from that
earlier run.

    OPENFACE_MODELS_DIR=../shared/OpenFaceModels .venv/bin/python bench/speed_digests.py OUT.json [CASE_DIR ...] [--compare BASE.json]

Run it also under ``NUMBA_CPU_NAME=generic NUMBA_CACHE_DIR=<empty dir>`` (no FMA or AVX
instructions, fresh compile): the digests must not change.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clnfdiag.compare.isolated import isolated_trace  # noqa: E402
from clnfdiag.compare.noise import measure  # noqa: E402
from clnfdiag.compare.propagated import case_parameters, propagated_trace  # noqa: E402
from clnfdiag.faults import FAULTS  # noqa: E402
from clnfdiag.fitter import Fitter  # noqa: E402
from clnfdiag.golden import find_cases, read_case  # noqa: E402
from clnfdiag.trace import trace_digest  # noqa: E402

#: Noise-envelope runs digested per case (enough to exercise the perturbed fits).
ENVELOPE_RUNS = 4
#: Cases whose every known fault is digested too.
FAULT_CASES = 2


def default_folders() -> list[Path]:
    shared = REPO.parent / "shared"
    return [p for p in (REPO / "golden", shared / "golden", shared / "golden-hierarchical")
            if p.is_dir()]


def result_digest(result) -> str:
    """SHA-256 of an untraced fit's outputs."""
    h = hashlib.sha256()
    for a in (result.landmarks, result.params_global, result.params_local,
              np.float32(result.likelihood), result.landmark_likelihoods, np.int8(result.success)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def digests(folders: list[Path]) -> dict[str, str]:
    fitter = Fitter()
    out: dict[str, str] = {}
    for n, d in enumerate(find_cases(folders)):
        with read_case(d) as case:
            cid = f"{d.parent.name}/{case.case_id}"
            out[f"{cid}/isolated"] = trace_digest(isolated_trace(case, fitter))
            out[f"{cid}/propagated"] = trace_digest(propagated_trace(case, fitter))
            out[f"{cid}/untraced"] = result_digest(
                fitter.fit(case.load_image(), case.bbox, case_parameters(case)))
            env = json.dumps(measure(case, fitter, ENVELOPE_RUNS).to_json(), sort_keys=True)
            out[f"{cid}/envelope"] = hashlib.sha256(env.encode()).hexdigest()
            if n < FAULT_CASES:
                for f in sorted(FAULTS):
                    out[f"{cid}/fault/{f}"] = trace_digest(
                        propagated_trace(case, fitter, frozenset([f])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("cases", nargs="*", type=Path)
    ap.add_argument("--compare", type=Path, default=None, help="an earlier run's JSON")
    args = ap.parse_args(argv)
    t0 = time.process_time()
    got = digests(args.cases or default_folders())
    args.out.write_text(json.dumps(got, indent=1, sort_keys=True))
    print(f"# {len(got)} digests in {time.process_time() - t0:.1f} s CPU -> {args.out}")
    if args.compare is not None:
        base = json.loads(args.compare.read_text())
        differ = sorted(k for k in set(base) | set(got) if base.get(k) != got.get(k))
        if differ:
            print("# differ from " + str(args.compare) + ":\n" + "\n".join(differ))
            return 1
        print(f"# identical to {args.compare}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
