"""The comparator JSON as tables: ``magnitude.csv`` and ``convergence.csv``.

Everything here reads the JSON of :meth:`clnfdiag.compare.struct.CaseComparison.to_json`
(the single source of truth of a report), never the objects, so a report
rebuilt from a saved ``summary.json`` gives the same tables.

JSON read (per case)::

    {"case", "mode", "verdict", "first_divergent_stage", "impact", "observed",
     "landmark_tolerance_px", "golden_path",
     "outcome", "noise_floor_px", "noise_floor_source", "cpp_floor_px", "landmark_band_px",
     "causes": [{"stage_kind", "first_stage", "landmarks_impact_px", "mean_shifts_impact_px",
                 "known_fault", "beyond_noise"}],
     "stages": [{"stage", "kind", "max_abs", "max_rel", "atol", "rtol", "within_tolerance",
                 "reaches_landmarks", "worst_landmarks", "outcome", "noise_floor_px",
                 map stages: "peak_golden", "peak_candidate", "peak_ratio", "peak_shift_px",
                             "correlation", "max_abs_per_landmark", "rel_per_landmark",
                 point stages: "error_px"}],
     "convergence": [{"pass", "phase", "iteration", "shape_change_norm_golden", ...,
                      "landmark_band_px", "mean_shift_band_px"}]}

Per-landmark lists hold ``null`` for invisible landmarks (map stages) and are
present only for the stages the comparator wrote them for; what is missing
stays empty in the tables. A JSON written before a field existed still reads:
a missing ``outcome`` is derived from the verdict and the stage errors
(:func:`stage_outcome`, :attr:`CaseView.outcome`), missing causes and noise
bands are simply not shown. Visibility is read off the golden peaks (null =
invisible) unless the case carries ``"visibilities": {"<pass>": [0/1, ...]}``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..errors import InputError
from ..golden import json_default, read_json
from ..keys import kind_of, parse, pass_of

#: Face regions of the 68-point iBUG scheme: name -> landmark range (inclusive start, exclusive end).
REGIONS: dict[str, tuple[int, int]] = {
    "jaw": (0, 17),
    "brows": (17, 27),
    "nose": (27, 36),
    "eyes": (36, 48),
    "mouth": (48, 68),
}
#: Colour of each region in the plots.
REGION_COLOURS = {"jaw": "#4c72b0", "brows": "#55a868", "nose": "#c44e52", "eyes": "#8172b2",
                  "mouth": "#ccb974", "other": "#777777"}

#: Response-map stage kinds in pipeline order -> short column suffix.
MAP_STAGES = {"response_raw": "raw", "response_sigma": "sigma", "response": "shift"}
#: Readable names of the map stages.
MAP_TITLES = {"response_raw": "raw", "response_sigma": "post-Sigma", "response": "post-shift"}
#: Stage kinds with a per-landmark map metric.
MAP_KINDS = ("area_of_interest", "response_raw", "response_sigma", "response")
#: Per-landmark lists a map stage may carry (names of :data:`clnfdiag.compare.struct.MAP_FIELDS`).
MAP_FIELDS = ("peak_golden", "peak_candidate", "peak_ratio", "peak_shift_px", "correlation",
              "max_abs_per_landmark", "rel_per_landmark")
#: Per-landmark list of point stages.
POINT_FIELD = "error_px"
#: Final-landmark tolerance (px) when a case does not state its own.
DEFAULT_LANDMARK_TOL = 0.01
N_LANDMARKS = 68

#: Columns of convergence.csv after (case, mode, pass, phase, iteration).
CONVERGENCE_FIELDS = ("shape_change_norm_golden", "shape_change_norm_candidate", "dp_norm_golden",
                      "dp_norm_candidate", "mean_shift_rms_golden", "mean_shift_rms_candidate",
                      "mean_shift_rms_diff", "landmark_rms_diff", "landmark_band_px", "mean_shift_band_px")

#: Outcomes of a stage or a case (:mod:`clnfdiag.compare.struct`), in order of severity.
IDENTICAL, WITHIN_NOISE, BEYOND_NOISE = "identical", "within_noise", "beyond_noise"
OUTCOMES = (IDENTICAL, WITHIN_NOISE, BEYOND_NOISE)
#: How the report names each outcome.
OUTCOME_LABELS = {IDENTICAL: "bit-identical", WITHIN_NOISE: "within rounding noise", BEYOND_NOISE: "beyond noise"}
#: Columns of causes.csv.
CAUSE_COLUMNS = ("case", "mode", "rank", "stage_kind", "first_stage", "landmarks_impact_px",
                 "mean_shifts_impact_px", "known_fault", "beyond_noise")


def region_of(landmark: int) -> str:
    """Face region of a landmark index (``other`` outside 0..67)."""
    for name, (lo, hi) in REGIONS.items():
        if lo <= landmark < hi:
            return name
    return "other"


def to_float_array(values: Any, n: int | None = None) -> np.ndarray | None:
    """A JSON list (``null`` = NaN) as a float array; None when absent or of the wrong length."""
    if values is None:
        return None
    arr = np.array(values, dtype=np.float64)  # numpy reads None as NaN
    if n is not None and arr.shape != (n,):
        return None
    return arr


def fmt(x: Any, digits: int = 3) -> str:
    """Short human number: ``-`` for missing, ``inf`` for non-finite."""
    if x is None:
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(x):
        return "-"
    if not math.isfinite(x):
        return "inf"
    return f"{x:.{digits}g}"


def _finite_or_none(x: Any) -> float | None:
    """A JSON number as a finite float, None for null / NaN / not a number."""
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def stage_outcome(entry: dict) -> str:
    """A stage's outcome: its ``outcome`` field, else (older JSON) derived from its errors:
    beyond tolerance -> ``beyond_noise``, no difference at all -> ``identical``, else ``within_noise``."""
    out = entry.get("outcome")
    if out in OUTCOMES:
        return out
    if not entry.get("within_tolerance", True):
        return BEYOND_NOISE
    return IDENTICAL if entry.get("max_abs") == 0 else WITHIN_NOISE


def stage_band(entry: dict) -> str:
    """The band "within rounding noise" means for one stage: its envelope band (``noise_floor_px``,
    propagated mode) or, without one, the tolerance the comparator allowed (atol, rtol)."""
    band = _finite_or_none(entry.get("noise_floor_px"))
    if band is not None:
        unit = " px" if entry.get("family") == "points" else ""
        return f"envelope band {fmt(band)}{unit}"
    atol, rtol = _finite_or_none(entry.get("atol")), _finite_or_none(entry.get("rtol"))
    if atol is None and rtol is None:
        return "tolerance not stated"
    return f"atol {fmt(atol)}, rtol {fmt(rtol)}"


def short_source(source: Any) -> str:
    """``envelope (K=64)`` as it is; a CPP_FLOOR.json path by its last two parts."""
    text = str(source)
    if "/" in text or "\\" in text:
        parts = Path(text).parts
        return "/".join(parts[-2:])
    return text


# --------------------------------------------------------------------------- normalising input

def _case_json(item: Any) -> dict:
    """One comparison as its JSON dict (objects through ``to_json``, with every per-landmark list)."""
    if isinstance(item, dict):
        return item
    to_json = getattr(item, "to_json", None)
    if to_json is None:
        raise InputError(f"cannot report on a {type(item).__name__} (no to_json)")
    try:
        data = to_json(per_landmark="all")  # CaseComparison: the report wants every landmark
    except TypeError:
        data = to_json()  # CaseFailure and other results without per-landmark data
    from ..compare.struct import CaseComparison, CaseFailure
    if isinstance(item, (CaseComparison, CaseFailure)):
        return data  # their to_json gives plain JSON values already (ints, floats, None, lists, dicts)
    # Anything else: round-trip through JSON so that the report sees what a saved summary.json holds.
    return json.loads(json.dumps(data, default=json_default))


def _summary_of(cases: list[dict]) -> dict:
    """Counts when the caller gave comparisons without a summary."""
    ok = [c for c in cases if not _is_failure(c)]
    by_mode: dict[str, dict[str, int]] = {}
    for c in ok:
        m = by_mode.setdefault(str(c.get("mode")), {"total": 0, "passed": 0, "diverged": 0})
        m["total"] += 1
        m["passed" if c["verdict"] == "pass" else "diverged"] += 1
    n_pass = sum(c["verdict"] == "pass" for c in ok)
    return {"total": len(ok), "passed": n_pass, "diverged": len(ok) - n_pass,
            "errors": len(cases) - len(ok), "by_mode": by_mode}


def _object_summary(items: Any) -> dict | None:
    """The comparator's own Summary of CaseComparison/CaseFailure objects, None for dicts."""
    if not items or any(isinstance(c, dict) for c in items):
        return None
    try:
        from ..compare.struct import Summary
        return json.loads(json.dumps(Summary.from_results(items).to_json(), default=json_default))
    except Exception:  # noqa: BLE001  (older comparator: count here instead)
        return None


