"""Result types of the comparator: one stage, one case, one run.

Only small arrays live here (per-landmark values, never whole maps), so a run
over many cases can keep every :class:`CaseComparison` in memory.

JSON contract of one case (:meth:`CaseComparison.to_json`; more fields may be added;
every type here reads its JSON back with ``from_json``, and ``to_json`` of what it
read writes the same JSON)::

    {"case": str, "mode": "isolated" | "propagated", "gate": "stages" | "landmarks",
     "verdict": "pass" | "diverged",
     "first_divergent_stage": key or null,
     "impact": {"mean_shifts_max_px": float, "landmarks_max_px": float} or null,
     "observed": {"mean_shifts_max_px": float or null, "landmarks_max_px": float or null},
     "landmark_tolerance_px": float, "noise_floor_px": float or null,
     "noise_floor_source": "envelope (K=64)" | path of a CPP_FLOOR.json | null, "cpp_floor_px": float or null,
     "landmark_band_px": [float, ...], "outcome": "identical" | "within_noise" | "beyond_noise",
     "causes": [{"stage_kind", "first_stage", "landmarks_impact_px", "mean_shifts_impact_px",
                 "known_fault", "beyond_noise"}, ...]   (sorted by impact, largest first),
     "missing_keys": [key, ...], "extra_keys": [key, ...], "n_extra_keys": int, "wall_time_s": float,
     "stages": [{"stage", "kind", "family", "shape", "max_abs", "rms", "max_rel", "ratio", "atol", "rtol",
                 "within_tolerance", "reaches_landmarks", "worst_landmarks": [int, ...],
                 "outcome", "noise_floor_px" (the stage's envelope band or null),
                 "n_beyond", "note", ... per-landmark lists for stages beyond tolerance}],
     "convergence": [{"pass", "phase", "iteration", "shape_change_norm_golden", ...}]}

Numbers that are not finite (a NaN in a candidate gives an infinite error)
are written as ``null`` so that the output stays strict JSON.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..errors import EXIT_BAD_INPUT, EXIT_DIVERGENCE, EXIT_OK

#: Verdicts of a case comparison.
PASS = "pass"
DIVERGED = "diverged"

#: Per-landmark arrays a map stage carries (name -> meaning), in report order.
MAP_FIELDS = {
    "peak_golden": "golden peak max|map| of the landmark",
    "peak_candidate": "candidate peak max|map|",
    "peak_ratio": "candidate peak / golden peak",
    "peak_shift_px": "distance between the argmax positions, map pixels",
    "correlation": "Pearson correlation over the w*w values (1 when both maps are constant)",
    "max_abs_per_landmark": "max |candidate - golden| over the map",
    "rel_per_landmark": "max_abs_per_landmark / peak_golden",
}
#: Per-landmark array of point stages.
POINT_FIELDS = {"error_px": "Euclidean distance candidate-golden per landmark, px"}


def json_number(x: Any) -> float | int | None:
    """A finite float (or int) for JSON, None for None/NaN/inf."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def json_list(arr: np.ndarray | None) -> list | None:
    """A 1-d array as a JSON list, non-finite values as None."""
    if arr is None:
        return None
    a = np.asarray(arr, dtype=np.float64).ravel()
    out = a.tolist()  # whole-array conversion: a report asks for tens of thousands of these lists
    bad = ~np.isfinite(a)
    if bad.any():
        for i in np.flatnonzero(bad):
            out[i] = None
    return out


def _from_number(x: Any, missing: float = math.inf) -> float:
    """A JSON number back to a float: ``null`` (a non-finite value written out) as ``missing``."""
    return missing if x is None else float(x)


def _from_list(values: list | None) -> np.ndarray | None:
    """A JSON list of :func:`json_list` back to a float64 array (``null`` -> NaN)."""
    if values is None:
        return None
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


#: Outcomes of a stage or a case, in order of severity.
IDENTICAL = "identical"
WITHIN_NOISE = "within_noise"
BEYOND_NOISE = "beyond_noise"
OUTCOMES = (IDENTICAL, WITHIN_NOISE, BEYOND_NOISE)


