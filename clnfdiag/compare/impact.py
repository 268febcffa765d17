"""Impact: does a diverging stage reach the mean-shifts and the final landmarks?

The candidate's value of the diverging stage (or the values of several
stages, for a cause: every stage of one kind) is carried through the rest of
the fit: the golden's pass is replayed from its own inputs (parameters
entering the pass) with those stages replaced, and every later stage and pass
is computed by clnfdiag. The baseline is the same replay without replacement,
which is the golden itself bit for bit (clnfdiag reproduces every golden stage
on any CPU: the ``--exact`` gate), so what is measured is the effect of the
stages' difference alone. The baseline depends only on the pass the replay
starts from, so it is made once per case and pass.

Whether a move counts is the comparator's business: it judges it against the
case's rounding noise (its envelope band, or its C++ floor).
"""
from __future__ import annotations

import numpy as np

from ..clnf.loop import fit_passes
from ..fitter import Fitter
from ..golden import GoldenCase
from ..keys import kind_of, pass_of
from ..trace import Feeding
from .propagated import case_parameters, propagated_trace

F32 = np.float32

#: Stage kinds that are outputs only: nothing downstream reads them.
_TERMINAL_KINDS = frozenset({"landmark_likelihoods", "shape_change_norm", "n_updates", "final_global",
                             "final_local", "visibilities", "window_size", "scale_index"})


def _terminal(stage_key: str) -> bool:
    return stage_key.startswith(("final/", "input/")) or kind_of(stage_key) in _TERMINAL_KINDS


def replay(overrides: dict[str, np.ndarray]) -> Feeding:
    """The hook of an impact replay: the stages named in ``overrides`` go on with those values."""
    return Feeding(overrides.get)