def _is_failure(c: dict) -> bool:
    """A case that could not be compared (CaseFailure JSON: an error, no verdict)."""
    return "error" in c and "verdict" not in c


def normalise(comparisons: Any) -> dict:
    """``{"cases": [...], "errors": [...], "summary": {...}}`` from any accepted input.

    Parameters
    ----------
    comparisons : dict, list or object
        The comparator JSON (``{"cases", "errors", "summary", ...}``, as
        ``clnfdiag compare --json`` writes it), a list of case dicts, a list
        of CaseComparison / CaseFailure objects, or one of them. Failures go
        to ``errors``; other top-level keys are kept.

    Raises
    ------
    InputError
        Anything else, or a case without ``case``.
    """
    if isinstance(comparisons, dict) and "cases" in comparisons:
        items = list(comparisons["cases"]) + list(comparisons.get("errors") or [])
        summary = comparisons.get("summary")
        extra = {k: v for k, v in comparisons.items() if k not in ("cases", "errors", "summary")}
    else:
        if isinstance(comparisons, dict) or hasattr(comparisons, "to_json"):
            comparisons = [comparisons]
        if not isinstance(comparisons, (list, tuple)):
            raise InputError(f"expected the comparator JSON or a list of comparisons, got "
                             f"{type(comparisons).__name__}")
        items = list(comparisons)
        summary, extra = _object_summary(items), {}
    entries = [_case_json(c) for c in items]
    for i, c in enumerate(entries):
        if not isinstance(c, dict) or "case" not in c:
            raise InputError(f"case entry {i} is not a comparison (no 'case')")
    cases = [c for c in entries if not _is_failure(c)]
    errors = [c for c in entries if _is_failure(c)]
    if not isinstance(summary, dict):
        summary = _summary_of(entries)
    return {"cases": cases, "errors": errors, "summary": summary, **extra}


