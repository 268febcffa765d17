"""Sequences in the comparator: a tracking run judged frame by frame against a tracking reference.

A *tracking reference* is what ``../shared/tracking/`` holds: per sequence a
``sequence.json`` (frames, their SHA-256, the initial box) and one
``reference_<preset>_<h|noh>[_vidinit].json`` per run of OpenFace C++'s
``DetectLandmarksInVideo``, each with per frame the landmarks, parameters,
likelihood, success, windows and whether the face detector ran; and, where
present, ``haswell_spread.json``: how far the C++ itself moves per frame when
only its BLAS kernel changes. A *traced sequence* (``clnfdiag track
--trace-out DIR``: ``DIR/track.json``) has the same per-frame fields and can
stand on either side.

For each run the candidate tracks the same frames with the run's parameters
(clnfdiag's :class:`~clnfdiag.tracking.Tracker`, a port's stages inside it, or
a traced sequence given with ``--candidate``), and the comparison gives per
frame and per landmark the Euclidean error in pixels, whether the frame's
landmarks and parameters are bit-identical (float32 bits), the first frame that
differs at all and the first beyond tolerance.

Tolerance (per frame): equality with ``--exact``; otherwise the largest of
:data:`MIN_TOLERANCE_PX` (the single-image comparator's landmark floor) and
twice the C++'s own spread on that frame (two BLAS kernels are one sample of
how far faithful builds of OpenFace differ, a lower bound: the single-image
comparator doubles its C++ floor for the same reason). Without a spread file
the floor alone applies.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import GoldenError, InputError
from ..models.locate import sha256_file

F32 = np.float32

#: Format tag of a traced sequence's ``track.json``.
TRACK_FORMAT = "clnfdiag-track/1"
#: The file naming a traced sequence folder.
TRACK_FILE = "track.json"
#: The file naming a tracking reference folder.
SEQUENCE_FILE = "sequence.json"
#: The C++ spread file next to ``sequence.json``.
SPREAD_FILE = "haswell_spread.json"
#: Landmark floor of a sequence comparison (px): the single-image comparator's.
MIN_TOLERANCE_PX = 0.01
#: Twice the C++'s measured spread (a lower bound of the builds' spread).
SPREAD_FACTOR = 2.0
#: Outcomes, best first.
IDENTICAL, WITHIN, BEYOND = "identical", "within C++ spread", "beyond"


@dataclass
class SequenceRun:
    """One tracking run to compare against (a C++ reference or a traced sequence).

    Attributes
    ----------
    name : str
        ``<sequence>/<run file stem>``.
    path : Path
        The run's JSON file.
    frames : list[Path]
        Frame images, in order.
    frame_sha256 : list[str] or None
    initial_box : (4,) tuple of float
    preset : str
    hierarchical : bool
    init : str
        ``box`` (frame 0 placed on the box) or ``vid`` (a detector returns the
        box once on frame 0, multi-view fit, as FaceLandmarkVid).
    landmarks : (F, n, 2) float32
    params_global : (F, 6) float32
    params_local : (F, m) float32
    likelihood : (F,) float32
    success : (F,) bool
    windows : list[list[int] or None]
    detector_ran : (F,) bool
    spread_px : (F,) float64 or None
        The C++'s own per-frame spread (max landmark distance between BLAS kernels).
    source : str
        ``C++`` or what made the traced sequence.
    """

    name: str
    path: Path
    frames: list[Path]
    frame_sha256: list[str] | None
    initial_box: tuple[float, float, float, float]
    preset: str
    hierarchical: bool
    init: str
    landmarks: np.ndarray
    params_global: np.ndarray
    params_local: np.ndarray
    likelihood: np.ndarray
    success: np.ndarray
    windows: list
    detector_ran: np.ndarray
    spread_px: np.ndarray | None = None
    source: str = "C++"

    @property
    def n_frames(self) -> int:
        return len(self.frames)


# --------------------------------------------------------------------------- reading


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise GoldenError("file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenError(f"cannot read ({exc})", path) from None
    except json.JSONDecodeError as exc:
        raise GoldenError(f"not valid JSON ({exc.msg})", path, f"line {exc.lineno}") from None


def _array(values: Any, shape_tail: tuple[int, ...], path: Path, what: str) -> np.ndarray:
    """A float32 array of per-frame values, checked for shape and finiteness."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise GoldenError(f"{what} is not numeric", path) from None
    if arr.shape[1:] != shape_tail:
        raise GoldenError(f"{what} has shape {arr.shape}, expected (frames, {', '.join(map(str, shape_tail))})",
                          path)
    if not np.all(np.isfinite(arr)):
        frame = int(np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)).any(axis=1))[0, 0])
        raise GoldenError(f"{what} has NaN or infinite values", path, f"frame {frame}")
    return arr.astype(F32)


