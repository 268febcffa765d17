"""Isolated mode: every stage recomputed by clnfdiag from the golden's own inputs to that stage.

The fit runs through the one fit loop with a hook that records each stage
value it computes and then hands the loop the golden's value of that stage
instead: responses are computed from the golden areas of interest,
mean-shifts from the golden responses and offsets, updates from the golden
mean-shifts and Jacobians, and so on. An error in one stage can therefore
neither hide in nor cascade into the next: what diverges here is the stage
itself. The loop also follows the golden's control flow (its iterations stop
where the golden's shape-change norms say). Known faults act on the stage they
corrupt; a hierarchical case's refinement starts from the golden main result.
"""
from __future__ import annotations

import numpy as np

from ..faults import NO_FAULTS
from ..fitter import Fitter, to_gray
from ..golden import GoldenCase
from ..trace import Feeding
from .propagated import case_parameters


def feed_golden(case: GoldenCase) -> Feeding:
    """The hook of isolated mode: every stage the golden holds goes on with the golden's value."""
    return Feeding(lambda key: case.stage(key) if case.has(key) else None)


def isolated_trace(case: GoldenCase, fitter: Fitter,
                   faults: frozenset[str] = NO_FAULTS) -> dict[str, np.ndarray]:
    """Recompute every stage of a golden case from the golden's inputs to it.

    Parameters
    ----------
    case : GoldenCase
        Any golden; for a hierarchical one the refinement is fed the golden's
        main-model result (``hierarchical/landmarks_before``) and the final
        refit the golden's part results.
    fitter : Fitter
        Holds the loaded model.
    faults : frozenset[str]
        Known faults to inject.

    Returns
    -------
    dict[str, ndarray]
        Candidate stages under the golden keys.
    """
    hook = feed_golden(case)
    gray = to_gray(case.load_image(), case.image_path)
    fitter.fit_gray(gray, case.bbox, case_parameters(case), hook, faults)
    return hook.stages
