"""Compare functions per stage family, vectorised over landmarks.

Every function takes the golden and candidate arrays of one stage (already
known to have the same shape) and a :class:`~clnfdiag.compare.tolerances.Tol`,
and returns a dict of :class:`~clnfdiag.compare.struct.StageResult` fields.
Differences are computed in float64; a NaN in the candidate counts as an
infinite difference. The check is ``|c - g| <= atol + rtol * scale``, where
the golden **scale** depends on the family:

``map`` (response_raw, response_sigma, response, area_of_interest; (n, w, w))
    one check per visible landmark (golden ``passN/visibilities``) on its
    largest difference; scale = the landmark's golden peak ``max|map|``.
    Per landmark: peaks, peak ratio (candidate/golden), argmax shift in map
    pixels, Pearson correlation over the w*w values (1 when both maps are
    constant, 0 when only one is), max abs and relative difference.
``points`` ((n, 2) positions or displacements)
    per-landmark Euclidean error, px. Scale: for positions (shape, landmarks,
    landmarks_at_response, reference_shape, landmarks_before) the extent of
    the golden set ``max(x range, y range)``; for displacements (mean_shifts,
    mean_shifts_ref) the largest golden displacement norm.
``vector`` (everything else with ndim >= 1)
    elementwise; scale = max|golden| over the elements sharing a unit: the
    6 global parameters split into scale | rotations | translations, the
    local parameters together, a Jacobian column by column, else the whole
    array. Rows map to landmarks when the leading size is n or 2n (x rows
    then y rows), so per-landmark vectors also give ``worst_landmarks``.
``scalar`` (0-d)
    scale = |golden|; ``view_id``, ``window_size``, ``n_updates`` ... are
    exact by their tolerance (0, 0).

``max_rel`` is the largest difference divided by its scale (``inf`` when the
scale is 0 and the values differ); ``ratio`` is the largest difference divided
by the allowed one (> 1 means beyond tolerance).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .tolerances import Tol

MAP_KINDS = frozenset({"response_raw", "response_sigma", "response", "area_of_interest"})
POSITION_KINDS = frozenset({"shape", "landmarks", "landmarks_at_response", "reference_shape", "landmarks_before"})
DISPLACEMENT_KINDS = frozenset({"mean_shifts", "mean_shifts_ref"})
#: Vectors of 6 global parameters [scale, rot_x, rot_y, rot_z, t_x, t_y].
GLOBAL_PARAM_KINDS = frozenset({"params_global", "params_global_in", "final_global"})
#: Landmarks listed in a StageResult's worst_landmarks at most.
MAX_WORST = 10
_GLOBAL_GROUPS = (slice(0, 1), slice(1, 4), slice(4, 6))


def bit_identical(candidate: Any, golden: np.ndarray) -> np.ndarray:
    """Elementwise bit identity of a candidate stage with the golden's.

    Parameters
    ----------
    candidate : array_like
        Cast to the golden's dtype first (a value that survives the cast
        unchanged is the golden's type of value).
    golden : ndarray

    Returns
    -------
    ndarray of bool, the golden's shape
        True where the two values have the same bits (so ``-0.0`` differs from
        ``0.0`` and a NaN equals a NaN of the same payload); all False when the
        shapes differ.
    """
    g = np.asarray(golden)
    c = np.asarray(candidate).astype(g.dtype, copy=False)
    if c.shape != g.shape:
        return np.zeros(g.shape, bool)
    if g.dtype.kind == "f":
        u = np.dtype(f"u{g.dtype.itemsize}")
        # (a contiguous copy is at least 1-d: reshape back, so a scalar stays 0-d)
        return (np.ascontiguousarray(c).view(u) == np.ascontiguousarray(g).view(u)).reshape(g.shape)
    return c == g


def family(kind: str, shape: tuple[int, ...]) -> str:
    """Metric family of a stage: ``map``, ``points``, ``vector`` or ``scalar``."""
    if len(shape) == 0:
        return "scalar"
    if kind in MAP_KINDS and len(shape) == 3:
        return "map"
    if kind in POSITION_KINDS | DISPLACEMENT_KINDS and len(shape) == 2 and shape[1] == 2:
        return "points"
    return "vector"


# --------------------------------------------------------------------------- elementary pieces

def abs_diff(golden: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """``|candidate - golden|`` in float64, NaN replaced by inf."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.atleast_1d(np.abs(np.asarray(candidate, np.float64) - np.asarray(golden, np.float64)))
    d[np.isnan(d)] = np.inf
    return d.reshape(np.shape(golden))


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0/0 = 0 and x/0 = inf for x > 0."""
    num = np.asarray(num, np.float64)
    den = np.broadcast_to(np.asarray(den, np.float64), num.shape)
    # The same quotients where den > 0 (one IEEE division each, whether or not the others
    # are computed); three whole-array calls instead of boolean indexing.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = num / den
    return np.where(den > 0, q, np.where(num > 0, np.inf, 0.0))


def pearson(golden: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of two (n, m) arrays.

    Returns
    -------
    numpy.ndarray
        (n,); 1 where both rows are constant, 0 where only one is.
    """
    g = np.asarray(golden, np.float64)
    c = np.asarray(candidate, np.float64)
    g = g - g.mean(axis=1, keepdims=True)
    c = c - c.mean(axis=1, keepdims=True)
    sg = np.sqrt((g * g).sum(axis=1))
    sc = np.sqrt((c * c).sum(axis=1))
    den = sg * sc
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (g * c).sum(axis=1) / den
    r = np.where(den > 0, r, np.where((sg == 0) & (sc == 0), 1.0, 0.0))
    return np.clip(r, -1.0, 1.0)