def _frames_block(records: list, path: Path) -> dict[str, Any]:
    """The per-frame arrays of a run's ``frames`` list (C++ reference or traced sequence)."""
    if not isinstance(records, list) or not records:
        raise GoldenError("no frames", path)
    try:
        lm = [r["landmarks"] for r in records]
        pg = [r["params_global"] for r in records]
        pl = [r["params_local"] for r in records]
        lh = [r["likelihood"] for r in records]
        ok = [bool(r["detection_success"] if "detection_success" in r else r["success"]) for r in records]
        win = [r.get("windows") for r in records]
        det = [bool(r["detector_calls"]) if "detector_calls" in r else bool(r.get("detector_needed", False))
               for r in records]
    except (KeyError, TypeError) as exc:
        raise GoldenError(f"a frame record lacks {exc}", path) from None
    n_modes = len(pl[0]) if isinstance(pl[0], list) else 0
    return dict(landmarks=_array(lm, (68, 2), path, "landmarks"),
                params_global=_array(pg, (6,), path, "params_global"),
                params_local=_array(pl, (n_modes,), path, "params_local"),
                likelihood=np.asarray(lh, F32), success=np.asarray(ok, bool), windows=win,
                detector_ran=np.asarray(det, bool))


def _spread(seq_dir: Path, run_key: str, n_frames: int) -> np.ndarray | None:
    """The C++'s per-frame spread of a run from ``haswell_spread.json`` (None when absent)."""
    p = seq_dir / SPREAD_FILE
    if not p.is_file():
        return None
    entry = _load_json(p).get("spread", {}).get(run_key)
    if entry is None:
        return None
    vals = np.asarray(entry.get("per_frame_max_px", []), np.float64)
    if vals.shape != (n_frames,) or not np.all(np.isfinite(vals)):
        raise GoldenError(f"spread of run {run_key!r} has {vals.size} values for {n_frames} frames", p)
    return vals


def load_reference_run(path: Path) -> SequenceRun:
    """One C++ tracking run ``reference_<preset>_<h|noh>[_vidinit].json`` with its sequence."""
    path = Path(path)
    seq_dir = path.parent
    if not (seq_dir / SEQUENCE_FILE).is_file() and (seq_dir.parent / SEQUENCE_FILE).is_file():
        seq_dir = seq_dir.parent  # a run under haswell/
    seq = _load_json(seq_dir / SEQUENCE_FILE)
    ref = _load_json(path)
    try:
        frames = [seq_dir / f for f in seq["frames"]]
        box = tuple(float(v) for v in ref.get("initial_box_xywh", seq["initial_box_xywh"]))
        preset = str(ref["preset"])
        hier = bool(ref["refine_hierarchical"])
        init = str(ref.get("init", "box"))
    except (KeyError, TypeError, ValueError) as exc:
        raise GoldenError(f"sequence or run description incomplete ({exc})", path) from None
    block = _frames_block(ref.get("frames"), path)
    if len(block["landmarks"]) != len(frames):
        raise GoldenError(f"{len(block['landmarks'])} frame records for {len(frames)} frames", path)
    key = path.stem.removeprefix("reference_")
    spread = _spread(seq_dir, key, len(frames)) if path.parent == seq_dir else None
    return SequenceRun(f"{seq_dir.name}/{path.stem}", path, frames, seq.get("frame_sha256"), box, preset,
                       hier, init, spread_px=spread, **block)


