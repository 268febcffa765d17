"""Stage-by-stage comparison of a candidate CLNF trace with OpenFace C++ golden cases.

* :mod:`.struct` — result types (:class:`StageResult`, :class:`CaseComparison`, :class:`Summary`);
* :mod:`.metrics` — compare functions per stage family, vectorised over landmarks;
* :mod:`.tolerances` — per-stage-kind atol/rtol (shipped defaults, TOML overrides, noise floor);
* :mod:`.comparator` — :func:`compare_traces` for one case, :func:`run` over many;
* :mod:`.cli` — the ``clnfdiag compare`` command (imported by :mod:`clnfdiag.cli`, not here).

The trace producers (``isolated``, ``propagated``) and ``impact`` live in this
package too and are imported on first use.
"""
from .comparator import compare_stage, compare_traces, parse_key, run
from .producers import CandidateTraces, FitProducer
from .struct import CaseComparison, CaseFailure, ConvergenceRow, StageResult, Summary
from .tolerances import Tol, Tolerances, default_tolerances, load_tolerances

__all__ = [
    "CandidateTraces", "FitProducer", "compare_stage", "compare_traces", "parse_key", "run",
    "CaseComparison", "CaseFailure", "ConvergenceRow", "StageResult", "Summary",
    "Tol", "Tolerances", "default_tolerances", "load_tolerances",
]
