"""Compare a candidate trace with a golden case stage by stage, and run that over many cases.

A **trace** is a mapping ``key -> array`` in the golden vocabulary
(``pass0/response_raw``, ``pass0/rigid/iter03/mean_shifts``, ``final/landmarks`` ...).
:func:`compare_traces` compares every golden key the candidate has, in the
golden manifest's order (execution order), and finds the first stage beyond
tolerance. :func:`run` streams cases through a **producer** (a callable
``producer(case, mode) -> trace``) and yields one
:class:`~clnfdiag.compare.struct.CaseComparison` per case and mode, in input
order, keeping only the small per-stage results.

The comparator only judges: the producers (clnfdiag's fit, a port, written
traces) are in :mod:`clnfdiag.compare.producers`, above it.
"""
from __future__ import annotations

import gc
import math
import multiprocessing
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from ..errors import ClnfdiagError, ClnfdiagWarning, InputError
from ..golden import GoldenCase, read_case
from ..keys import PHASES, StageKey, iteration_of, kind_of, parse
from ..processes import ignore_interrupts, interrupts_blocked, interrupts_deferred, terminate_workers
from . import metrics
from .struct import (BEYOND_NOISE, DIVERGED, IDENTICAL, MAP_FIELDS, PASS, WITHIN_NOISE, CaseComparison,
                     CaseFailure, Cause, ConvergenceRow, Envelope, StageResult)
from .tolerances import (MODES, Tol, Tolerances, default_tolerances, landmark_floor, landmark_tolerance,
                         noise_tolerance)

GATES = ("stages", "landmarks")
#: Key of the final landmarks, the end-to-end result.
FINAL_LANDMARKS = "final/landmarks"
#: Keys of the fit's results (``final/landmarks`` ...): never ranked as causes.
RESULT_PREFIX = "final/"


#: ``impact(stage_keys) -> {"mean_shifts_max_px", "landmarks_max_px"}`` bound to one case and
#: candidate: the effect of the candidate's values of ``stage_keys`` (a key or a tuple of keys).
StageImpact = Callable[[str | tuple[str, ...]], Mapping[str, float] | None]
#: ``impact(case, candidate, stage_keys) -> {...}``, bound per case by :func:`run`.
CaseImpact = Callable[[GoldenCase, Mapping[str, np.ndarray], str | tuple[str, ...]], Mapping[str, float] | None]
#: ``signature(stage_keys) -> fault name or None``: the known fault whose values of the stages
#: (a key or a tuple of keys of one kind) the candidate's match, bound to one case and candidate.
StageSignature = Callable[[str | tuple[str, ...]], str | None]
#: ``signature(case, candidate, stage_keys)``, bound per case by :func:`run`.
CaseSignature = Callable[[GoldenCase, Mapping[str, np.ndarray], str | tuple[str, ...]], str | None]
#: ``envelope(case) -> Envelope or None``: the case's measured rounding noise.
CaseEnvelope = Callable[[GoldenCase], Envelope | None]
#: ``producer(case, mode) -> trace``.
Producer = Callable[[GoldenCase, str], Mapping[str, np.ndarray]]


# --------------------------------------------------------------------------- keys

@lru_cache(maxsize=65536)
def parse_key(key: str) -> StageKey:
    """A stage key's parts (:func:`clnfdiag.keys.parse`); a part model's own-fit key keeps
    only its kind (its pass is the part's, not the main model's)."""
    sk = parse(key)
    return sk if sk.part is None else StageKey(sk.name, part=sk.part)


# --------------------------------------------------------------------------- one stage

def compare_stage(key: str, golden: np.ndarray, candidate: np.ndarray, tol: Tol,
                  visible: np.ndarray | None = None, n_landmarks: int = 68) -> StageResult:
    """Compare one stage.

    Parameters
    ----------
    key : str
        Golden key.
    golden, candidate : numpy.ndarray
        The two values; different shapes give a stage beyond tolerance with
        infinite errors and a ``note``.
    tol : Tol
        Tolerance of the stage.
    visible : numpy.ndarray, optional
        (n,) visibilities for map stages (golden ``passN/visibilities``).
    n_landmarks : int
        Landmark count, to map vector rows (n or 2n) to landmarks.

    Returns
    -------
    StageResult
    """
    info = parse_key(key)
    golden = np.asarray(golden)
    candidate = np.asarray(candidate)
    fam = metrics.family(info.kind, golden.shape)
    res = StageResult(stage=key, kind=info.kind, family=fam, pass_index=info.pass_index, phase=info.phase,
                      iteration=info.iteration, shape=tuple(golden.shape), atol=tol.atol, rtol=tol.rtol)
    if golden.shape != candidate.shape:
        inf = math.inf
        res.max_abs = res.rms = res.max_rel = res.ratio = inf
        res.within_tolerance, res.n_beyond = False, 1
        res.note = f"shape {tuple(candidate.shape)} differs from golden {tuple(golden.shape)}"
        res.outcome = BEYOND_NOISE
        return res
    if fam == "map":
        fields = metrics.compare_maps(golden, candidate, tol, _visible_for(visible, golden.shape[0]))
    elif fam == "points":
        fields = metrics.compare_points(golden, candidate, tol, info.kind)
    elif fam == "scalar":
        fields = metrics.compare_scalars(golden, candidate, tol)
    else:
        fields = metrics.compare_vectors(golden, candidate, tol, info.kind, n_landmarks)
    for name, value in fields.items():
        setattr(res, name, value)
    if candidate.dtype.kind == "f":
        n_nan = int(np.count_nonzero(np.isnan(candidate)))
        if n_nan:  # the metrics count a NaN as an infinite error; say where it came from
            res.note = f"{n_nan} NaN value(s) in the candidate"
    res.outcome = (BEYOND_NOISE if not res.within_tolerance
                   else IDENTICAL if res.max_abs == 0 else WITHIN_NOISE)
    return res