def load_summary(path: str | Path) -> dict:
    """Read a saved comparator JSON (``summary.json``) and normalise it.

    Raises
    ------
    InputError
        Missing file, invalid JSON or not a comparator JSON.
    """
    path = Path(path)
    data = read_json(path, InputError, "no such file")
    if not (isinstance(data, list) or (isinstance(data, dict) and ("cases" in data or "case" in data))):
        raise InputError("not a comparison summary (expected {\"cases\": [...], \"summary\": {...}})", path)
    try:
        return normalise(data)
    except InputError as err:
        raise InputError(err.message, path) from None


def dump_json(data: dict, path: Path) -> None:
    """Write ``data`` as strict JSON (NaN/inf as null).

    Compact, one case per line: with ``indent`` json falls back to its pure-Python
    encoder, which took a second on a 12-comparison summary.
    """
    body = dict(data) if isinstance(data, dict) else data
    cases = body.pop("cases", None) if isinstance(body, dict) else None
    if cases is None:
        text = _strict_json(body)
    else:
        head = _strict_json(body)
        rows = ",\n".join(_strict_json(c) for c in cases)
        text = head[:-1] + (', ' if body else '') + '"cases": [\n' + rows + "\n]}"
    path.write_text(text + "\n", encoding="utf-8")


def _strict_json(obj: Any) -> str:
    """``obj`` as strict JSON; NaN/inf become null (walked in Python only when there are some)."""
    try:
        return json.dumps(obj, default=json_default, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), default=json_default, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- one case

