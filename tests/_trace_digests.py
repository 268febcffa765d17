"""Worker of tests/test_determinism.py: fit golden cases and print one trace digest per (case, mode).

Run in a subprocess whose environment selects other kernels (``OPENBLAS_CORETYPE``,
``NUMBA_CPU_NAME``, ``OPENCV_CPU_DISABLE``)::

    python tests/_trace_digests.py CASE_DIR...

prints a JSON object ``{"<case>/<mode>": sha256, ...}`` on stdout (mode ``isolated``,
``propagated``, and ``envelope``: a 4-run noise envelope, whose verdicts must not depend on
the CPU either), plus
``"_blas"``: the OpenBLAS core types threadpoolctl reports (so the test can
check the override took effect).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from threadpoolctl import threadpool_info  # noqa: E402

import hashlib  # noqa: E402

from clnfdiag.compare.isolated import isolated_trace  # noqa: E402
from clnfdiag.compare.noise import measure  # noqa: E402
from clnfdiag.compare.propagated import propagated_trace  # noqa: E402
from clnfdiag.fitter import Fitter  # noqa: E402
from clnfdiag.golden import read_case  # noqa: E402
from clnfdiag.trace import trace_digest  # noqa: E402


#: Runs of the envelope checked: enough to exercise the perturbed fits, few enough to be quick.
ENVELOPE_RUNS = 4


def main(case_dirs: list[str]) -> int:
    fitter = Fitter()
    out: dict[str, object] = {}
    for d in case_dirs:
        case = read_case(d)
        out[f"{case.case_id}/isolated"] = trace_digest(isolated_trace(case, fitter))
        out[f"{case.case_id}/propagated"] = trace_digest(propagated_trace(case, fitter))
        env = json.dumps(measure(case, fitter, ENVELOPE_RUNS).to_json(), sort_keys=True)
        out[f"{case.case_id}/envelope"] = hashlib.sha256(env.encode()).hexdigest()
        case.close()
    out["_blas"] = sorted({str(i.get("architecture")) for i in threadpool_info()
                           if i.get("internal_api") == "openblas"})
    json.dump(out, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