def _visible_for(visible: np.ndarray | None, n: int) -> np.ndarray | None:
    """Visibilities when they fit the map count (a part model's maps may not), else None (all)."""
    if visible is None:
        return None
    v = np.asarray(visible).ravel()
    return v if v.shape[0] == n else None


# --------------------------------------------------------------------------- one case

def compare_traces(golden: GoldenCase, candidate: Mapping[str, Any], mode: str = "isolated",
                   tolerances: Tolerances | None = None, gate: str = "stages",
                   impact: StageImpact | None = None, impact_stages: int = 1,
                   envelope: Envelope | None = None, signature: StageSignature | None = None,
                   causes: bool = False, cause_impact: StageImpact | None = None) -> CaseComparison:
    """Compare a candidate trace with a golden case, stage by stage in execution order.

    Parameters
    ----------
    golden : GoldenCase
        The reference.
    candidate : mapping str -> array_like
        The trace to judge; golden keys it lacks are listed in
        ``missing_keys`` (not a failure), except ``final/landmarks``.
    mode : {"isolated", "propagated"}
        Selects the tolerances: isolated stages at the profile's rounding level;
        propagated ones against the case's noise envelope (``envelope``), the
        final landmarks at the largest of 0.01 px, the envelope's band and twice
        the C++ noise floor (CPP_FLOOR.json, found by case id).
    tolerances : Tolerances, optional
        Default: the shipped defaults.
    gate : {"stages", "landmarks"}
        ``stages``: the case diverges when any stage is beyond tolerance.
        ``landmarks``: only when ``final/landmarks`` is, or when the impact of
        the first divergent stage (isolated mode: or of a cause) moves the
        landmarks beyond the case's noise.
    impact : callable, optional
        ``impact(stage_keys) -> {"mean_shifts_max_px", "landmarks_max_px"}``;
        called for the first ``impact_stages`` divergent stages to fill their
        ``reaches_landmarks``, and per cause. It may raise NotImplementedError
        (left unknown).
    impact_stages : int
        How many divergent stages (in order) get an impact evaluation.
    envelope : Envelope, optional
        The case's measured rounding noise (:mod:`clnfdiag.compare.noise`);
        ignored by bit-exact tolerances.
    signature : callable, optional
        ``signature(stage_keys) -> fault name or None`` for the causes.
    causes : bool
        Rank every stage kind beyond tolerance by its replayed impact (needs ``impact``).
    cause_impact : callable, optional
        The impact function of the causes (default ``impact``): a port's producer swaps the
        port's methods of a kind into clnfdiag's fit instead of its values.

    Returns
    -------
    CaseComparison

    Raises
    ------
    InputError
        Unknown mode or gate; a candidate value that is not numeric; a
        candidate without ``final/landmarks`` when the golden has them.
    """
    _check_choice("mode", mode, MODES)
    _check_choice("gate", gate, GATES)
    tolerances = tolerances or default_tolerances()
    if tolerances.bit_exact:
        envelope = None  # bit identity allows no noise
    trace = as_trace(candidate, golden.case_id)
    gkeys = golden.keys()
    if golden.has(FINAL_LANDMARKS) and FINAL_LANDMARKS not in trace:
        raise InputError(f"candidate trace has no {FINAL_LANDMARKS}; the case cannot be judged",
                         where=golden.case_id)
    floor, floor_file = landmark_floor(golden.path, golden.case_id)
    band = envelope.band_px if envelope is not None else None
    lm_tol = landmark_tolerance(tolerances, mode, floor, band)
    n_lm = _n_landmarks(golden)
    bands = envelope.stage_bands if envelope is not None and mode == "propagated" else {}
    stages = _compare_keys(golden, trace, [key for key in gkeys if key in trace], mode, tolerances, lm_tol,
                           n_lm, bands)
    noise, source = _noise_floor(band, floor, floor_file, envelope)
    cmp = CaseComparison(
        case=golden.case_id, mode=mode, gate=gate, stages=stages,
        missing_keys=[k for k in gkeys if k not in trace],
        extra_keys=[k for k in trace if not golden.has(k)],
        landmark_tolerance_px=_landmark_allowed(golden, lm_tol),
        noise_floor_px=noise, noise_floor_source=source, cpp_floor_px=floor,
        landmark_band_px=list(envelope.landmark_band_px) if envelope is not None else [],
        golden_path=str(golden.path),
    )
    divergent = cmp.divergent_stages
    cmp.first_divergent_stage = divergent[0].stage if divergent else None
    # Impact compares two replays of one implementation, with and without the stage: a
    # move within what rounding alone makes of this case (its envelope band, or the C++
    # floor: two builds differing only in rounding land that far apart) is not an effect.
    impact_allowed = max(tolerances.get("landmarks", "isolated").atol, noise or 0.0)
    if impact is not None:
        _evaluate_impact(divergent[:max(0, impact_stages)], impact, impact_allowed)
        cmp.impact = divergent[0].impact if divergent else None
        if causes:
            cmp.causes = rank_causes(divergent, trace, mode, cause_impact or impact, signature, impact_allowed)
    cmp.verdict = _verdict(cmp)
    cmp.outcome = (BEYOND_NOISE if not cmp.passed
                   else IDENTICAL if all(s.outcome == IDENTICAL for s in stages) else WITHIN_NOISE)
    cmp.observed = observed_errors(stages)
    cmp.convergence = convergence_rows(golden, trace, bands)
    return cmp