def peak_positions(maps: np.ndarray) -> np.ndarray:
    """(n, 2) ``(row, col)`` of each map's maximum (first one on ties)."""
    n, h, w = maps.shape
    flat = np.nan_to_num(np.asarray(maps, np.float64).reshape(n, h * w), nan=-np.inf)
    idx = flat.argmax(axis=1)
    return np.stack([idx // w, idx % w], axis=1).astype(np.float64)


def worst(ratio: np.ndarray, error: np.ndarray, beyond: np.ndarray, cap: int = MAX_WORST) -> list[int]:
    """Indices beyond tolerance, worst first (by error/allowed, then by error), at most ``cap``."""
    idx = np.flatnonzero(beyond)
    order = np.lexsort((-error[idx], -ratio[idx]))
    return [int(i) for i in idx[order][:cap]]


def _summary(err: np.ndarray, allowed: np.ndarray, rel: np.ndarray) -> dict[str, Any]:
    """Common StageResult fields from elementwise errors, allowed errors and relative errors."""
    if err.size == 0:
        return {"max_abs": 0.0, "rms": 0.0, "max_rel": 0.0, "ratio": 0.0}
    with np.errstate(over="ignore", invalid="ignore"):
        rms = float(np.sqrt(np.mean(np.square(err))))
    return {"max_abs": float(err.max()), "rms": rms, "max_rel": float(rel.max()),
            "ratio": float(safe_div(err, allowed).max())}


# --------------------------------------------------------------------------- maps

def map_metrics(golden: np.ndarray, candidate: np.ndarray, visible: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-landmark metrics of (n, w, w) maps; NaN for invisible landmarks.

    Parameters
    ----------
    golden, candidate : numpy.ndarray
        (n, h, w) maps.
    visible : numpy.ndarray, optional
        (n,) truthy where the landmark is compared (default: all).

    Returns
    -------
    dict[str, numpy.ndarray]
        (n,) arrays ``peak_golden``, ``peak_candidate``, ``peak_ratio``,
        ``peak_shift_px``, ``correlation``, ``max_abs_per_landmark``,
        ``rms_per_landmark``, ``rel_per_landmark``, and the bool ``visible``.
    """
    n = golden.shape[0]
    vis = np.ones(n, bool) if visible is None else np.asarray(visible).astype(bool).reshape(n)
    g = np.asarray(golden, np.float64).reshape(n, -1)
    c = np.asarray(candidate, np.float64).reshape(n, -1)
    d = abs_diff(g, c)
    out = {
        "peak_golden": np.abs(g).max(axis=1, initial=0.0),
        "peak_candidate": np.nan_to_num(np.abs(c), nan=np.inf).max(axis=1, initial=0.0),
        "max_abs_per_landmark": d.max(axis=1, initial=0.0),
    }
    with np.errstate(over="ignore", invalid="ignore"):
        out["rms_per_landmark"] = np.sqrt(np.mean(np.square(d), axis=1)) if d.shape[1] else np.zeros(n)
    out["peak_ratio"] = _ratio_one_when_equal(out["peak_candidate"], out["peak_golden"])
    out["rel_per_landmark"] = safe_div(out["max_abs_per_landmark"], out["peak_golden"])
    shift = peak_positions(golden) - peak_positions(candidate)
    out["peak_shift_px"] = np.hypot(shift[:, 0], shift[:, 1])
    out["correlation"] = pearson(g, np.nan_to_num(c, nan=0.0))
    for key in out:
        out[key] = np.where(vis, out[key], np.nan)
    out["visible"] = vis
    return out


def _ratio_one_when_equal(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, with 0/0 = 1 (two all-zero maps have the same peak)."""
    r = safe_div(num, den)
    return np.where((num == 0) & (den == 0), 1.0, r)


def compare_maps(golden: np.ndarray, candidate: np.ndarray, tol: Tol, visible: np.ndarray | None = None) -> dict[str, Any]:
    """StageResult fields of a map stage: one check per visible landmark on its largest difference."""
    m = map_metrics(golden, candidate, visible)
    vis = m.pop("visible")
    err = np.where(vis, m["max_abs_per_landmark"], 0.0)
    scale = np.where(vis, m["peak_golden"], 0.0)
    allowed = tol.allowed(scale)
    ratio = safe_div(err, allowed)
    beyond = vis & (err > allowed)
    n = golden.shape[0]
    vals = abs_diff(golden.reshape(n, -1)[vis], candidate.reshape(n, -1)[vis])
    out = _summary(err[vis], allowed[vis], safe_div(err, scale)[vis])
    if vals.size:
        with np.errstate(over="ignore", invalid="ignore"):
            out["rms"] = float(np.sqrt(np.mean(np.square(vals))))
    out.update(within_tolerance=not beyond.any(), n_beyond=int(beyond.sum()),
               worst_landmarks=worst(ratio, err, beyond))
    out.update({k: v for k, v in m.items() if k != "rms_per_landmark"})
    return out


# --------------------------------------------------------------------------- points

def point_errors(golden: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """(n,) Euclidean distance between matching points of two (n, 2) arrays; NaN -> inf."""
    d = abs_diff(golden, candidate)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sqrt(np.square(d).sum(axis=1))


def point_scale(golden: np.ndarray, kind: str) -> float:
    """Golden magnitude of a point set: extent for positions, largest norm for displacements."""
    g = np.asarray(golden, np.float64)
    if g.size == 0:
        return 0.0
    if kind in DISPLACEMENT_KINDS:
        return float(np.hypot(g[:, 0], g[:, 1]).max())
    return float(np.ptp(g, axis=0).max())


def compare_points(golden: np.ndarray, candidate: np.ndarray, tol: Tol, kind: str) -> dict[str, Any]:
    """StageResult fields of an (n, 2) point stage: per-landmark Euclidean error in px."""
    err = point_errors(golden, candidate)
    scale = point_scale(golden, kind)
    allowed = np.full(err.shape, tol.allowed(scale))
    beyond = err > allowed
    out = _summary(err, allowed, safe_div(err, np.full(err.shape, scale)))
    out.update(within_tolerance=not beyond.any(), n_beyond=int(beyond.sum()),
               worst_landmarks=worst(safe_div(err, allowed), err, beyond), error_px=err)
    return out


# --------------------------------------------------------------------------- vectors and scalars

def vector_scale(golden: np.ndarray, kind: str) -> np.ndarray:
    """Per-element golden scale: max|golden| over the elements sharing a unit (module docstring)."""
    a = np.abs(np.asarray(golden, np.float64))
    if a.size == 0:
        return a
    if kind in GLOBAL_PARAM_KINDS and a.shape == (6,):
        return _grouped_max(a, _GLOBAL_GROUPS)
    if kind == "param_update" and a.ndim == 1 and a.shape[0] >= 6:
        return _grouped_max(a, _GLOBAL_GROUPS + (slice(6, None),))
    if kind == "jacobian" and a.ndim == 2:
        return np.broadcast_to(a.max(axis=0, keepdims=True), a.shape).copy()
    return np.full(a.shape, a.max())


def _grouped_max(a: np.ndarray, groups: tuple[slice, ...]) -> np.ndarray:
    out = np.empty_like(a)
    for s in groups:
        if a[s].size:
            out[s] = a[s].max()
    return out


def landmark_rows(n_rows: int, n_landmarks: int) -> np.ndarray | None:
    """Landmark index of each leading row when the leading size is n or 2n (x rows then y rows), else None."""
    if n_landmarks <= 0:
        return None
    if n_rows == n_landmarks:
        return np.arange(n_rows)
    if n_rows == 2 * n_landmarks:
        return np.arange(n_rows) % n_landmarks
    return None


def compare_vectors(golden: np.ndarray, candidate: np.ndarray, tol: Tol, kind: str,
                    n_landmarks: int = 68) -> dict[str, Any]:
    """StageResult fields of an elementwise stage (parameters, Jacobian, weights, dxs ...)."""
    err = abs_diff(golden, candidate)
    scale = vector_scale(golden, kind)
    allowed = tol.allowed(scale)
    beyond = err > allowed
    out = _summary(err.ravel(), np.ravel(allowed), safe_div(err, scale).ravel())
    out.update(within_tolerance=not beyond.any(), n_beyond=int(beyond.sum()), worst_landmarks=[])
    rows = landmark_rows(err.shape[0], n_landmarks) if err.ndim >= 1 else None
    if rows is not None and err.size:
        out.update(_per_landmark_worst(err, safe_div(err, allowed), beyond, rows, n_landmarks))
    return out


def _per_landmark_worst(err: np.ndarray, ratio: np.ndarray, beyond: np.ndarray, rows: np.ndarray,
                        n_landmarks: int) -> dict[str, Any]:
    """Reduce elementwise error/ratio/beyond to landmarks through the row -> landmark map."""
    k = len(rows)
    e = np.zeros(n_landmarks)
    r = np.zeros(n_landmarks)
    b = np.zeros(n_landmarks, bool)
    np.maximum.at(e, rows, err.reshape(k, -1).max(axis=1))
    np.maximum.at(r, rows, ratio.reshape(k, -1).max(axis=1))
    np.logical_or.at(b, rows, beyond.reshape(k, -1).any(axis=1))
    return {"worst_landmarks": worst(r, e, b), "n_beyond": int(b.sum())}


def compare_scalars(golden: np.ndarray, candidate: np.ndarray, tol: Tol) -> dict[str, Any]:
    """StageResult fields of a 0-d stage."""
    err = abs_diff(golden, candidate).reshape(1)
    scale = np.abs(np.asarray(golden, np.float64)).reshape(1)
    allowed = tol.allowed(scale)
    beyond = bool(err[0] > allowed[0])
    out = _summary(err, allowed, safe_div(err, scale))
    out.update(within_tolerance=not beyond, n_beyond=int(beyond), worst_landmarks=[])
    return out


# --------------------------------------------------------------------------- batches

def _identical_finite(golden: np.ndarray, candidate: np.ndarray) -> bool:
    """True when both stacks have one dtype, the same bits everywhere and only finite values
    (an infinite value minus itself is NaN, which the comparison counts as an infinite error)."""
    if golden.dtype != candidate.dtype or golden.shape != candidate.shape or golden.dtype.kind not in "biuf":
        return False
    if golden.dtype.kind == "f":
        u = np.dtype(f"u{golden.dtype.itemsize}")
        if not np.array_equal(golden.view(u), candidate.view(u)):
            return False
        return bool(np.isfinite(golden).all())
    return bool(np.array_equal(golden, candidate))


def batch_scale(golden: np.ndarray, family_: str, kind: str) -> np.ndarray:
    """Golden scales of ``k`` stacked stages of one kind, family and shape.

    Parameters
    ----------
    golden : numpy.ndarray
        (k, *shape) float64, the stages stacked on a new leading axis.
    family_, kind : str
        The stages' family and kind.

    Returns
    -------
    numpy.ndarray
        ``points``: (k,) the per-stage scalar of :func:`point_scale`; ``vector``:
        (k, *shape) the per-element scale of :func:`vector_scale`; ``scalar``: (k,) ``|golden|``.
        Each value is the one the per-stage function computes (maxima, ``ptp`` and ``hypot``
        are exact or elementwise, so batching does not change a bit).
    """
    k = golden.shape[0]
    a = np.abs(golden) if family_ != "points" else golden
    if family_ == "scalar":
        return a
    if family_ == "points":
        if kind in DISPLACEMENT_KINDS:
            return np.hypot(a[:, :, 0], a[:, :, 1]).max(axis=1)
        return np.ptp(a, axis=1).max(axis=1)
    shape = golden.shape[1:]
    if kind in GLOBAL_PARAM_KINDS and shape == (6,):
        return _batch_grouped_max(a, _GLOBAL_GROUPS)
    if kind == "param_update" and len(shape) == 1 and shape[0] >= 6:
        return _batch_grouped_max(a, _GLOBAL_GROUPS + (slice(6, None),))
    if kind == "jacobian" and len(shape) == 2:
        return np.broadcast_to(a.max(axis=1, keepdims=True), a.shape)
    peak = a.reshape(k, -1).max(axis=1)
    return np.broadcast_to(peak.reshape((k,) + (1,) * len(shape)), a.shape)


def _batch_grouped_max(a: np.ndarray, groups: tuple[slice, ...]) -> np.ndarray:
    """(k, m) -> (k, m): each element replaced by the max of its group along the last axis."""
    out = np.empty_like(a)
    for s in groups:
        if a[:, s].size:
            out[:, s] = a[:, s].max(axis=1, keepdims=True)
    return out


def batch_within(family_: str, kind: str, golden: np.ndarray, candidate: np.ndarray,
                 atol: np.ndarray, rtol: np.ndarray) -> dict[str, np.ndarray]:
    """Summary fields of ``k`` stages of one family, kind and shape, in one vectorised pass.

    The per-stage functions (:func:`compare_points`, :func:`compare_vectors`,
    :func:`compare_scalars`) cost a few dozen numpy calls each on arrays of tens of
    values, so a trace of ~500 stages spent almost all its time in call overhead.
    Here every stage of a group is one row of a stacked array and each quantity is
    one call over all rows. The arithmetic is the same operation on the same
    values: elementwise differences, divisions and ``atol + rtol * scale`` are
    elementwise; maxima are exact; the one sum, the RMS's mean of squares, is
    numpy's pairwise sum over each contiguous row, the same order as over the
    row alone. Only stages whose every value is within tolerance are fully
    described by these fields (``n_beyond`` 0, no worst landmarks, no note); the
    caller recomputes the others, rare and needing per-landmark detail, stage by
    stage.

    Parameters
    ----------
    family_ : {"points", "vector", "scalar"}
    kind : str
        Stage kind (selects the scale's grouping).
    golden, candidate : numpy.ndarray
        (k, *shape), any numeric dtype; compared in float64.
    atol, rtol : numpy.ndarray
        (k,) float64, each stage's tolerance.

    Returns
    -------
    dict[str, numpy.ndarray]
        (k,) float64 ``max_abs``, ``rms``, ``max_rel``, ``ratio``; (k,) bool
        ``within`` (every value within tolerance and finite); ``error_px`` (k, n)
        for points; ``identical`` (bool) when every stage has the golden's bits.
    """
    k = golden.shape[0]
    if _identical_finite(golden, candidate):
        # Every difference is +0.0 (x - x of a finite x), and so is every quotient of it: the
        # fields below at no cost, as the gate of a bit-faithful implementation mostly sees.
        zeros = np.zeros(k)
        out = {"max_abs": zeros, "rms": zeros, "max_rel": zeros, "ratio": zeros, "within": np.ones(k, bool),
               "identical": True}
        if family_ == "points":
            out["error_px"] = np.zeros(golden.shape[:2])
        return out
    g = np.asarray(golden, np.float64)
    d = abs_diff(g, candidate)
    scale = batch_scale(g, family_, kind)
    if family_ == "points":
        with np.errstate(over="ignore", invalid="ignore"):
            err = np.sqrt(np.square(d).sum(axis=2))
        allowed = np.broadcast_to((atol + rtol * scale)[:, None], err.shape)
        rel = safe_div(err, np.broadcast_to(scale[:, None], err.shape))
    else:
        err = d.reshape(k, -1)
        col = (k,) + (1,) * (scale.ndim - 1)
        allowed = (atol.reshape(col) + rtol.reshape(col) * scale).reshape(k, -1)
        rel = safe_div(d, scale).reshape(k, -1)
    with np.errstate(over="ignore", invalid="ignore"):
        rms = np.sqrt(np.mean(np.square(err), axis=1))
    out = {"max_abs": err.max(axis=1), "rms": rms, "max_rel": rel.max(axis=1),
           "ratio": safe_div(err, allowed).max(axis=1),
           "within": ~(err > allowed).any(axis=1) & np.isfinite(err).all(axis=1)}
    if family_ == "points":
        out["error_px"] = err
    return out


def batch_maps(golden: np.ndarray, candidate: np.ndarray, visible: np.ndarray | None,
               atol: np.ndarray, rtol: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`compare_maps` of ``k`` map stages of one shape and one visibility, in one pass.

    Every per-landmark metric of :func:`map_metrics` is a function of one landmark's map
    alone (its own maxima, argmax, mean, sums), so the ``k`` stacks of ``n`` maps are
    judged as one stack of ``k * n`` maps, then split again. The stage's RMS is over its
    visible values, flattened: one contiguous row per stage, summed in the same pairwise
    order as alone.

    Parameters
    ----------
    golden, candidate : numpy.ndarray
        (k, n, h, w) maps.
    visible : numpy.ndarray or None
        (n,) visibilities shared by the ``k`` stages (None: all).
    atol, rtol : numpy.ndarray
        (k,) float64 tolerances.

    Returns
    -------
    dict[str, numpy.ndarray]
        (k, n) per-landmark arrays named as in :func:`map_metrics` (``rms_per_landmark``
        left out, as :func:`compare_maps` leaves it); (k,) ``max_abs``, ``rms``,
        ``max_rel``, ``ratio``; (k,) bool ``within`` (no visible landmark beyond tolerance,
        no NaN anywhere in the candidate: those stages need :func:`compare_maps`' notes and
        worst landmarks); ``identical`` (bool) every stage has the golden's bits.
    """
    k, n = golden.shape[:2]
    vis = np.ones(n, bool) if visible is None else np.asarray(visible).astype(bool).reshape(n)
    flat = (k * n,) + golden.shape[2:]
    identical = _identical_finite(golden, candidate)
    if identical:
        m = _identical_map_metrics(golden.reshape(flat), np.tile(vis, k))
    else:
        m = map_metrics(golden.reshape(flat), candidate.reshape(flat), np.tile(vis, k))
    m.pop("visible")
    m.pop("rms_per_landmark")
    out = {name: v.reshape(k, n) for name, v in m.items()}
    if identical:
        # Every difference is +0.0, so every summary below is 0 (0/x and 0/0 give 0 in
        # safe_div), nothing is beyond a tolerance >= 0 and no value is NaN: skip the
        # arithmetic over the largest arrays of a trace, the case a bit-exact gate meets.
        zeros = np.zeros(k)
        out.update(max_abs=zeros, max_rel=zeros.copy(), ratio=zeros.copy(), rms=zeros.copy(),
                   within=np.ones(k, bool), identical=True)
        return out
    err = np.where(vis, out["max_abs_per_landmark"], 0.0)
    scale = np.where(vis, out["peak_golden"], 0.0)
    allowed = atol[:, None] + rtol[:, None] * scale
    beyond = vis & (err > allowed)
    nvis = int(vis.sum())
    if nvis:
        vals = abs_diff(golden[:, vis].reshape(k, -1), candidate[:, vis].reshape(k, -1))
        ev, av = err[:, vis], allowed[:, vis]
        out["max_abs"] = ev.max(axis=1)
        out["max_rel"] = safe_div(err, scale)[:, vis].max(axis=1)
        out["ratio"] = safe_div(ev, av).max(axis=1)
        if vals.shape[1]:
            with np.errstate(over="ignore", invalid="ignore"):
                out["rms"] = np.sqrt(np.mean(np.square(vals), axis=1))
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                out["rms"] = np.sqrt(np.mean(np.square(ev), axis=1))
    else:
        out["max_abs"] = out["max_rel"] = out["ratio"] = out["rms"] = np.zeros(k)
    nan = np.isnan(candidate).reshape(k, -1).any(axis=1) if candidate.dtype.kind == "f" else np.zeros(k, bool)
    out["within"] = ~beyond.any(axis=1) & ~nan
    out["identical"] = identical
    return out


def _identical_map_metrics(golden: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`map_metrics` of maps whose candidate has the golden's bits (all finite).

    Each value is what :func:`map_metrics` computes from two equal maps, without
    computing the candidate's side: differences and peak shifts are +0.0, the
    candidate's peak is the golden's, the peak ratio ``x / x`` is exactly 1 (0/0 is 1
    there by definition), the relative error ``0 / x`` is 0. The correlation is
    computed (:func:`pearson` of the map with itself: ``sum(g*g) / (|g| |g|)``
    need not round to exactly 1).
    """
    n = golden.shape[0]
    g = np.asarray(golden, np.float64).reshape(n, -1)
    peak = np.abs(g).max(axis=1, initial=0.0)
    zeros = np.zeros(n)
    out = {"peak_golden": peak, "peak_candidate": peak.copy(), "max_abs_per_landmark": zeros,
           "rms_per_landmark": zeros, "peak_ratio": _ratio_one_when_equal(peak, peak),
           "rel_per_landmark": safe_div(zeros, peak), "peak_shift_px": zeros, "correlation": pearson(g, g)}
    for key in out:
        out[key] = np.where(visible, out[key], np.nan)
    out["visible"] = visible
    return out