@dataclass
class CaseView:
    """Read-only view of one case's JSON with the look-ups the report needs.

    Attributes
    ----------
    data : dict
        The case's JSON.
    index : int
        Position in the run (makes ``slug`` unique).
    """

    data: dict
    index: int = 0
    stages: dict[str, dict] = field(init=False)

    def __post_init__(self) -> None:
        self.stages = {s["stage"]: s for s in self.data.get("stages") or [] if isinstance(s, dict) and "stage" in s}

    # ---- identity
    @property
    def case(self) -> str:
        return str(self.data.get("case"))

    @property
    def mode(self) -> str:
        return str(self.data.get("mode") or "")

    @property
    def is_failure(self) -> bool:
        """A case that could not be compared (CaseFailure JSON)."""
        return _is_failure(self.data)

    @property
    def title(self) -> str:
        return f"{self.case} ({self.mode})" if self.mode else self.case

    @property
    def slug(self) -> str:
        """File-name-safe unique id of this (case, mode)."""
        raw = f"{self.index:02d}_{self.case}_{self.mode}".strip("_")
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)

    @property
    def verdict(self) -> str:
        return str(self.data.get("verdict") or ("error" if self.is_failure else "?"))

    @property
    def first_divergent_stage(self) -> str | None:
        return self.data.get("first_divergent_stage")

    # ---- landmarks and impact
    @cached_property
    def n_landmarks(self) -> int:
        for s in self.stages.values():
            for name in MAP_FIELDS + (POINT_FIELD,):
                if isinstance(s.get(name), list):
                    return len(s[name])
        return N_LANDMARKS

    @property
    def landmark_tolerance(self) -> float:
        """Allowed final-landmark error, px (the case's own, else the landmarks stage's atol, else 0.01)."""
        tol = self.data.get("landmark_tolerance_px")
        if tol is None:
            entry = self.stages.get("final/landmarks") or {}
            tol = entry.get("atol")
        return float(tol) if tol is not None else DEFAULT_LANDMARK_TOL

    def impact_value(self, name: str) -> tuple[float | None, str]:
        """``(px, source)`` of an impact quantity: the replayed impact (``impact``), else, in
        propagated mode only, the error observed in the trace (``observed``).

        In isolated mode every stage is fed the golden's inputs, so the trace's own final
        landmarks and mean-shifts say nothing about what a divergence does to the fit: there
        only a replay counts.
        """
        sources = ("impact",) if self.is_isolated else ("impact", "observed")
        for source in sources:
            block = self.data.get(source)
            if isinstance(block, dict) and block.get(name) is not None:
                return float(block[name]), source
        return None, ""

    @property
    def is_isolated(self) -> bool:
        return self.mode == "isolated"

    @property
    def impact_allowed(self) -> float:
        """The landmark move a replayed impact may make: the impact's ``noise_floor_px`` (what the
        comparator judged it against), else the case's landmark tolerance."""
        block = self.data.get("impact")
        allowed = _finite_or_none(block.get("noise_floor_px")) if isinstance(block, dict) else None
        return self.landmark_tolerance if allowed is None else allowed

    def landmark_verdict(self) -> tuple[str, str]:
        """``(css class, short phrase)``: "landmarks unaffected" / "landmarks affected" /
        "landmark impact not replayed" / not evaluated."""
        cls, sentence = self.landmark_effect()
        return cls, sentence.split(":")[0].split(" (")[0]

    def landmark_effect(self) -> tuple[str, str]:
        """``(css class, sentence)``: whether the divergence reaches the final landmarks.

        Isolated mode: only from the replayed impact of the first divergent stage
        (``impact``; its ``reaches_landmarks`` when the comparator judged it). Every stage
        there is fed the golden's inputs, so the trace's final landmarks say nothing about
        the effect: without a replay the answer is "landmark impact not replayed" (unless
        every stage is bit-identical to the golden, which leaves nothing to reach them).

        Propagated mode: from the final landmarks observed end to end and from the replayed
        impact; affected when either is beyond what it is allowed.
        """
        impact = self._impact_part()
        if impact is not None and impact[0] is None:
            return "unknown", "landmark impact not evaluated (the replay gave no finite landmark move)"
        if self.is_isolated:
            if impact is not None:
                affected, text = impact
                return ("bad", f"landmarks affected: {text}") if affected else ("ok", f"landmarks unaffected: {text}")
            if self.verdict == "pass" and self.outcome == IDENTICAL:
                return "ok", "landmarks unaffected (every stage bit-identical to the golden)"
            why = ("no stage beyond tolerance, so none was replayed" if not self.first_divergent_stage
                   else "the comparison ran without an impact replay")
            return "unknown", (f"landmark impact not replayed ({why}; in isolated mode every stage is fed the "
                               f"golden's inputs, so this trace's final landmarks say nothing about it)")
        parts = [p for p in (self._observed_part(), impact) if p is not None]
        if not parts:
            if self.verdict == "pass":
                return "ok", "landmarks unaffected (no stage beyond tolerance)"
            return "unknown", "landmark impact not evaluated"
        parts.sort(key=lambda p: not p[0])  # what says "affected" first
        text = "; ".join(t for _, t in parts)
        if any(a for a, _ in parts):
            return "bad", f"landmarks affected: {text}"
        return "ok", f"landmarks unaffected: {text}"

    def _impact_part(self) -> tuple[bool | None, str] | None:
        """``(affected, text)`` of the replayed impact; None without one, ``(None, "")`` when the
        replay gave no finite move."""
        block = self.data.get("impact")
        if not isinstance(block, dict) or "landmarks_max_px" not in block:
            return None
        px = _finite_or_none(block.get("landmarks_max_px"))
        if px is None:
            return None, ""
        allowed = self.impact_allowed
        first = self.stages.get(self.first_divergent_stage or "") or {}
        reach = first.get("reaches_landmarks")
        affected = bool(reach) if reach is not None else not px <= allowed
        where = f" of {self.first_divergent_stage}" if self.first_divergent_stage else ""
        return affected, (f"replayed impact{where} moves them {fmt(px)} px {'&gt;' if affected else '&le;'} "
                          f"allowed {fmt(allowed)} px")

    def _observed_part(self) -> tuple[bool, str] | None:
        """``(affected, text)`` of the final landmarks observed end to end (propagated mode)."""
        obs, _ = self._observed("landmarks_max_px")
        if obs is None:
            return None
        tol = self.landmark_tolerance
        final = self.stages.get("final/landmarks") or {}
        within = final.get("within_tolerance")
        affected = (not within) if within is not None else not obs <= tol
        return affected, (f"final error max {fmt(obs)} px {'&gt;' if affected else '&le;'} tolerance "
                          f"{fmt(tol)} px (observed end to end)")

    def _observed(self, name: str) -> tuple[float | None, str]:
        block = self.data.get("observed")
        if isinstance(block, dict) and block.get(name) is not None:
            return float(block[name]), "observed"
        return None, ""

    # ---- outcome and rounding noise
    @property
    def outcome(self) -> str:
        """``identical``, ``within_noise`` or ``beyond_noise``: the case's ``outcome``, else (older
        JSON) derived: diverged -> beyond noise, every stage identical -> identical."""
        out = self.data.get("outcome")
        if out in OUTCOMES:
            return out
        if self.is_failure or self.verdict != "pass":
            return BEYOND_NOISE
        if self.stages and all(stage_outcome(s) == IDENTICAL for s in self.stages.values()):
            return IDENTICAL
        return WITHIN_NOISE

    def stage_outcomes(self) -> dict[str, int]:
        """How many stages have each outcome."""
        counts = {o: 0 for o in OUTCOMES}
        for s in self.stages.values():
            counts[stage_outcome(s)] += 1
        return counts

    @property
    def noise_floor(self) -> float | None:
        """The case's rounding noise on the final landmarks, px (None when unknown)."""
        return _finite_or_none(self.data.get("noise_floor_px"))

    @property
    def cpp_floor(self) -> float | None:
        return _finite_or_none(self.data.get("cpp_floor_px"))

    @property
    def noise_source(self) -> str | None:
        src = self.data.get("noise_floor_source")
        return None if src is None else str(src)

    def noise_band_text(self) -> str:
        """The case's rounding noise in words: ``rounding noise 0.000315 px (envelope (K=64)); C++ floor
        0.00031 px`` (empty when the JSON states none)."""
        parts = []
        if self.noise_floor is not None:
            src = f" ({short_source(self.noise_source)})" if self.noise_source else ""
            parts.append(f"rounding noise {fmt(self.noise_floor)} px{src}")
        if self.cpp_floor is not None:
            parts.append(f"C++ floor {fmt(self.cpp_floor)} px")
        return "; ".join(parts)

    def outcome_text(self) -> str:
        """One line on the outcome with its band: what "within rounding noise" allowed here."""
        o = self.outcome
        counts = self.stage_outcomes()
        band = self.noise_band_text()
        if o == IDENTICAL:
            text = "bit-identical: every compared stage equals the golden"
        elif o == WITHIN_NOISE:
            text = (f"within rounding noise: {counts[WITHIN_NOISE]} stage(s) differ, each within its band "
                    f"(envelope band in propagated mode, else the allowed atol/rtol); final landmarks "
                    f"allowed {fmt(self.landmark_tolerance)} px")
        else:
            text = f"beyond noise: {counts[BEYOND_NOISE]} stage(s) beyond their band"
        return text + (f"; {band}" if band else "")

    @cached_property
    def landmark_band(self) -> np.ndarray | None:
        """(n,) per final landmark, the envelope's band of rounding noise, px (None without one)."""
        values = self.data.get("landmark_band_px")
        if not isinstance(values, list) or not values:
            return None
        return to_float_array(values, self.n_landmarks)

    @property
    def envelope_label(self) -> str:
        """``rounding noise (envelope K=64)`` (the K when the JSON states it)."""
        m = re.search(r"K\s*=\s*(\d+)", self.noise_source or "")
        return f"rounding noise (envelope K={m.group(1)})" if m else "rounding noise (envelope)"

    # ---- causes
    @property
    def causes(self) -> list[dict]:
        """The ranked causes (``causes``, largest impact first, as the comparator sorted them)."""
        causes = self.data.get("causes")
        if not isinstance(causes, list):
            return []
        return [c for c in causes if isinstance(c, dict) and c.get("stage_kind") is not None]

    # ---- stages
    def passes(self) -> list[int]:
        """Pass indices present among the stage keys, sorted."""
        return sorted({p for k in self.stages if (p := pass_of(k)) is not None})

    def lm_array(self, stage: str, name: str) -> np.ndarray | None:
        """A per-landmark list of a stage as floats (NaN for null), None if absent."""
        entry = self.stages.get(stage)
        if entry is None:
            return None
        return to_float_array(entry.get(name), self.n_landmarks)

    def tolerance(self, stage: str) -> tuple[float | None, float | None]:
        """``(atol, rtol)`` of a stage as the comparator used them."""
        entry = self.stages.get(stage) or {}
        atol, rtol = entry.get("atol"), entry.get("rtol")
        return (None if atol is None else float(atol)), (None if rtol is None else float(rtol))

    def visible(self, k: int) -> np.ndarray | None:
        """Visibility of pass ``k``: ``visibilities`` list if given, else non-null golden map peaks."""
        vis = self.data.get("visibilities")
        if isinstance(vis, dict) and str(k) in vis:
            return np.asarray(vis[str(k)], dtype=bool)
        for kind in ("response", "response_sigma", "response_raw", "area_of_interest"):
            peaks = self.lm_array(f"pass{k}/{kind}", "peak_golden")
            if peaks is not None:
                return np.isfinite(peaks)
        return None

    def map_stage_for_plot(self) -> str | None:
        """The response-map stage whose worst landmarks are shown: the first divergent one
        if it is a map stage, else the map stage with the largest error/allowed ratio."""
        first = self.first_divergent_stage
        if first in self.stages and kind_of(first) in MAP_KINDS and kind_of(first) != "area_of_interest":
            return first
        best, best_key = None, None
        for key, s in self.stages.items():
            if kind_of(key) not in MAP_STAGES:
                continue
            r = s.get("ratio")
            r = s.get("max_rel") if r is None else r
            score = (not s.get("within_tolerance", True), math.inf if r is None else float(r))
            if best_key is None or score > best_key:
                best, best_key = key, score
        return best

    def worst_landmarks(self, stage: str, n: int = 3) -> list[int]:
        """Up to ``n`` worst landmarks of a stage (the comparator's list, else by relative error)."""
        entry = self.stages.get(stage) or {}
        worst = []
        for w in entry.get("worst_landmarks") or []:
            i = w.get("landmark", w.get("index")) if isinstance(w, dict) else w
            if i is not None:
                worst.append(int(i))
        if not worst:
            rel = self.lm_array(stage, "rel_per_landmark")
            if rel is None:
                rel = self.lm_array(stage, "max_abs_per_landmark")
            if rel is not None and np.isfinite(rel).any():
                order = np.argsort(-np.nan_to_num(rel, nan=-1.0), kind="stable")
                worst = [int(i) for i in order if np.isfinite(rel[i])]
        return worst[:n]