def _noise_floor(band: float | None, floor: float | None, floor_file: str | None,
                 envelope: Envelope | None) -> tuple[float | None, str | None]:
    """The case's final-landmark rounding noise and its source: the larger of the envelope's
    band and the C++ floor (a lower bound)."""
    if band is None and floor is None:
        return None, None
    if floor is not None and (band is None or floor > band):
        return floor, floor_file
    return band, envelope.source if envelope is not None else None


def _group_key_of(key: str) -> str:
    """A cause's stage kind: the kind, prefixed by the part model for a part's own stage."""
    sk = parse(key)
    return sk.kind if sk.part is None else f"{sk.part}/{sk.kind}"


def rank_causes(divergent: list[StageResult], trace: Mapping[str, np.ndarray], mode: str,
                impact: StageImpact, signature: StageSignature | None,
                allowed_px: float) -> list[Cause]:
    """Every stage kind beyond tolerance, with its replayed impact, largest first ("fix these first").

    In isolated mode each stage was computed from the golden's inputs, so the
    candidate's values of a kind are its own error at every stage: all of them,
    from the first one beyond tolerance on, are swapped in together. In propagated
    mode later values also carry the drift of earlier stages, so only the first
    stage of the kind is swapped in.

    Parameters
    ----------
    divergent : list of StageResult
        Stages beyond tolerance, in execution order (``final/`` results are skipped).
    trace : mapping
        The candidate trace (for the keys of each kind).
    mode : str
    impact : callable
        ``impact(stage_keys)``.
    signature : callable or None
        ``signature(stage_keys)``: the known fault the swapped stages match.
    allowed_px : float
        A landmark move up to this is within the case's rounding noise.

    Returns
    -------
    list of Cause
        Sorted by landmark impact, then mean-shift impact (unknown last).
    """
    firsts: dict[str, StageResult] = {}
    for s in divergent:
        # The fit's results are what the causes explain, not causes themselves.
        if not s.stage.startswith(RESULT_PREFIX):
            firsts.setdefault(_group_key_of(s.stage), s)
    out: list[Cause] = []
    keys = list(trace)
    for group, first in firsts.items():
        swap: str | tuple[str, ...] = first.stage
        if mode == "isolated" and parse(first.stage).part is None and first.stage in trace:
            start = keys.index(first.stage)
            swap = tuple(k for k in keys[start:] if _group_key_of(k) == group)
        try:
            res = impact(swap)
        except NotImplementedError:
            res = None
        cause = Cause(group, first.stage)
        if res is not None:
            cause.landmarks_impact_px = float(res.get("landmarks_max_px", math.nan))
            cause.mean_shifts_impact_px = float(res.get("mean_shifts_max_px", math.nan))
            cause.beyond_noise = bool(not cause.landmarks_impact_px <= allowed_px)
        if signature is not None:
            cause.known_fault = signature(swap)
        out.append(cause)

    def order(c: Cause) -> tuple[float, float]:
        def v(x: float | None) -> float:
            return -1.0 if x is None or math.isnan(x) else x
        return (-v(c.landmarks_impact_px), -v(c.mean_shifts_impact_px))

    return sorted(out, key=order)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def as_trace(candidate: Mapping[str, Any], where: str = "") -> dict[str, np.ndarray]:
    """The candidate as ``{key: ndarray}``; InputError for a non-string key or a non-numeric value."""
    out: dict[str, np.ndarray] = {}
    for key, value in candidate.items():
        if not isinstance(key, str):
            raise InputError(f"stage key {key!r} is not a string", where=where)
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise InputError(f"candidate stage is not a numeric array (dtype {arr.dtype})", where=f"{where}: {key}")
        out[key] = arr
    return out