@dataclass(frozen=True)
class Envelope:
    """A golden case's measured rounding noise: how far its fit spreads under ulp perturbations.

    Measured by :func:`clnfdiag.compare.noise.measure` (the perturbation model is
    documented there); the comparator only reads it.

    Attributes
    ----------
    band_px : float
        Largest final-landmark distance from the unperturbed fit over the runs (px).
    runs : int
        Perturbed fits measured (K).
    per_run_px : tuple[float, ...]
        Each run's largest final-landmark move (px).
    landmark_band_px : tuple[float, ...]
        (n,) largest move of each final landmark over the runs (px).
    stage_bands : dict[str, float]
        Largest difference of each traced stage over the runs, in the unit the
        comparator's ``max_abs`` uses for that stage (points: Euclidean px per
        landmark; maps, vectors, scalars: elementwise). A stage that some runs
        never reached is measured over the runs that did.
    """

    band_px: float
    runs: int
    per_run_px: tuple[float, ...] = ()
    landmark_band_px: tuple[float, ...] = ()
    stage_bands: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def source(self) -> str:
        """``envelope (K=64)``: what ``noise_floor_source`` says of a floor taken from it."""
        return f"envelope (K={self.runs})"

    def to_json(self) -> dict[str, Any]:
        return {"band_px": self.band_px, "runs": self.runs, "per_run_px": list(self.per_run_px),
                "landmark_band_px": list(self.landmark_band_px), "stage_bands": dict(self.stage_bands)}

    @classmethod
    def from_json(cls, d: dict) -> "Envelope":
        return cls(float(d["band_px"]), int(d["runs"]), tuple(float(v) for v in d.get("per_run_px", ())),
                   tuple(float(v) for v in d.get("landmark_band_px", ())),
                   {str(k): float(v) for k, v in d.get("stage_bands", {}).items()})