def load_traced_run(folder: Path) -> SequenceRun:
    """A traced sequence (``clnfdiag track --trace-out DIR``) as a run to compare against."""
    path = Path(folder) / TRACK_FILE
    doc = _load_json(path)
    if doc.get("format") != TRACK_FORMAT:
        raise GoldenError(f"not a {TRACK_FORMAT} file (format {doc.get('format')!r})", path)
    try:
        frames = [Path(r["image"]) for r in doc["frames"]]
        frames = [f if f.is_absolute() else path.parent / f for f in frames]
        box = doc.get("initial_box_xywh")
        box = tuple(float(v) for v in box) if box is not None else None
        preset = str(doc["preset"])
        hier = bool(doc["parameters"]["refine_hierarchical"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GoldenError(f"track description incomplete ({exc})", path) from None
    block = _frames_block(doc["frames"], path)
    return SequenceRun(f"{Path(folder).name}/track", path, frames,
                       [r.get("image_sha256") for r in doc["frames"]], box, preset, hier,
                       str(doc.get("init", "box")), source=str(doc.get("producer", "traced")), **block)


def is_sequence_path(path: Path) -> bool:
    """True for a tracking reference (folder or run JSON), a folder of them, or a traced sequence."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".json" and p.name.startswith("reference_") and (
            (p.parent / SEQUENCE_FILE).is_file() or (p.parent.parent / SEQUENCE_FILE).is_file())
    if not p.is_dir():
        return False
    if (p / SEQUENCE_FILE).is_file() or (p / TRACK_FILE).is_file():
        return True
    return any((c / SEQUENCE_FILE).is_file() for c in p.iterdir() if c.is_dir())


def find_runs(paths: Iterable[Path]) -> list[SequenceRun]:
    """Every run named by ``paths``: run JSON files, sequence folders (their top-level
    ``reference_*.json``), folders of sequence folders, traced sequence folders."""
    runs: list[SequenceRun] = []
    for arg in paths:
        p = Path(arg)
        if not p.exists():
            raise InputError("no such file or folder", p)
        if p.is_file():
            runs.append(load_reference_run(p))
        elif (p / TRACK_FILE).is_file():
            runs.append(load_traced_run(p))
        elif (p / SEQUENCE_FILE).is_file():
            files = sorted(p.glob("reference_*.json"))
            if not files:
                raise GoldenError("sequence folder without reference_*.json runs", p)
            runs.extend(load_reference_run(f) for f in files)
        else:
            subs = sorted(c for c in p.iterdir() if c.is_dir() and (c / SEQUENCE_FILE).is_file())
            if not subs:
                raise GoldenError("neither a tracking reference nor a traced sequence", p)
            runs.extend(find_runs(subs))
    return runs


def check_frames(run: SequenceRun) -> None:
    """Every frame present, and equal to the recorded SHA-256 (GoldenError naming the frame)."""
    for i, f in enumerate(run.frames):
        if not f.is_file():
            raise GoldenError("frame image not found", f)
        want = run.frame_sha256[i] if run.frame_sha256 and i < len(run.frame_sha256) else None
        if want:
            got = sha256_file(f)
            if got != want:
                raise GoldenError(f"frame differs from the run's SHA-256 ({got[:12]}... != {want[:12]}...)", f)


# --------------------------------------------------------------------------- comparing


@dataclass
class FrameComparison:
    """One frame of a sequence comparison.

    Attributes
    ----------
    frame : int
    max_px, mean_px : float
        Largest and mean Euclidean landmark error (px).
    landmark_px : (n,) float64
        Error per landmark.
    identical : bool
        Landmarks and both parameter vectors equal bit for bit.
    params_global_max_abs, params_local_max_abs : float
    tolerance_px : float
    windows_equal, detector_equal, success_equal : bool
    """

    frame: int
    max_px: float
    mean_px: float
    landmark_px: np.ndarray
    identical: bool
    params_global_max_abs: float
    params_local_max_abs: float
    tolerance_px: float
    windows_equal: bool
    detector_equal: bool
    success_equal: bool
    spread_px: float | None = None

    @property
    def beyond(self) -> bool:
        return (self.max_px > self.tolerance_px or not self.windows_equal or not self.detector_equal
                or not self.success_equal or (self.tolerance_px == 0 and not self.identical))


@dataclass
class SequenceComparison:
    """A tracking run against its reference.

    Attributes
    ----------
    run : str
    candidate : str
        What tracked (``clnfdiag``, ``port pyclnf``, a traced folder).
    frames : list[FrameComparison]
    outcome : str
        ``identical``, ``within C++ spread`` or ``beyond``.
    first_differing_frame : int or None
        First frame whose landmarks or parameters differ in any bit.
    first_beyond_frame : int or None
        First frame beyond its tolerance (or with other windows, detector use or success).
    first_above_floor_frame : int or None
        First frame whose largest landmark error exceeds :data:`MIN_TOLERANCE_PX`.
    exact : bool
    note : str
    """

    run: str
    candidate: str
    preset: str
    hierarchical: bool
    init: str
    frames: list[FrameComparison]
    exact: bool
    note: str = ""
    first_divergence_stage: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def max_px(self) -> float:
        return max(f.max_px for f in self.frames)

    @property
    def first_differing_frame(self) -> int | None:
        return next((f.frame for f in self.frames if not f.identical), None)

    @property
    def first_beyond_frame(self) -> int | None:
        return next((f.frame for f in self.frames if f.beyond), None)

    @property
    def first_above_floor_frame(self) -> int | None:
        return next((f.frame for f in self.frames if f.max_px > MIN_TOLERANCE_PX), None)

    @property
    def outcome(self) -> str:
        if all(f.identical and not f.beyond for f in self.frames):
            return IDENTICAL
        return BEYOND if self.first_beyond_frame is not None else WITHIN

    @property
    def passed(self) -> bool:
        return self.outcome != BEYOND

    def line(self) -> str:
        """One human line: outcome, frames, max error, first differing / beyond frame."""
        head = f"{'PASS' if self.passed else 'FAIL':<8}  {self.run}  {self.candidate}"
        parts = [f"{self.outcome}", f"{self.n_frames} frames",
                 f"max {self.max_px:.3g} px", f"first differing frame {_or_dash(self.first_differing_frame)}"]
        if not self.exact:
            parts.append(f"first beyond tolerance {_or_dash(self.first_beyond_frame)}")
        parts.append(f"first above {MIN_TOLERANCE_PX} px {_or_dash(self.first_above_floor_frame)}")
        if self.first_divergence_stage:
            parts.append(f"frame 0 first diverging stage {self.first_divergence_stage}")
        if self.note:
            parts.append(self.note)
        return head + "  " + "; ".join(parts)

    def to_json(self) -> dict:
        return {
            "run": self.run, "candidate": self.candidate, "preset": self.preset,
            "hierarchical": self.hierarchical, "init": self.init, "exact": self.exact,
            "outcome": self.outcome, "passed": self.passed, "n_frames": self.n_frames,
            "max_px": self.max_px, "mean_px": float(np.mean([f.mean_px for f in self.frames])),
            "first_differing_frame": self.first_differing_frame,
            "first_beyond_frame": self.first_beyond_frame,
            "first_above_floor_frame": self.first_above_floor_frame,
            "floor_px": MIN_TOLERANCE_PX,
            "first_divergence_stage": self.first_divergence_stage,
            "note": self.note,
            **self.extra,
            "frames": [{
                "frame": f.frame, "max_px": f.max_px, "mean_px": f.mean_px,
                "identical": f.identical, "tolerance_px": f.tolerance_px, "spread_px": f.spread_px,
                "params_global_max_abs": f.params_global_max_abs,
                "params_local_max_abs": f.params_local_max_abs,
                "windows_equal": f.windows_equal, "detector_equal": f.detector_equal,
                "success_equal": f.success_equal, "beyond": f.beyond,
                "landmark_px": [float(v) for v in f.landmark_px],
            } for f in self.frames],
        }


def _or_dash(v: int | None) -> str:
    return "-" if v is None else str(v)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return math.inf
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def tolerance_px(spread: float | None, exact: bool) -> float:
    """A frame's landmark tolerance (see the module docstring)."""
    if exact:
        return 0.0
    return max(MIN_TOLERANCE_PX, SPREAD_FACTOR * spread) if spread is not None else MIN_TOLERANCE_PX


def compare_frames(ref: SequenceRun, cand: dict[str, Any], candidate: str, exact: bool = False
                   ) -> SequenceComparison:
    """Judge a candidate's per-frame results against a run.

    Parameters
    ----------
    ref : SequenceRun
    cand : dict
        ``landmarks`` (F, n, 2), ``params_global`` (F, 6), ``params_local`` (F, m),
        ``success`` (F,), ``windows`` (F lists), ``detector_ran`` (F,) — the
        fields of :class:`SequenceRun`; F may be smaller than the run's (a
        candidate that stopped), which is reported as beyond.
    candidate : str
    exact : bool
        Tolerance zero: any differing bit is beyond.
    """
    frames: list[FrameComparison] = []
    n = min(ref.n_frames, len(cand["landmarks"]))
    for i in range(n):
        a, b = ref.landmarks[i], np.asarray(cand["landmarks"][i], F32)
        d = np.hypot(*(a.astype(np.float64) - b.astype(np.float64)).T)
        same = (_bits_equal(a, b) and _bits_equal(ref.params_global[i], cand["params_global"][i])
                and _bits_equal(ref.params_local[i], cand["params_local"][i]))
        spread = None if ref.spread_px is None else float(ref.spread_px[i])
        rw, cw = ref.windows[i], cand["windows"][i]
        frames.append(FrameComparison(
            i, float(d.max()), float(d.mean()), d, same,
            _max_abs(ref.params_global[i], np.asarray(cand["params_global"][i], F32)),
            _max_abs(ref.params_local[i], np.asarray(cand["params_local"][i], F32)),
            tolerance_px(spread, exact),
            rw is None or cw is None or list(rw) == list(cw),
            bool(ref.detector_ran[i]) == bool(cand["detector_ran"][i]),
            bool(ref.success[i]) == bool(cand["success"][i]), spread))
    note = "" if n == ref.n_frames else f"candidate has {len(cand['landmarks'])} of {ref.n_frames} frames"
    out = SequenceComparison(ref.name, candidate, ref.preset, ref.hierarchical, ref.init, frames, exact, note)
    if n < ref.n_frames:
        # Missing frames are a divergence: mark the first one missing as beyond.
        frames.append(FrameComparison(n, math.inf, math.inf, np.full(68, math.inf), False, math.inf,
                                      math.inf, tolerance_px(None, exact), False, False, False))
    return out


def records_to_arrays(records: list) -> dict[str, Any]:
    """A candidate's :class:`~clnfdiag.tracking.FrameRecord` list as :func:`compare_frames` wants it."""
    return {
        "landmarks": np.stack([r.landmarks for r in records]).astype(F32),
        "params_global": np.stack([r.params_global for r in records]).astype(F32),
        "params_local": np.stack([r.params_local for r in records]).astype(F32),
        "success": np.array([r.detection_success for r in records], bool),
        "windows": [r.windows for r in records],
        "detector_ran": np.array([r.detector_needed for r in records], bool),
    }


def run_arrays(run: SequenceRun) -> dict[str, Any]:
    """A traced run's arrays as a candidate for :func:`compare_frames`."""
    return {"landmarks": run.landmarks, "params_global": run.params_global, "params_local": run.params_local,
            "success": run.success, "windows": run.windows, "detector_ran": run.detector_ran}


def track_run(run: SequenceRun, fitter, faults=(), progress: Callable[[int], None] | None = None) -> list:
    """Track a run's frames with the run's parameters and initialisation.

    ``init == "box"``: frame 0 through the box overload; ``"vid"``: no box, a
    detector that returns the initial box once (what the C++ references'
    stubbed detector did), as FaceLandmarkVid after a face detection.

    Returns
    -------
    list[FrameRecord]
    """
    from ..fitter import read_image, to_gray
    from ..tracking import Tracker, TrackingParameters

    params = TrackingParameters.from_preset(run.preset, hierarchical=run.hierarchical)
    detector = None
    if run.init == "vid":
        boxes = [run.initial_box]

        def detector(_gray, boxes=boxes):
            return boxes.pop() if boxes else None
    tracker = Tracker(fitter, params, detector=detector, faults=faults)
    out = []
    for i, f in enumerate(run.frames):
        gray = to_gray(read_image(f), f)
        box = run.initial_box if (i == 0 and run.init == "box") else None
        out.append(tracker.step(gray, bbox=box))
        if progress is not None:
            progress(i)
    return out


def match_candidate(run: SequenceRun, candidates: list[SequenceRun]) -> SequenceRun | None:
    """The traced sequence tracking the same frames (by SHA-256, else by file), preset, hierarchy and init."""
    def key(r: SequenceRun):
        frames = tuple(r.frame_sha256) if r.frame_sha256 and all(r.frame_sha256) else tuple(
            str(p.resolve()) for p in r.frames)
        return frames, r.preset, r.hierarchical, r.init
    k = key(run)
    hits = [c for c in candidates if key(c) == k]
    return hits[0] if hits else None


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def summary_json(comparisons: list[SequenceComparison], wall_s: float) -> dict:
    """The comparator JSON of a sequence comparison (strict JSON: a missing frame's inf is null)."""
    return _finite({
        "format": "clnfdiag-sequence-compare/1",
        "summary": {"runs": len(comparisons), "passed": sum(c.passed for c in comparisons),
                    "identical": sum(c.outcome == IDENTICAL for c in comparisons),
                    "wall_time_s": wall_s,
                    "tolerance": f"per frame max({MIN_TOLERANCE_PX} px, {SPREAD_FACTOR:g} x the C++ spread)"},
        "runs": [c.to_json() for c in comparisons],
    })


__all__ = ["SequenceRun", "SequenceComparison", "FrameComparison", "load_reference_run", "load_traced_run",
           "find_runs", "is_sequence_path", "check_frames", "compare_frames", "records_to_arrays", "run_arrays",
           "track_run", "match_candidate", "summary_json", "tolerance_px", "TRACK_FORMAT", "TRACK_FILE",
           "MIN_TOLERANCE_PX", "IDENTICAL", "WITHIN", "BEYOND"]