def _n_landmarks(golden: GoldenCase) -> int:
    for key in ("init/shape", FINAL_LANDMARKS):
        if golden.has(key):
            return int(golden.manifest["stages"][key]["shape"][0])
    return 68


def _stage_tol(key: str, kind: str, mode: str, tolerances: Tolerances, lm_tol: Tol,
               bands: Mapping[str, float]) -> Tol:
    """The tolerance a stage is judged at: the final landmarks' own, a propagated stage's
    isolated tolerance raised to its envelope band, else the mode's table."""
    band = bands.get(key)
    if key == FINAL_LANDMARKS:
        return lm_tol
    if band is not None:
        return noise_tolerance(tolerances.get(kind, "isolated"), band)
    return tolerances.get(kind, mode)


def _compare_keys(golden: GoldenCase, trace: dict[str, np.ndarray], keys: list[str], mode: str,
                  tolerances: Tolerances, lm_tol: Tol, n_lm: int, bands: Mapping[str, float]) -> list[StageResult]:
    """Every stage of ``keys`` compared, in that order; the same results as :func:`compare_stage`
    key by key, computed one batch per (family, kind, shape, dtypes[, visibilities]) group.

    A trace holds ~500 stages of tens of values each: per stage, numpy's call overhead
    was almost all of the comparison's time. The stages of a group are stacked and
    judged in one pass (:func:`metrics.batch_within`, :func:`metrics.batch_maps`); a
    stage that is not entirely within tolerance (it needs its worst landmarks, counts
    and notes), a shape that differs from the golden's and an empty stage go through
    :func:`compare_stage`, whose arithmetic the batches reproduce bit for bit.
    """
    out: list[StageResult | None] = [None] * len(keys)
    infos = [parse_key(key) for key in keys]
    kinds = [kind_of(key) for key in keys]  # parse_key(key).kind, without the parse
    garr = [golden.stage(key) for key in keys]
    tols = [_stage_tol(key, kind, mode, tolerances, lm_tol, bands) for key, kind in zip(keys, kinds)]
    groups: dict[tuple, list[int]] = {}
    visibles: dict[tuple, np.ndarray | None] = {}
    for i, key in enumerate(keys):
        g, c = garr[i], trace[key]
        shape = g.shape
        fam = metrics.family(kinds[i], shape)
        if shape != c.shape or not g.size:
            out[i] = _compare_key(golden, trace, key, mode, tolerances, lm_tol, n_lm, bands)
            continue
        # A map's metrics do not depend on its kind: the maps of one pass (raw, Sigma, post-shift)
        # form one group.
        group: tuple = (fam, kinds[i] if fam != "map" else None, shape, g.dtype.str, c.dtype.str)
        if fam == "map":
            vis = _visible_for(_map_visibilities(golden, infos[i]), shape[0])
            group += (None if vis is None else vis.astype(bool).tobytes(),)
            visibles[group] = vis
        groups.setdefault(group, []).append(i)
    for group, idx in groups.items():
        fam, kind, shape = group[:3]
        stacked = (np.stack([garr[i] for i in idx]), np.stack([trace[keys[i]] for i in idx]))
        atol = np.array([tols[i].atol for i in idx], np.float64)
        rtol = np.array([tols[i].rtol for i in idx], np.float64)
        if fam == "map":
            fields = metrics.batch_maps(*stacked, visibles[group], atol, rtol)
            per_landmark = list(MAP_FIELDS)
        else:
            fields = metrics.batch_within(fam, kind, *stacked, atol, rtol)
            per_landmark = ["error_px"] if fam == "points" else []
        shared = {}
        if fields.get("identical"):
            for name in _SHARED.intersection(per_landmark):
                shared[name] = fields[name][0]
                shared[name].flags.writeable = False
        within = fields["within"].tolist()
        max_abs, rms = fields["max_abs"].tolist(), fields["rms"].tolist()
        max_rel, ratio = fields["max_rel"].tolist(), fields["ratio"].tolist()
        shape_t = tuple(shape)
        for j, i in enumerate(idx):
            key = keys[i]
            if not within[j]:
                out[i] = _compare_key(golden, trace, key, mode, tolerances, lm_tol, n_lm, bands)
                continue
            info, tol = infos[i], tols[i]
            res = StageResult(
                stage=key, kind=kinds[i] if kind is None else kind, family=fam, pass_index=info.pass_index,
                phase=info.phase, iteration=info.iteration, shape=shape_t, max_abs=max_abs[j], rms=rms[j],
                max_rel=max_rel[j], ratio=ratio[j], atol=tol.atol, rtol=tol.rtol,
                within_tolerance=True, n_beyond=0, worst_landmarks=[],
                noise_band_px=bands.get(key), outcome=IDENTICAL if max_abs[j] == 0 else WITHIN_NOISE)
            for name in per_landmark:
                setattr(res, name, shared[name] if name in shared else fields[name][j])
            out[i] = res
    return out  # type: ignore[return-value]