@dataclass(slots=True)  # no per-instance dict: a run keeps ~500 of these per comparison
class StageResult:
    """Comparison of one stage key.

    Attributes
    ----------
    stage : str
        Golden key, e.g. ``pass0/rigid/iter03/mean_shifts``.
    kind : str
        The key's last component (``mean_shifts``); selects metric and tolerance.
    family : str
        ``map``, ``points``, ``vector`` or ``scalar``.
    pass_index, phase, iteration : int, str, int or None
        Parsed from the key when present.
    shape : tuple of int
        Golden shape.
    max_abs : float
        Largest absolute difference (maps, vectors, scalars: elementwise;
        points: largest per-landmark Euclidean error, px). ``inf`` when the
        shapes differ or the candidate holds NaN.
    rms : float
        Root mean square of the same differences.
    max_rel : float
        Largest difference relative to the golden scale of its element
        (see :mod:`clnfdiag.compare.metrics`).
    ratio : float
        Largest difference / allowed difference; > 1 means beyond tolerance.
    atol, rtol : float
        Tolerance used: ``|c - g| <= atol + rtol * scale``.
    within_tolerance : bool
        No element or landmark beyond tolerance.
    n_beyond : int
        Landmarks (maps, points, per-landmark vectors) or elements beyond tolerance.
    worst_landmarks : list of int
        Landmarks beyond tolerance, worst first, at most 10.
    reaches_landmarks : bool or None
        From the caller's impact function: the stage's difference moves the
        final landmarks beyond their tolerance. None when not evaluated.
    impact : dict or None
        The impact function's answer for this stage.
    note : str
        Why a stage could not be compared value by value (shape mismatch).
    noise_band_px : float or None
        Propagated mode: the stage's band in the case's noise envelope (the
        spread rounding alone gives it, in ``max_abs``'s unit), which raised its
        atol; None when no envelope band judged it.
    outcome : str
        ``identical`` (every value equal), ``within_noise`` (within tolerance:
        rounding level in isolated mode, the envelope in propagated mode) or
        ``beyond_noise``.
    peak_golden ... rel_per_landmark : numpy.ndarray or None
        Map stages: per-landmark arrays (NaN for invisible landmarks), see
        :data:`MAP_FIELDS`.
    error_px : numpy.ndarray or None
        Point stages: per-landmark Euclidean error.
    """

    stage: str
    kind: str
    family: str
    pass_index: int | None = None
    phase: str | None = None
    iteration: int | None = None
    shape: tuple[int, ...] = ()
    max_abs: float = 0.0
    rms: float = 0.0
    max_rel: float = 0.0
    ratio: float = 0.0
    atol: float = 0.0
    rtol: float = 0.0
    within_tolerance: bool = True
    n_beyond: int = 0
    worst_landmarks: list[int] = field(default_factory=list)
    reaches_landmarks: bool | None = None
    impact: dict | None = None
    note: str = ""
    noise_band_px: float | None = None
    outcome: str = IDENTICAL
    peak_golden: np.ndarray | None = field(default=None, repr=False)
    peak_candidate: np.ndarray | None = field(default=None, repr=False)
    peak_ratio: np.ndarray | None = field(default=None, repr=False)
    peak_shift_px: np.ndarray | None = field(default=None, repr=False)
    correlation: np.ndarray | None = field(default=None, repr=False)
    max_abs_per_landmark: np.ndarray | None = field(default=None, repr=False)
    rel_per_landmark: np.ndarray | None = field(default=None, repr=False)
    error_px: np.ndarray | None = field(default=None, repr=False)

    @property
    def max_abs_landmark(self) -> int | None:
        """The landmark where ``max_abs`` occurs (maps and points; None for other stages)."""
        per = self.error_px if self.error_px is not None else self.max_abs_per_landmark
        if per is None or not np.size(per):
            return None
        a = np.where(np.isnan(per), -np.inf, np.asarray(per, np.float64))
        return int(np.argmax(a))

    def per_landmark(self) -> dict[str, np.ndarray]:
        """The per-landmark arrays this stage carries, by name."""
        names = list(MAP_FIELDS) + list(POINT_FIELDS)
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to_json(self, per_landmark: bool = False) -> dict:
        """JSON-ready dict (see the module docstring); per-landmark lists on request."""
        out = {
            "stage": self.stage,
            "kind": self.kind,
            "family": self.family,
            "shape": [int(n) for n in self.shape],
            "max_abs": json_number(self.max_abs),
            "rms": json_number(self.rms),
            "max_rel": json_number(self.max_rel),
            "ratio": json_number(self.ratio),
            "atol": self.atol,
            "rtol": self.rtol,
            "within_tolerance": bool(self.within_tolerance),
            "reaches_landmarks": self.reaches_landmarks,
            "worst_landmarks": [int(i) for i in self.worst_landmarks],
            "n_beyond": int(self.n_beyond),
            "outcome": self.outcome,
            "noise_floor_px": json_number(self.noise_band_px),
        }
        if self.note:
            out["note"] = self.note
        if self.impact is not None:
            out["impact"] = {k: json_number(v) for k, v in self.impact.items()}
        if per_landmark:
            out.update({name: json_list(arr) for name, arr in self.per_landmark().items()})
        return out

    @classmethod
    def from_json(cls, d: dict) -> "StageResult":
        """The result :meth:`to_json` wrote (pass, phase and iteration re-parsed from the key;
        a ``null`` error, written for a non-finite one, reads back as ``inf``)."""
        from ..keys import parse
        sk = parse(d["stage"])
        main = sk.part is None
        res = cls(stage=d["stage"], kind=d["kind"], family=d.get("family", ""),
                  pass_index=sk.pass_index if main else None, phase=sk.phase if main else None,
                  iteration=sk.iteration if main else None, shape=tuple(d.get("shape", ())),
                  max_abs=_from_number(d["max_abs"]), rms=_from_number(d["rms"]),
                  max_rel=_from_number(d["max_rel"]), ratio=_from_number(d["ratio"]),
                  atol=float(d["atol"]), rtol=float(d["rtol"]),
                  within_tolerance=bool(d["within_tolerance"]), n_beyond=int(d["n_beyond"]),
                  worst_landmarks=[int(i) for i in d.get("worst_landmarks", [])],
                  reaches_landmarks=d.get("reaches_landmarks"), note=d.get("note", ""),
                  noise_band_px=None if d.get("noise_floor_px") is None else float(d["noise_floor_px"]),
                  outcome=d.get("outcome", IDENTICAL),
                  impact=None if d.get("impact") is None else
                  {k: _from_number(v, math.nan) for k, v in d["impact"].items()})
        for name in list(MAP_FIELDS) + list(POINT_FIELDS):
            if name in d:
                setattr(res, name, _from_list(d[name]))
        return res


