"""Propagated mode: clnfdiag fits from the golden's image and box only, end to end.

The fit uses the parameters stated in the golden's manifest (preset, windows,
sigma, reg, weight factor, iterations, hierarchical refinement), never a
command's defaults, and records every stage under the golden keys.
"""
from __future__ import annotations

import numpy as np

from ..faults import NO_FAULTS
from ..fitter import Fitter
from ..golden import GoldenCase
from ..parameters import FitParameters


def case_parameters(case: GoldenCase) -> FitParameters:
    """The fitting parameters a golden case was made with."""
    return FitParameters.from_manifest(case.parameters, case.preset)


def propagated_trace(case: GoldenCase, fitter: Fitter,
                     faults: frozenset[str] = NO_FAULTS) -> dict[str, np.ndarray]:
    """Fit the case's image from its box and return the full trace.

    Returns
    -------
    dict[str, ndarray]
        Every stage under the golden keys.
    """
    result = fitter.fit(case.load_image(), case.bbox, case_parameters(case), trace=True,
                        faults=faults)
    return result.stages
