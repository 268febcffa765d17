"""clnfdiag: an instrumented CLNF (OpenFace 2.x) and a stage-by-stage comparator.

>>> from clnfdiag import Fitter, read_case, TraceWriter
>>> fitter = Fitter()                  # OpenFace's model, found and verified once
>>> result = fitter.fit("face.png", bbox=(180.8, 85.7, 89.2, 86.8), trace=True)

The names below are imported on first use, so ``import clnfdiag`` stays cheap
(the CLI imports only what a command needs).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Fitter": "clnfdiag.fitter",
    "FitResult": "clnfdiag.fitter",
    "FitParameters": "clnfdiag.parameters",
    "load_model": "clnfdiag.models",
    "read_case": "clnfdiag.golden",
    "write_case": "clnfdiag.golden",
    "TraceWriter": "clnfdiag.golden",
    "Recorder": "clnfdiag.trace",
    "compare_traces": "clnfdiag.compare.comparator",
    "FAULTS": "clnfdiag.faults",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clnfdiag' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