@dataclass
class Cause:
    """One stage kind beyond tolerance, with the effect of swapping in the candidate's values.

    Attributes
    ----------
    stage_kind : str
        The kind (``mean_shifts_ref``); a part model's is ``<part>/<kind>``.
    first_stage : str
        Its first stage beyond tolerance.
    landmarks_impact_px : float or None
        Largest final-landmark move when the candidate's values of this kind
        (isolated mode: every stage of the kind from the first one on;
        propagated mode: the first one alone) replace clnfdiag's in a replay of
        the golden's fit; None when it could not be replayed.
    mean_shifts_impact_px : float or None
        Largest change of the first image-frame mean-shifts after it.
    known_fault : str or None
        The known fault (:data:`clnfdiag.faults.FAULTS`) whose value of this
        stage the candidate's matches, if any.
    beyond_noise : bool or None
        The landmark move exceeds the case's rounding noise (None: not replayed).
    """

    stage_kind: str
    first_stage: str
    landmarks_impact_px: float | None = None
    mean_shifts_impact_px: float | None = None
    known_fault: str | None = None
    beyond_noise: bool | None = None

    def to_json(self) -> dict:
        return {"stage_kind": self.stage_kind, "first_stage": self.first_stage,
                "landmarks_impact_px": json_number(self.landmarks_impact_px),
                "mean_shifts_impact_px": json_number(self.mean_shifts_impact_px),
                "known_fault": self.known_fault, "beyond_noise": self.beyond_noise}

    @classmethod
    def from_json(cls, d: dict) -> "Cause":
        def num(v):
            return None if v is None else float(v)
        return cls(d["stage_kind"], d["first_stage"], num(d.get("landmarks_impact_px")),
                   num(d.get("mean_shifts_impact_px")), d.get("known_fault"), d.get("beyond_noise"))

    def line(self) -> str:
        """``mean_shifts_ref (pass0/rigid/iter00/mean_shifts_ref): landmarks 0.41 px, mean-shifts 0.02 px [no-kde-grid]``."""
        fault = f" [known fault: {self.known_fault}]" if self.known_fault else ""
        return (f"{self.stage_kind} ({self.first_stage}): landmarks {fmt_number(self.landmarks_impact_px)} px, "
                f"mean-shifts {fmt_number(self.mean_shifts_impact_px)} px{fault}")


