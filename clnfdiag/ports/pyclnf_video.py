"""pyclnf's video mode on the CCNF path, tracked frame by frame and judged against the C++.

pyclnf (0.4.1) runs *video mode* by default: each frame's fit starts from the
previous frame's parameters, the tracking windows 9 and 7 follow the first
frame (its ``window_sizes_small`` 0, 9, 7, 0 mapped to the scales 0.35 and
0.5), and a failure count triggers re-detection. Its own ``CLNF`` class fits
with CEN experts, whose weights it downloads; the CCNF path it also carries is
what :mod:`clnfdiag.ports.pyclnf` plugs, stage by stage, into clnfdiag's fit
loop. This module runs that adapter inside clnfdiag's
:class:`~clnfdiag.tracking.Tracker`, i.e. OpenFace's video state machine with
pyclnf's CCNF stages for the main model:

* the tracking rules (warm start, windows, failures, re-initialisation) are
  OpenFace's, which pyclnf's video mode follows for these runs (same windows,
  no failures). pyclnf's own template tracking (on by default in pyclnf) and
  its CNN validator are *not* used: the C++ references were made with both off,
  so the measured drift is pyclnf's CCNF arithmetic alone;
* hierarchical refinement, when on, uses clnfdiag's part models (the adapter
  ports the main model only).

:func:`frame0_divergence` says where the drift starts: frame 0 of a run is a
single-image fit from the box (bit-identical to the C++ in clnfdiag), so it is
written as a golden case from clnfdiag's own trace and the comparator judges
the port on it, giving the first stage that diverges and that stage's replayed
impact.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..fitter import Fitter

#: The port spec of pyclnf's CCNF adapter (:data:`clnfdiag.ports.PORTS`).
PYCLNF = "pyclnf"


def port_fitter(fitter: Fitter, port: str = PYCLNF) -> Fitter:
    """A Fitter on the same model whose main-model stages are the port's."""
    from . import load_port
    return Fitter(fitter.model, main_ops=load_port(port))


def frame0_divergence(run: Any, fitter: Fitter, port: str = PYCLNF, models: str | Path | None = None,
                      noise_runs: int = 16) -> dict:
    """The first stage at which the port's frame-0 fit leaves OpenFace's, with its impact.

    Frame 0 of a box-initialised run is OpenFace's single-image fit from the
    run's initial box; clnfdiag's trace of it (bit-identical to the C++ on the
    shared references) is written as a golden case in a temporary folder and
    compared with the port's fit in both modes.

    Parameters
    ----------
    run : clnfdiag.compare.sequence.SequenceRun
    fitter : Fitter
        clnfdiag's own.
    port : str
    models : path, optional
        The model folder (for the comparator's producer).
    noise_runs : int
        Perturbed fits of the propagated mode's noise envelope.

    Returns
    -------
    dict
        ``isolated`` and ``propagated``: each ``first_divergent_stage``,
        ``outcome``, ``landmarks_max_px`` (propagated), ``impact_px`` and the
        comparator's top three ``causes`` (stage kinds ranked by their landmark
        move, named after a known fault when they match one).
    """
    from .. import __version__
    from ..compare.comparator import run as run_compare
    from ..compare.producers import FitProducer
    from ..compare.tolerances import load_tolerances
    from ..fitter import read_image
    from ..golden import write_case
    from ..parameters import preset

    # The box overload's first frame is one fit from the box: no multi-view hypotheses.
    params = preset(run.preset).with_overrides(refine_hierarchical=run.hierarchical, multi_view=False)
    img = read_image(run.frames[0])
    result = fitter.fit(img, bbox=run.initial_box, parameters=params, trace=True)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clnfdiag-frame0-") as tmp:
        case = write_case(tmp, "frame0", run.frames[0], run.initial_box, params.preset,
                          params.to_manifest(fitter.main.patch_scales), result.stages,
                          result.result_manifest(), f"clnfdiag {__version__} (frame 0 of {run.name})",
                          fitter.model.files, source=str(run.frames[0]),
                          model_root=str(fitter.model.model_dir))
        producer = FitProducer(models, (), port, noise_runs)
        tol = load_tolerances(None, profile="port")
        for res in run_compare([case], producer, ("isolated", "propagated"), tol, "stages",
                               impact=producer.replays.impact, envelope=producer.replays.envelope,
                               signature=producer.replays.signature, causes=True,
                               cause_impact=producer.cause_impact):
            mode = getattr(res, "mode", None)
            if mode is None:
                out["error"] = getattr(res, "line", lambda: str(res))()
                continue
            stage = res.first_divergent_stage
            imp = res.impact or {}
            out[mode] = {"first_divergent_stage": stage, "outcome": res.outcome,
                         "landmarks_max_px": res.observed.get("landmarks_max_px"),
                         "impact_px": imp.get("landmarks_max_px"),
                         "causes": [c.line() for c in (res.causes or [])[:3]]}
    return out


__all__ = ["port_fitter", "frame0_divergence", "PYCLNF"]