def case_views(summary: dict) -> list[CaseView]:
    """A :class:`CaseView` per comparison of a normalised summary, then one per failure."""
    entries = list(summary["cases"]) + list(summary.get("errors") or [])
    return [CaseView(c, i) for i, c in enumerate(entries)]


# --------------------------------------------------------------------------- magnitude.csv

def magnitude_columns() -> list[str]:
    """Columns of magnitude.csv, in order."""
    cols = ["case", "mode", "pass", "landmark", "region", "visible"]
    for suffix in MAP_STAGES.values():
        cols += [f"peak_golden_{suffix}", f"peak_candidate_{suffix}", f"peak_ratio_{suffix}",
                 f"max_abs_{suffix}", f"rel_{suffix}", f"peak_shift_px_{suffix}",
                 f"correlation_{suffix}", f"within_tolerance_{suffix}"]
    cols.append("within_tolerance")
    return cols


def _lm_within(view: CaseView, stage: str) -> np.ndarray | None:
    """Per-landmark within-tolerance of a map stage (None when it cannot be told)."""
    entry = view.stages.get(stage)
    if entry is None:
        return None
    n = view.n_landmarks
    err = view.lm_array(stage, "max_abs_per_landmark")
    peak = view.lm_array(stage, "peak_golden")
    atol, rtol = view.tolerance(stage)
    if err is not None and peak is not None and atol is not None and rtol is not None:
        allowed = atol + rtol * np.nan_to_num(peak, nan=0.0)
        out = np.where(np.isfinite(peak), err <= allowed, True)
        return out.astype(object)
    if entry.get("within_tolerance"):
        # The comparator wrote no per-landmark lists: a stage within tolerance is so for every landmark.
        return np.full(n, True, dtype=object)
    return None