#: Per-landmark arrays that are the same for every stage of a group whose stages all have the
#: golden's bits (zeros, ones, NaN where invisible): the stages share one array, so that a run
#: keeps (and a worker sends) one copy per group, not one per stage. Read them, never write them.
_SHARED = frozenset({"error_px", "max_abs_per_landmark", "peak_shift_px", "rel_per_landmark", "peak_ratio"})


def _map_visibilities(golden: GoldenCase, info: StageKey) -> np.ndarray | None:
    """The golden's ``passN/visibilities`` of a map stage's pass (None when it has none)."""
    if info.kind in metrics.MAP_KINDS and info.pass_index is not None:
        vkey = f"pass{info.pass_index}/visibilities"
        return golden.stage(vkey) if golden.has(vkey) else None
    return None


def _compare_key(golden: GoldenCase, trace: dict[str, np.ndarray], key: str, mode: str,
                 tolerances: Tolerances, lm_tol: Tol, n_lm: int, bands: Mapping[str, float]) -> StageResult:
    info = parse_key(key)
    band = bands.get(key)
    tol = _stage_tol(key, info.kind, mode, tolerances, lm_tol, bands)
    res = compare_stage(key, golden.stage(key), trace[key], tol, _map_visibilities(golden, info), n_lm)
    res.noise_band_px = band
    return res


def _landmark_allowed(golden: GoldenCase, lm_tol: Tol) -> float:
    """Allowed final-landmark error in px (atol + rtol * extent of the golden landmarks)."""
    if not golden.has(FINAL_LANDMARKS) or lm_tol.rtol == 0:
        return lm_tol.atol
    return float(lm_tol.allowed(metrics.point_scale(golden.stage(FINAL_LANDMARKS), "landmarks")))


def _evaluate_impact(stages: list[StageResult], impact: StageImpact, allowed: float) -> None:
    for s in stages:
        try:
            res = impact(s.stage)
        except NotImplementedError:
            res = None
        if res is None:
            continue
        s.impact = {k: float(v) for k, v in dict(res).items()}
        s.impact["noise_floor_px"] = allowed
        px = s.impact.get("landmarks_max_px")
        s.reaches_landmarks = None if px is None else bool(not px <= allowed)


def _verdict(cmp: CaseComparison) -> str:
    if cmp.gate == "stages":
        return DIVERGED if cmp.first_divergent_stage else PASS
    final = next((s for s in cmp.stages if s.stage == FINAL_LANDMARKS), None)
    if final is not None and not final.within_tolerance:
        return DIVERGED
    # The impact verdicts were already judged against the case's rounding noise: reuse them,
    # one rule only. In isolated mode the trace's own final landmarks were fed the golden's
    # inputs, so the replays are the only landmark evidence: the first divergence's, and each
    # cause's (every stage of a kind swapped in, which a one-stage replay underestimates).
    first = next((s for s in cmp.stages if s.stage == cmp.first_divergent_stage), None)
    if first is not None and first.reaches_landmarks:
        return DIVERGED
    if cmp.mode == "isolated" and any(c.beyond_noise for c in cmp.causes):
        return DIVERGED
    return PASS


def observed_errors(stages: Iterable[StageResult]) -> dict[str, float | None]:
    """Errors read off the compared trace: largest mean-shift error (all iterations) and final-landmark error, px."""
    ms = [s.max_abs for s in stages if s.kind == "mean_shifts" and s.family == "points"]
    final = [s.max_abs for s in stages if s.stage == FINAL_LANDMARKS]
    return {"mean_shifts_max_px": max(ms) if ms else None, "landmarks_max_px": final[0] if final else None}


# --------------------------------------------------------------------------- convergence

@lru_cache(maxsize=65536)
def _iteration_of(key: str) -> tuple[int, str, int] | None:
    """:func:`clnfdiag.keys.iteration_of`, remembered (every case repeats the same keys)."""
    return iteration_of(key)