@dataclass
class ConvergenceRow:
    """Convergence of one NU-RLMS iteration, golden vs candidate (None where a side lacks it).

    Attributes
    ----------
    pass_index, phase, iteration : int, str, int
        Where in the fit.
    shape_change_norm_golden, shape_change_norm_candidate : float or None
        ``iterKK/shape_change_norm`` (absent at iteration 0).
    dp_norm_golden, dp_norm_candidate : float or None
        Euclidean norm of ``iterKK/param_update``.
    mean_shift_rms_golden, mean_shift_rms_candidate : float or None
        RMS over landmarks of the mean-shift length (image frame, px).
    mean_shift_rms_diff : float or None
        RMS over landmarks of |candidate - golden mean-shift|, px.
    landmark_rms_diff : float or None
        RMS over landmarks of |candidate - golden ``iterKK/shape``|, px.
    landmark_band_px, mean_shift_band_px : float or None
        The case's noise envelope at this iteration: largest spread of
        ``iterKK/shape`` and ``iterKK/mean_shifts`` under rounding, px.
    """

    pass_index: int
    phase: str
    iteration: int
    shape_change_norm_golden: float | None = None
    shape_change_norm_candidate: float | None = None
    dp_norm_golden: float | None = None
    dp_norm_candidate: float | None = None
    mean_shift_rms_golden: float | None = None
    mean_shift_rms_candidate: float | None = None
    mean_shift_rms_diff: float | None = None
    landmark_rms_diff: float | None = None
    landmark_band_px: float | None = None
    mean_shift_band_px: float | None = None

    def to_json(self) -> dict:
        """JSON-ready dict; key ``pass`` for the pass index."""
        out: dict[str, Any] = {"pass": self.pass_index, "phase": self.phase, "iteration": self.iteration}
        for name in ("shape_change_norm_golden", "shape_change_norm_candidate", "dp_norm_golden",
                     "dp_norm_candidate", "mean_shift_rms_golden", "mean_shift_rms_candidate",
                     "mean_shift_rms_diff", "landmark_rms_diff", "landmark_band_px", "mean_shift_band_px"):
            out[name] = json_number(getattr(self, name))
        return out

    @classmethod
    def from_json(cls, d: dict) -> "ConvergenceRow":
        """The row :meth:`to_json` wrote."""
        fields = {k: (None if v is None else float(v)) for k, v in d.items()
                  if k not in ("pass", "phase", "iteration")}
        return cls(int(d["pass"]), d["phase"], int(d["iteration"]), **fields)