def _and3(a: bool | None, b: bool | None) -> bool | None:
    """Three-valued AND: False wins, then unknown (None), then True."""
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return bool(a and b)


def magnitude_table(views: Iterable[CaseView]) -> pd.DataFrame:
    """One row per (case, mode, pass, landmark): response-map magnitudes golden vs candidate."""
    cols = magnitude_columns()
    data: dict[str, list] = {c: [] for c in cols}  # one DataFrame at the end: one per block is slow
    for v in views:
        if v.is_failure:
            continue
        n = v.n_landmarks
        for k in v.passes():
            block: dict[str, Any] = {
                "case": [v.case] * n, "mode": [v.mode] * n, "pass": [k] * n,
                "landmark": list(range(n)), "region": [region_of(i) for i in range(n)],
            }
            vis = v.visible(k)
            block["visible"] = list(vis.astype(int)) if vis is not None else [None] * n
            all_within: list = [True] * n
            for kind, suffix in MAP_STAGES.items():
                stage = f"pass{k}/{kind}"
                for name, col in (("peak_golden", "peak_golden"), ("peak_candidate", "peak_candidate"),
                                  ("peak_ratio", "peak_ratio"), ("max_abs_per_landmark", "max_abs"),
                                  ("rel_per_landmark", "rel"), ("peak_shift_px", "peak_shift_px"),
                                  ("correlation", "correlation")):
                    arr = v.lm_array(stage, name)
                    block[f"{col}_{suffix}"] = list(arr) if arr is not None else [np.nan] * n
                within = _lm_within(v, stage)
                block[f"within_tolerance_{suffix}"] = list(within) if within is not None else [None] * n
                all_within = [_and3(a, None if within is None else within[i])
                              for i, a in enumerate(all_within)]
            block["within_tolerance"] = all_within
            for c in cols:
                data[c].extend(block[c])
    # A column holding None stays object (ints stay ints, bools bools), as concatenating per-block
    # frames made it; the others get pandas' own dtype.
    return pd.DataFrame({c: pd.Series(vals, dtype=object) if any(x is None for x in vals) else vals
                         for c, vals in data.items()}, columns=cols)


