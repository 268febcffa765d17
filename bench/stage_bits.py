"""Fraction of values bit-identical to the C++ goldens, per stage kind, isolated and propagated.

For every golden case (byte-identical copies counted once) clnfdiag computes the
trace in isolated mode (each stage from the golden's own inputs) and in
propagated mode (an end-to-end fit from the image and box) and compares every
value bit for bit with the golden. Keys are folded into stage kinds
(``pass*/rigid/iter*/param_update``, ``hierarchical/*/params_global``).

    .venv/bin/python bench/stage_bits.py [--models DIR] [--mode isolated|propagated|both]
                                         [--per-case] [--digest FILE] [CASE_FOLDER_PARENT ...]

``--digest FILE`` also writes one SHA-256 per (case, mode) over the trace's
bytes: two runs under other CPUs or kernels must write the same file.
Default case folders: ``golden/``, ``../shared/golden``, ``../shared/golden-hierarchical``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from response_errors import case_dirs  # noqa: E402

from clnfdiag.compare.isolated import isolated_trace  # noqa: E402
from clnfdiag.compare.metrics import bit_identical  # noqa: E402
from clnfdiag.compare.propagated import propagated_trace  # noqa: E402
from clnfdiag.fitter import Fitter  # noqa: E402
from clnfdiag.golden import read_case  # noqa: E402
from clnfdiag.trace import trace_digest  # noqa: E402

_FOLD = ((re.compile(r"pass\d+/"), "pass*/"), (re.compile(r"iter\d+/"), "iter*/"),
         (re.compile(r"^hierarchical/(inner|left_eye_28|right_eye_28)/"), "hierarchical/*/"))


def kind(key: str) -> str:
    for pat, rep in _FOLD:
        key = pat.sub(rep, key)
    return key


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parents", nargs="*", type=Path)
    ap.add_argument("--models", type=Path)
    ap.add_argument("--mode", choices=("isolated", "propagated", "both"), default="both")
    ap.add_argument("--per-case", action="store_true", help="list every case's non-identical stages")
    ap.add_argument("--digest", type=Path, help="write per (case, mode) trace SHA-256 as JSON")
    args = ap.parse_args(argv)
    parents = args.parents or [REPO / "golden", SHARED / "golden", SHARED / "golden-hierarchical"]
    cases, _ = case_dirs(parents)
    models = args.models or (None if os.environ.get("OPENFACE_MODELS_DIR") else SHARED / "OpenFaceModels")
    fitter = Fitter(models=models)
    modes = ("isolated", "propagated") if args.mode == "both" else (args.mode,)
    tally = {m: defaultdict(lambda: [0, 0]) for m in modes}
    digests: dict[str, str] = {}
    for path in cases:
        case = read_case(path)
        for mode in modes:
            trace = (isolated_trace if mode == "isolated" else propagated_trace)(case, fitter)
            digests[f"{case.case_id}/{mode}"] = trace_digest(trace)
            bad = []
            for key in case.keys():
                if key not in trace:
                    continue
                eq = bit_identical(trace[key], case.stage(key))
                t = tally[mode][kind(key)]
                t[0] += int(eq.sum())
                t[1] += eq.size
                if not eq.all():
                    bad.append(f"{key} {eq.size - int(eq.sum())}/{eq.size}")
            if args.per_case:
                print(f"{case.case_id} {mode}: {len(bad)} stages not identical" + "".join(
                    f"\n    {b}" for b in bad))
        case.close()
    for mode in modes:
        rows = sorted(tally[mode].items())
        same = sum(v[0] for _, v in rows)
        total = sum(v[1] for _, v in rows)
        print(f"\n{mode}: {same}/{total} values bit-identical ({100.0 * same / max(total, 1):.4f} %)"
              f" over {len(cases)} cases")
        for k, (s, t) in rows:
            if s != t:
                print(f"  {k:45s} {s:>9d}/{t:<9d} {100.0 * s / t:8.3f} %")
        n_ok = sum(1 for _, (s, t) in rows if s == t)
        print(f"  ({n_ok} of {len(rows)} stage kinds 100 % identical)")
    if args.digest:
        args.digest.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