@dataclass
class CaseComparison:
    """A candidate trace compared with one golden case in one mode.

    Attributes
    ----------
    case : str
        Golden case id.
    mode : str
        ``isolated`` or ``propagated``.
    gate : str
        ``stages`` (any stage beyond tolerance fails) or ``landmarks``
        (only the final landmarks, or the impact on them, fail).
    verdict : str
        ``pass`` or ``diverged`` under the gate.
    first_divergent_stage : str or None
        First stage, in execution order, beyond tolerance (whatever the gate).
    impact : dict or None
        ``{mean_shifts_max_px, landmarks_max_px}`` of the first divergent
        stage, from the caller's impact function; None when not evaluated.
    observed : dict
        Read off the compared trace itself: largest mean-shift error over all
        mean-shift stages and final-landmark error, px (None when absent).
    stages : list of StageResult
        In execution order (golden manifest order).
    missing_keys : list of str
        Golden keys the candidate does not have.
    extra_keys : list of str
        Candidate keys the golden does not have (not compared).
    convergence : list of ConvergenceRow
        One row per (pass, phase, iteration) of either side.
    landmark_tolerance_px : float
        Allowed final-landmark error (with the noise floor in propagated mode).
    noise_floor_px : float or None
        The case's rounding noise on the final landmarks, px: the larger of its
        measured envelope band and its C++ noise floor (``CPP_FLOOR.json``);
        None when neither is known.
    noise_floor_source : str or None
        Where ``noise_floor_px`` comes from: ``envelope (K=64)`` or the floor file.
    cpp_floor_px : float or None
        The C++ noise floor from ``CPP_FLOOR.json`` (a lower bound), when a file names the case.
    landmark_band_px : list of float
        Per final landmark, the envelope's band (empty without an envelope).
    outcome : str
        ``identical``, ``within_noise`` or ``beyond_noise`` (the verdict with the
        bit-identical case told apart).
    causes : list of Cause
        Stage kinds beyond tolerance ranked by their replayed landmark impact
        ("fix these first"); empty when none is beyond or causes were not asked for.
    golden_path : str
        The golden case folder.
    wall_time_s : float
        Time to produce and compare the candidate.
    kept : dict[str, numpy.ndarray]
        Candidate arrays kept on request (``run(keep=...)``, e.g. for report
        plots); never written to the JSON.
    """

    case: str
    mode: str
    gate: str = "stages"
    verdict: str = PASS
    first_divergent_stage: str | None = None
    impact: dict | None = None
    observed: dict = field(default_factory=dict)
    stages: list[StageResult] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    extra_keys: list[str] = field(default_factory=list)
    convergence: list[ConvergenceRow] = field(default_factory=list)
    landmark_tolerance_px: float = 0.01
    noise_floor_px: float | None = None
    noise_floor_source: str | None = None
    cpp_floor_px: float | None = None
    landmark_band_px: list[float] = field(default_factory=list, repr=False)
    outcome: str = IDENTICAL
    causes: list[Cause] = field(default_factory=list)
    golden_path: str = ""
    wall_time_s: float = 0.0
    kept: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        """True when the verdict is ``pass``."""
        return self.verdict == PASS

    def stage(self, key: str) -> StageResult:
        """The result for one stage key (KeyError if it was not compared)."""
        for s in self.stages:
            if s.stage == key:
                return s
        raise KeyError(key)

    @property
    def divergent_stages(self) -> list[StageResult]:
        """Stages beyond tolerance, in execution order."""
        return [s for s in self.stages if not s.within_tolerance]

    @property
    def worst_stage(self) -> StageResult | None:
        """Stage with the largest error/allowed ratio (the first one on ties)."""
        best: StageResult | None = None
        best_key: tuple[float, float] = (-math.inf, -math.inf)
        for s in self.stages:
            key = _ratio_key(s)
            if best is None or key > best_key:
                best, best_key = s, key
        return best

    def to_json(self, per_landmark: str = "diverged") -> dict:
        """JSON-ready dict (module docstring).

        Parameters
        ----------
        per_landmark : {"diverged", "all", "none"}
            Which stages carry their per-landmark lists.
        """
        def want(s: StageResult) -> bool:
            return per_landmark == "all" or (per_landmark == "diverged" and not s.within_tolerance)

        return {
            "case": self.case,
            "mode": self.mode,
            "gate": self.gate,
            "verdict": self.verdict,
            "first_divergent_stage": self.first_divergent_stage,
            "impact": None if self.impact is None else {k: json_number(v) for k, v in self.impact.items()},
            "observed": {k: json_number(v) for k, v in self.observed.items()},
            "landmark_tolerance_px": json_number(self.landmark_tolerance_px),
            "noise_floor_px": json_number(self.noise_floor_px),
            "noise_floor_source": self.noise_floor_source,
            "cpp_floor_px": json_number(self.cpp_floor_px),
            "landmark_band_px": [json_number(v) for v in self.landmark_band_px],
            "outcome": self.outcome,
            "causes": [c.to_json() for c in self.causes],
            "golden_path": self.golden_path,
            "missing_keys": list(self.missing_keys),
            "extra_keys": list(self.extra_keys),
            "n_extra_keys": len(self.extra_keys),
            "wall_time_s": round(self.wall_time_s, 4),
            "stages": [s.to_json(per_landmark=want(s)) for s in self.stages],
            "convergence": [r.to_json() for r in self.convergence],
        }

    @classmethod
    def from_json(cls, d: dict) -> "CaseComparison":
        """The comparison :meth:`to_json` wrote (``kept`` arrays are never in the JSON).

        Raises
        ------
        KeyError, TypeError, ValueError
            ``d`` is not a case of the comparator's JSON.
        """
        return cls(
            case=d["case"], mode=d["mode"], gate=d["gate"], verdict=d["verdict"],
            first_divergent_stage=d.get("first_divergent_stage"),
            impact=None if d.get("impact") is None else
            {k: _from_number(v, math.nan) for k, v in d["impact"].items()},
            observed={k: (None if v is None else float(v)) for k, v in d.get("observed", {}).items()},
            stages=[StageResult.from_json(s) for s in d.get("stages", [])],
            missing_keys=list(d.get("missing_keys", [])), extra_keys=list(d.get("extra_keys", [])),
            convergence=[ConvergenceRow.from_json(r) for r in d.get("convergence", [])],
            landmark_tolerance_px=_from_number(d.get("landmark_tolerance_px")),
            noise_floor_px=None if d.get("noise_floor_px") is None else float(d["noise_floor_px"]),
            noise_floor_source=d.get("noise_floor_source"),
            cpp_floor_px=None if d.get("cpp_floor_px") is None else float(d["cpp_floor_px"]),
            landmark_band_px=[_from_number(v, math.nan) for v in d.get("landmark_band_px", [])],
            outcome=d.get("outcome", IDENTICAL),
            causes=[Cause.from_json(c) for c in d.get("causes", [])],
            golden_path=d.get("golden_path", ""), wall_time_s=float(d.get("wall_time_s", 0.0)))