# --------------------------------------------------------------------------- convergence.csv

def _rms(x: np.ndarray | None) -> float:
    if x is None:
        return math.nan
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x * x))) if x.size else math.nan


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def convergence_rows(view: CaseView) -> list[dict]:
    """The case's convergence entries, one per (pass, phase, iteration).

    Uses the comparator's ``convergence`` list; without one, the rows are the
    (pass, phase, iteration) triples of the stage keys, with the differences
    read off the per-landmark errors of ``shape`` and ``mean_shifts``.
    """
    rows = []
    conv = view.data.get("convergence")
    if isinstance(conv, list) and conv:
        for e in conv:
            row = {"case": view.case, "mode": view.mode, "pass": int(e.get("pass", e.get("pass_index", -1))),
                   "phase": e.get("phase"), "iteration": int(e.get("iteration", -1))}
            for name in CONVERGENCE_FIELDS:
                row[name] = _num(e.get(name))
            rows.append(row)
        return rows
    triples: dict[tuple[int, str, int], dict[str, str]] = {}
    for key in view.stages:
        sk = parse(key)
        if sk.iteration is not None and sk.part is None:
            triples.setdefault((sk.pass_index, sk.phase, sk.iteration), {})[sk.name] = key
    for (k, phase, it), keys in sorted(triples.items(), key=lambda t: (t[0][0], _phase_rank(t[0][1]), t[0][2])):
        row = {"case": view.case, "mode": view.mode, "pass": k, "phase": phase, "iteration": it}
        for name in CONVERGENCE_FIELDS:
            row[name] = math.nan
        if "mean_shifts" in keys:
            row["mean_shift_rms_diff"] = _rms(view.lm_array(keys["mean_shifts"], POINT_FIELD))
        if "shape" in keys:
            row["landmark_rms_diff"] = _rms(view.lm_array(keys["shape"], POINT_FIELD))
        rows.append(row)
    return rows