def _replay(case: GoldenCase, fitter: Fitter, start_pass: int,
            overrides: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fit from the golden's inputs to ``start_pass`` with some stages replaced.

    Parameters entering the pass (``passN/params_*_in``, ``init/params_*``) are
    themselves overridable: they are where the replay starts.
    """
    p = case_parameters(case)
    gray = case.stage("input/gray").astype(F32)
    src = f"pass{start_pass}/params_{{}}_in" if start_pass > 0 else "init/params_{}"
    g = np.asarray(overrides.get(src.format("global"), case.stage(src.format("global"))), F32)
    loc = np.asarray(overrides.get(src.format("local"), case.stage(src.format("local"))), F32)
    hook = replay(overrides)
    out = fit_passes(fitter.main, gray, g, loc, p, hook, start_pass=start_pass)
    landmarks = fitter.main.shape_2d(out.params_local, out.params_global)
    return landmarks, hook.stages


def _first_mean_shift_diff(cand: dict[str, np.ndarray], base: dict[str, np.ndarray],
                           stage_key: str) -> float:
    """Change of the first image-frame mean-shifts after ``stage_key`` that it changes at all.

    The direct effect of the stage: later iterations also carry the drift of the
    trajectory, which is the landmark impact's business. A stage read only by the
    update (the NU-RLMS weights) reaches the mean-shifts of the next iteration, not
    those computed just after it, hence the first that differs.
    """
    keys = list(base)
    start = keys.index(stage_key) if stage_key in base else 0
    for k in keys[start:]:
        if k.endswith("/mean_shifts") and k in cand:
            d = float(np.linalg.norm(cand[k] - base[k], axis=-1).max())
            if d != 0:
                return d
    return 0.0


def impact(case: GoldenCase, candidate: dict[str, np.ndarray], stage_keys: str | tuple[str, ...],
           fitter: Fitter, baselines: dict | None = None) -> dict[str, float]:
    """Effect of the candidate's ``stage_keys`` on the mean-shifts and final landmarks.

    Parameters
    ----------
    case : GoldenCase
    candidate : dict
        The candidate trace.
    stage_keys : str or tuple of str
        The stages swapped in (a tuple: all together, replayed from the first's pass).
    fitter : Fitter
        clnfdiag's own CLNF.
    baselines : dict, optional
        Cache of baseline replays ``{(case path, start pass): (landmarks, trace)}``
        shared by the calls of one case.

    Returns
    -------
    dict
        ``mean_shifts_max_px``: largest change of the first image-frame
        mean-shifts computed after the first stage; ``landmarks_max_px``: largest
        change of a final landmark (main model, before any hierarchical refinement).
    """
    keys = (stage_keys,) if isinstance(stage_keys, str) else tuple(stage_keys)
    keys = tuple(k for k in keys if k in candidate)
    none = {"mean_shifts_max_px": 0.0, "landmarks_max_px": 0.0}
    if not keys:
        return none
    first = keys[0]
    if first == "final/landmarks":
        d = np.linalg.norm(candidate[first] - case.stage(first), axis=-1).max()
        return {"mean_shifts_max_px": 0.0, "landmarks_max_px": float(d)}
    if first.startswith("hierarchical/"):
        return _hierarchical_impact(case, candidate, first, fitter)
    keys = tuple(k for k in keys if not _terminal(k) and not k.startswith("hierarchical/"))
    if not keys:
        return none
    start = pass_of(keys[0]) or 0
    cache = baselines if baselines is not None else {}
    slot = (str(case.path), start)
    if slot not in cache:
        cache[slot] = _replay(case, fitter, start, {})
    base_lm, base_tr = cache[slot]
    cand_lm, cand_tr = _replay(case, fitter, start, {k: np.asarray(candidate[k]) for k in keys})
    return {"mean_shifts_max_px": _first_mean_shift_diff(cand_tr, base_tr, keys[0]),
            "landmarks_max_px": float(np.linalg.norm(cand_lm - base_lm, axis=-1).max())}


def fit_impact(case: GoldenCase, fitter: Fitter) -> dict[str, float]:
    """Effect of a changed implementation: ``fitter`` (clnfdiag with some stage methods swapped,
    :class:`clnfdiag.ports.SwappedOps`) fits the case end to end, as propagated mode does.

    clnfdiag's own fit is the golden bit for bit, so the golden is the baseline: the
    largest final-landmark move and the first image-frame mean-shifts that differ.
    """
    trace = propagated_trace(case, fitter)
    golden = {k: case.stage(k) for k in case.keys() if k.endswith("/mean_shifts")}
    moved = np.linalg.norm(np.asarray(trace["final/landmarks"], np.float64)
                           - case.stage("final/landmarks"), axis=-1).max()
    first = next(iter(golden), None)
    ms = _first_mean_shift_diff(trace, golden, first) if first is not None else 0.0
    return {"mean_shifts_max_px": ms, "landmarks_max_px": float(moved)}


def _hierarchical_impact(case: GoldenCase, candidate: dict[str, np.ndarray], stage_key: str,
                         fitter: Fitter) -> dict[str, float]:
    """Replay the refinement from the golden's main result with one part result replaced."""
    if stage_key == "hierarchical/parts_used" or stage_key not in candidate:
        return {"mean_shifts_max_px": 0.0, "landmarks_max_px": 0.0}
    last = case.n_passes - 1
    g = case.stage(f"pass{last}/nonrigid/final_global")
    loc = case.stage(f"pass{last}/nonrigid/final_local")
    before = case.stage("hierarchical/landmarks_before")
    gray = case.stage("input/gray").astype(F32)
    runs = [fitter.refine(gray, before, g, loc, replay({stage_key: np.asarray(v)}))
            for v in (case.stage(stage_key), candidate[stage_key])]
    moved = np.linalg.norm(runs[1][0] - runs[0][0], axis=-1).max()
    # Part fits have no mean-shift stage in the golden: only the landmarks are measured.
    return {"mean_shifts_max_px": 0.0, "landmarks_max_px": float(moved)}