@dataclass
class CaseFailure:
    """A case that could not be compared (bad golden, bad candidate, producer error).

    Attributes
    ----------
    case : str
        Case id, or the path given when the case could not be read.
    mode : str or None
        Mode being run, None when the golden itself failed.
    kind : str
        Error kind (``golden error``, ``input error`` ...).
    error : str
        One-line message.
    exit_code : int
        Exit code of the error (2).
    """

    case: str
    mode: str | None
    kind: str
    error: str
    exit_code: int = EXIT_BAD_INPUT

    passed = False
    verdict = "error"

    def line(self) -> str:
        """``clnfdiag: <kind>: <message> [case, mode]``, as the CLI reports errors."""
        where = self.case if self.mode is None else f"{self.case}, {self.mode}"
        return f"clnfdiag: {self.kind}: {self.error} [{where}]"

    def to_json(self) -> dict:
        """JSON-ready dict."""
        return {"case": self.case, "mode": self.mode, "kind": self.kind, "error": self.error,
                "exit_code": self.exit_code}

    @classmethod
    def from_json(cls, d: dict) -> "CaseFailure":
        """The failure :meth:`to_json` wrote."""
        return cls(d["case"], d.get("mode"), d["kind"], d["error"], int(d.get("exit_code", EXIT_BAD_INPUT)))


def _ratio_key(s: StageResult) -> tuple[float, float]:
    r = s.ratio if math.isfinite(s.ratio) else math.inf
    return (r, s.max_rel if math.isfinite(s.max_rel) else math.inf)