def _phase_rank(phase: str) -> int:
    return {"rigid": 0, "nonrigid": 1}.get(phase, 2)


def causes_table(views: Iterable[CaseView]) -> pd.DataFrame:
    """One row per ranked cause of every comparison (causes.csv), rank 1 = largest landmark impact."""
    rows = []
    for v in views:
        if v.is_failure:
            continue
        for rank, c in enumerate(v.causes, 1):
            rows.append({"case": v.case, "mode": v.mode, "rank": rank, "stage_kind": c.get("stage_kind"),
                         "first_stage": c.get("first_stage"),
                         "landmarks_impact_px": _num(c.get("landmarks_impact_px")),
                         "mean_shifts_impact_px": _num(c.get("mean_shifts_impact_px")),
                         "known_fault": c.get("known_fault"), "beyond_noise": c.get("beyond_noise")})
    return pd.DataFrame(rows, columns=list(CAUSE_COLUMNS))


def convergence_table(views: Iterable[CaseView]) -> pd.DataFrame:
    """One row per (case, mode, pass, phase, iteration): convergence golden vs candidate."""
    cols = ["case", "mode", "pass", "phase", "iteration", *CONVERGENCE_FIELDS]
    rows = [r for v in views if not v.is_failure for r in convergence_rows(v)]
    return pd.DataFrame(rows, columns=cols)