def convergence_rows(golden: GoldenCase, trace: Mapping[str, np.ndarray],
                     bands: Mapping[str, float] | None = None) -> list[ConvergenceRow]:
    """One row per (pass, phase, iteration) present on either side, in run order (with the
    envelope's bands of each iteration's shape and mean-shifts when ``bands`` has them).

    The RMS values of all rows are computed together (:func:`_batched_rms`), the same
    arithmetic row by row."""
    bands = bands or {}
    seen: set[tuple[int, str, int]] = set()
    for key in chain(golden.keys(), trace):
        it = _iteration_of(key)
        if it is not None:
            seen.add(it)

    def order(t: tuple[int, str, int]) -> tuple:
        phase_rank = PHASES.index(t[1]) if t[1] in PHASES else len(PHASES)
        return (t[0], phase_rank, t[1], t[2])

    rows: list[ConvergenceRow] = []
    own: list[tuple[ConvergenceRow, str, np.ndarray | None]] = []
    diffs: list[tuple[ConvergenceRow, str, np.ndarray | None, np.ndarray | None]] = []
    for p, phase, k in sorted(seen, key=order):
        prefix = f"pass{p}/{phase}/iter{k:02d}/"

        def pair(name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
            key = prefix + name
            return (golden.stage(key) if golden.has(key) else None), trace.get(key)

        row = ConvergenceRow(p, phase, k)
        g, c = pair("shape_change_norm")
        row.shape_change_norm_golden, row.shape_change_norm_candidate = _scalar(g), _scalar(c)
        g, c = pair("param_update")
        row.dp_norm_golden, row.dp_norm_candidate = _norm(g), _norm(c)
        g, c = pair("mean_shifts")
        own += [(row, "mean_shift_rms_golden", g), (row, "mean_shift_rms_candidate", c)]
        diffs.append((row, "mean_shift_rms_diff", g, c))
        diffs.append((row, "landmark_rms_diff", *pair("shape")))
        row.landmark_band_px = bands.get(prefix + "shape")
        row.mean_shift_band_px = bands.get(prefix + "mean_shifts")
        rows.append(row)
    for (row, name, _), value in zip(own, _batched_rms([a for _, _, a in own])):
        setattr(row, name, value)
    for (row, name, _, _), value in zip(diffs, _batched_rms([g for _, _, g, _ in diffs],
                                                            [c for _, _, _, c in diffs])):
        setattr(row, name, value)
    return rows


def _batched_rms(first: list[np.ndarray | None],
                 second: list[np.ndarray | None] | None = None) -> list[float | None]:
    """:func:`_points_rms` of each array of ``first``, or with ``second``, :func:`_diff_rms`
    of each pair; None where those give None.

    Computed one stacked batch per (shape, dtypes): each row's sums run over its own
    contiguous values in the order they do alone (numpy's pairwise sum; the 2-term sums
    over x and y), so every value is the per-array function's to the bit.
    """
    out: list[float | None] = [None] * len(first)
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(first):
        b = None if second is None else second[i]
        if a is None or np.ndim(a) != 2 or a.shape[0] == 0:
            continue
        if second is not None and (b is None or np.shape(b) != np.shape(a)):
            continue
        groups.setdefault((a.shape, a.dtype.str, None if b is None else np.asarray(b).dtype.str), []).append(i)
    for idx in groups.values():
        a = np.asarray(np.stack([first[i] for i in idx]), np.float64)
        if second is None:
            rms = np.sqrt(np.mean(np.sum(a * a, axis=2), axis=1))
        else:
            d = metrics.abs_diff(a, np.stack([second[i] for i in idx]))
            with np.errstate(over="ignore", invalid="ignore"):
                e = np.sqrt(np.square(d).sum(axis=2))
            with np.errstate(over="ignore"):
                rms = np.sqrt(np.mean(e * e, axis=1))
        for i, v in zip(idx, rms.tolist()):
            out[i] = v
    return out


def _scalar(a: np.ndarray | None) -> float | None:
    return None if a is None or np.size(a) != 1 else float(np.asarray(a, np.float64).ravel()[0])


def _norm(a: np.ndarray | None) -> float | None:
    return None if a is None else float(np.linalg.norm(np.asarray(a, np.float64)))


def _points_rms(a: np.ndarray | None) -> float | None:
    if a is None or np.ndim(a) != 2 or a.shape[0] == 0:
        return None
    a = np.asarray(a, np.float64)
    return float(np.sqrt(np.mean(np.sum(a * a, axis=1))))


def _diff_rms(g: np.ndarray | None, c: np.ndarray | None) -> float | None:
    if g is None or c is None or np.shape(g) != np.shape(c) or np.ndim(g) != 2 or g.shape[0] == 0:
        return None
    e = metrics.point_errors(g, c)
    with np.errstate(over="ignore"):
        return float(np.sqrt(np.mean(e * e)))


# --------------------------------------------------------------------------- many cases

@dataclass
class _Job:
    producer: Producer
    modes: tuple[str, ...]
    tolerances: Tolerances | None
    gate: str
    impact: CaseImpact | None
    verify: bool
    impact_stages: int
    keep: Callable[[str], bool] | None = None
    envelope: CaseEnvelope | None = None
    signature: CaseSignature | None = None
    causes: bool = False
    cause_impact: CaseImpact | None = None
    finish: Callable[[CaseComparison | CaseFailure], Any] | None = None


def compare_case(ref: str | Path | GoldenCase, job: _Job) -> list[Any]:
    """Every mode of one golden case; bad input becomes a CaseFailure instead of an exception.
    Each result goes through ``job.finish`` when there is one."""
    out: list[CaseComparison | CaseFailure] = []
    try:
        case = ref if isinstance(ref, GoldenCase) else read_case(ref, verify=job.verify)
    except ClnfdiagError as err:
        out.append(CaseFailure(str(ref), None, err.kind, str(err), err.exit_code))
    else:
        try:
            for mode in job.modes:
                out.append(_compare_mode(case, mode, job))
        finally:
            if not isinstance(ref, GoldenCase):
                case.close()
    return out if job.finish is None else [job.finish(r) for r in out]


def _compare_mode(case: GoldenCase, mode: str, job: _Job) -> CaseComparison | CaseFailure:
    t0 = time.perf_counter()
    try:
        trace = job.producer(case, mode)
        bound = None if job.impact is None else partial(job.impact, case, trace)
        sig = None if job.signature is None else partial(job.signature, case, trace)
        cause = None if job.cause_impact is None else partial(job.cause_impact, case, trace)
        exact = job.tolerances is not None and job.tolerances.bit_exact
        env = None if job.envelope is None or exact else job.envelope(case)
        cmp = compare_traces(case, trace, mode, job.tolerances, job.gate, bound, job.impact_stages,
                             env, sig, job.causes, cause)
    except ClnfdiagError as err:
        return CaseFailure(case.case_id, mode, err.kind, str(err), err.exit_code)
    cmp.wall_time_s = time.perf_counter() - t0
    if job.keep is not None:
        cmp.kept = {k: np.array(v) for k, v in trace.items() if job.keep(k)}
    return cmp


def run(cases: Iterable[str | Path | GoldenCase], producer: Producer, modes: Iterable[str] = ("isolated",),
        tolerances: Tolerances | None = None, gate: str = "stages", workers: int = 1,
        progress: Callable[[int, int], None] | None = None, impact: CaseImpact | None = None,
        verify: bool = True, impact_stages: int = 1,
        keep: Callable[[str], bool] | None = None, envelope: CaseEnvelope | None = None,
        signature: CaseSignature | None = None, causes: bool = False,
        cause_impact: CaseImpact | None = None,
        finish: Callable[[CaseComparison | CaseFailure], Any] | None = None) -> Iterator[Any]:
    """Compare many cases, yielding results in input order as they are ready.

    Parameters
    ----------
    cases : iterable of path or GoldenCase
        Golden case folders (GoldenCase objects are used by path when
        ``workers > 1``).
    producer : callable
        ``producer(case, mode) -> trace``; must be picklable when ``workers > 1``.
    modes : iterable of str
        ``isolated`` and/or ``propagated``; one comparison per case and mode.
    tolerances : Tolerances, optional
        Default: the shipped defaults.
    gate : {"stages", "landmarks"}
        See :func:`compare_traces`.
    workers : int
        Processes (forked where the platform can: they inherit what the producer
        already loaded, so load its model first; else spawned, each loading it
        once). The cases are started costliest first within windows of
        :data:`WINDOW_PER_WORKER` per worker (:func:`schedule`), the results still
        come in input order. Workers ignore Ctrl-C (the caller's process stops
        the pool) and do not repeat clnfdiag's warnings: read the model in the
        calling process first to see its checksum warnings.
    progress : callable, optional
        ``progress(cases_done, cases_total)`` after each case.
    impact : callable, optional
        ``impact(case, trace, stage_key) -> dict`` (see :func:`compare_traces`).
    verify : bool
        Verify every golden array when reading the case.
    impact_stages : int
        Divergent stages per comparison given an impact evaluation.
    keep : callable, optional
        ``keep(key) -> bool``: candidate arrays to keep in
        ``CaseComparison.kept`` (everything else is dropped after comparing).
        Must be picklable when ``workers > 1``.
    envelope : callable, optional
        ``envelope(case) -> Envelope``: the case's noise envelope (not called
        with bit-exact tolerances).
    signature : callable, optional
        ``signature(case, trace, stage_key) -> fault or None`` (see :func:`compare_traces`).
    causes : bool
        Rank the causes of every comparison (see :func:`rank_causes`).
    cause_impact : callable, optional
        ``cause_impact(case, trace, stage_keys)``, the causes' impact (default ``impact``).
    finish : callable, optional
        ``finish(result) -> object``, applied to each result in the process that made it
        (a worker, in a parallel run; picklable then): what it returns is yielded instead,
        so that only what the caller needs of a comparison (a line, a brief,
        :class:`~clnfdiag.compare.handoff.Handoff`) crosses between processes.

    Yields
    ------
    CaseComparison or CaseFailure, or what ``finish`` made of it
        A CaseFailure for a case or mode that could not be compared (bad
        golden, bad candidate, producer error); others go on.
    """
    modes = tuple(modes)
    for m in modes:
        _check_choice("mode", m, MODES)
    _check_choice("gate", gate, GATES)
    refs = list(cases)
    job = _Job(producer, modes, tolerances, gate, impact, verify, impact_stages, keep, envelope,
               signature, causes, cause_impact, finish)
    if workers <= 1 or len(refs) <= 1:
        for i, ref in enumerate(refs):
            results = compare_case(ref, job)
            if progress:
                progress(i + 1, len(refs))
            yield from results
        return
    refs = [r.path if isinstance(r, GoldenCase) else r for r in refs]
    if start_method() == "fork":
        # The first case here, before the pool starts: forked workers then inherit a warm
        # producer (numba's kernels loaded from their disk cache, the model's Sigma banks
        # built: about a second per process) instead of each warming its own.
        first = compare_case(refs[0], job)
        yield from _run_parallel(refs[1:], job, workers, progress and (lambda d, t: progress(d + 1, t + 1)),
                                 first=first)
        return
    yield from _run_parallel(refs, job, workers, progress)


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job
    ignore_interrupts()  # the main process handles Ctrl-C and stops the pool
    # The main process read the model before starting the pool and showed its warnings once.
    warnings.simplefilter("ignore", ClnfdiagWarning)


def _worker(ref: str | Path) -> list[Any]:
    assert _WORKER_JOB is not None
    return compare_case(ref, _WORKER_JOB)


#: Cases per scheduling window of the parallel run (times the workers): within a window the
#: costliest cases start first, so no long case is left to run alone at the end; results
#: wait at most about two windows for their turn to be yielded in input order.
WINDOW_PER_WORKER = 8


def case_cost(ref: str | Path) -> int:
    """A case's expected comparison cost: the size of its stages archive in bytes.

    Comparing and fitting scale with the stages a golden holds (passes, iterations,
    window sizes, part models), and so does the archive (0 when it cannot be read).
    """
    try:
        return (Path(ref) / "stages.npz").stat().st_size
    except OSError:
        return 0


def schedule(costs: list[int], workers: int) -> list[int]:
    """The order in which to start the cases: input order cut into windows of
    ``WINDOW_PER_WORKER * workers`` cases, each window costliest first (longest processing
    time first: the last cases to finish are then the short ones, which balances the workers)."""
    size = max(1, WINDOW_PER_WORKER * workers)
    order: list[int] = []
    for lo in range(0, len(costs), size):
        order += sorted(range(lo, min(lo + size, len(costs))), key=lambda i: (-costs[i], i))
    return order


def start_method() -> str:
    """``fork`` where the platform has it: workers inherit the imported modules, the model and
    the warm kernels of the main process (no second import, load and warm-up per worker, and
    the model's pages are shared instead of copied); else ``spawn``. The fit's numerics run
    no thread of their own (numba without ``parallel``, no BLAS); OpenCV's pthreads pool is
    rebuilt in a forked child (its warps and conversions give the same bits there)."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _run_parallel(refs: list, job: _Job, workers: int, progress: Callable[[int, int], None] | None,
                  first: list[Any] | None = None) -> Iterator[Any]:
    """A process pool fed in :func:`schedule` order with a bounded look-ahead; results come
    back in input order, after ``first`` (the results of a case the caller compared before
    them), which are yielded once the pool has started: the start ignores Ctrl-C for a
    moment, so a caller reacting to the first results must find the pool already running."""
    ctx = multiprocessing.get_context(start_method())
    if ctx.get_start_method() == "fork":
        # What the main process holds now (modules, the model) is never collected while the
        # workers run: out of the collector's reach, its pages stay shared instead of being
        # copied into each worker when a collection walks them.
        gc.freeze()
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(job,))
    order = schedule([case_cost(r) for r in refs], workers)
    ahead = (WINDOW_PER_WORKER + 2) * workers
    pending: dict[int, Future] = {}
    started = 0

    def top_up() -> None:
        nonlocal started
        while started < len(order) and len(pending) < ahead:
            i = order[started]
            pending[i] = ex.submit(_worker, refs[i])
            started += 1

    # Ctrl-C is deferred while the pool's own locks may be held (submitting, shutting down):
    # raised inside them it could leave one held, and the shutdown would wait for it for ever.
    # It is taken at once while waiting for a result.
    try:
        with interrupts_blocked(), interrupts_deferred():  # the first submissions start the workers
            top_up()
        if first is not None:
            if progress:
                progress(0, len(refs))
            yield from first
        for done in range(len(refs)):
            results = pending.pop(done).result()
            with interrupts_deferred():
                top_up()
            if progress:
                progress(done + 1, len(refs))
            yield from results
    except BaseException:  # Ctrl-C, or the caller stopped reading: no result is wanted any more
        with interrupts_deferred():
            terminate_workers(ex)
        raise
    finally:
        with interrupts_deferred():
            ex.shutdown(wait=True, cancel_futures=True)
            gc.unfreeze()