@dataclass
class Summary:
    """Counts and extremes over a run.

    Attributes
    ----------
    total, passed, diverged, errors : int
        Comparisons (case x mode) in each state; ``errors`` counts failures.
    by_mode : dict[str, dict[str, int]]
        ``{mode: {"total", "passed", "diverged"}}``.
    first_divergent_kinds : dict[str, int]
        How often each stage kind was the first to diverge.
    worst : dict or None
        ``{case, mode, stage, max_abs, max_rel, ratio}`` of the stage with the
        largest error/allowed ratio over the run.
    wall_time_s : float
        Wall time of the whole run.
    """

    total: int = 0
    passed: int = 0
    diverged: int = 0
    errors: int = 0
    by_mode: dict[str, dict[str, int]] = field(default_factory=dict)
    first_divergent_kinds: dict[str, int] = field(default_factory=dict)
    worst: dict | None = None
    wall_time_s: float = 0.0

    @classmethod
    def from_results(cls, results: Iterable[CaseComparison | CaseFailure], wall_time_s: float = 0.0) -> "Summary":
        """Summarise comparisons and failures."""
        s = cls(wall_time_s=wall_time_s)
        kinds: Counter[str] = Counter()
        worst_key: tuple[float, float] | None = None
        for r in results:
            if isinstance(r, CaseFailure):
                s.errors += 1
                continue
            s.total += 1
            m = s.by_mode.setdefault(r.mode, {"total": 0, "passed": 0, "diverged": 0})
            m["total"] += 1
            key = "passed" if r.passed else "diverged"
            m[key] += 1
            setattr(s, key, getattr(s, key) + 1)
            if r.first_divergent_stage:
                kinds[r.first_divergent_stage.rsplit("/", 1)[-1]] += 1
            w = r.worst_stage
            if w is not None and (worst_key is None or _ratio_key(w) > worst_key):
                worst_key = _ratio_key(w)
                s.worst = {"case": r.case, "mode": r.mode, "stage": w.stage, "max_abs": w.max_abs,
                           "max_rel": w.max_rel, "ratio": w.ratio, "within_tolerance": w.within_tolerance}
        s.first_divergent_kinds = dict(kinds.most_common())
        return s

    @property
    def exit_code(self) -> int:
        """2 when any case failed, else 1 when any diverged, else 0."""
        if self.errors:
            return EXIT_BAD_INPUT
        return EXIT_DIVERGENCE if self.diverged else EXIT_OK

    def line(self) -> str:
        """One human line: cases passed/total, worst stage and error, wall time."""
        text = f"{self.passed}/{self.total} comparisons passed"
        if len(self.by_mode) > 1:
            text += " (" + ", ".join(f"{m} {v['passed']}/{v['total']}" for m, v in self.by_mode.items()) + ")"
        if self.errors:
            text += f", {self.errors} could not be compared"
        if self.worst is not None:
            w = self.worst
            text += (f"; worst stage {w['stage']} ({w['case']}, {w['mode']}): max_abs {fmt_number(w['max_abs'])}"
                     f" max_rel {fmt_number(w['max_rel'])} = {fmt_number(w['ratio'])}x tolerance")
        return text + f"; {self.wall_time_s:.1f} s"

    def to_json(self) -> dict:
        """JSON-ready dict."""
        worst = None if self.worst is None else {
            k: (json_number(v) if isinstance(v, (float, np.floating)) else v) for k, v in self.worst.items()}
        return {"total": self.total, "passed": self.passed, "diverged": self.diverged, "errors": self.errors,
                "by_mode": self.by_mode, "first_divergent_kinds": self.first_divergent_kinds,
                "worst": worst, "wall_time_s": round(self.wall_time_s, 3), "exit_code": self.exit_code}

    @classmethod
    def from_json(cls, d: dict) -> "Summary":
        """The summary :meth:`to_json` wrote (``exit_code`` is derived, not stored)."""
        worst = d.get("worst")
        if worst is not None:
            worst = {k: (_from_number(v) if k in ("max_abs", "max_rel", "ratio") else v)
                     for k, v in worst.items()}
        return cls(int(d["total"]), int(d["passed"]), int(d["diverged"]), int(d["errors"]),
                   {m: dict(v) for m, v in d.get("by_mode", {}).items()},
                   dict(d.get("first_divergent_kinds", {})), worst, float(d.get("wall_time_s", 0.0)))


#: Format tag of the JSON of a whole run (``compare --json``).
JSON_FORMAT = "clnfdiag-compare/1"


def run_json(results: Iterable[CaseComparison | CaseFailure], summary: Summary, modes: Iterable[str],
             gate: str, tolerances: dict) -> dict[str, Any]:
    """The JSON of a whole run (``compare --json``, the report's ``summary.json``).

    ``{"format", "modes", "gate", "tolerances", "summary", "cases": [...], "errors": [...]}``;
    ``tolerances`` is :meth:`~clnfdiag.compare.tolerances.Tolerances.to_json`.
    """
    results = list(results)
    return {
        "format": JSON_FORMAT,
        "modes": list(modes),
        "gate": gate,
        "tolerances": tolerances,
        "summary": summary.to_json(),
        "cases": [r.to_json() for r in results if isinstance(r, CaseComparison)],
        "errors": [r.to_json() for r in results if isinstance(r, CaseFailure)],
    }


def fmt_number(x: float | None) -> str:
    """Short human number (3 significant digits)."""
    if x is None:
        return "-"
    return f"{x:.3g}" if math.isfinite(x) else "inf"
