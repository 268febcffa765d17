"""Video tracking as OpenFace 2.x runs it (``LandmarkDetector::DetectLandmarksInVideo``).

OpenFace's video mode keeps one CLNF object for the whole sequence and, per
frame:

1. if tracking is initialised, fits from the previous frame's parameters with
   the tracking windows ``window_sizes_small`` (0, 9, 7, 0) when the previous
   frame succeeded, or with ``window_sizes_init`` after a failure (optionally
   after shifting the translation by template matching, ``use_face_template``);
   a failed fit increments ``failures_in_a_row``, a successful one resets it to -1;
2. re-initialises with a face detector when tracking never started (every
   ``6 * reinit_video_every`` frames) or when the fit failed (every
   ``reinit_video_every`` failures): a found face is fitted from its box with
   the multi-view image fit (11 rotation hypotheses, ``window_sizes_init``);
   if that fails during tracking the previous estimate is restored;
3. drops tracking after more than 100 failures in a row.

The first frame of a sequence given a box (the box overload) is placed on the
box with zero shape parameters and fitted by the same tracking branch: since no
frame succeeded yet, with ``window_sizes_init`` (exactly the single-image fit).

Each fit is clnfdiag's own loop (:func:`clnfdiag.clnf.loop.fit_passes`) followed
by the hierarchical refinement of :meth:`clnfdiag.fitter.Fitter.refine`, with
the model of a :class:`~clnfdiag.fitter.Fitter`; this module only carries the
state between frames and decides which fit runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import cv2
import numpy as np

from .clnf.loop import NO_HOOK, NO_LIKELIHOOD
from .clnf.protocol import StageHook
from .faults import NO_FAULTS, with_faults
from .fitter import ROTATION_HYPOTHESES, Fitter
from .parameters import FitParameters, preset
from .trace import Recorder

F32 = np.float32

#: OpenFace's tracking windows (``FaceModelParameters::window_sizes_small``), every preset.
WINDOW_SIZES_SMALL = (0, 9, 7, 0)
#: Re-detect every this many failed frames (``reinit_video_every``).
REINIT_VIDEO_EVERY = 2
#: Before any face was found, the detector runs every ``REINIT_UNTRACKED_FACTOR * reinit`` frames.
REINIT_UNTRACKED_FACTOR = 6
#: Tracking is dropped after more failures in a row than this.
MAX_FAILURES_IN_A_ROW = 100
#: Scale the face template is matched at, relative to the model scale (``face_template_scale``).
FACE_TEMPLATE_SCALE = 0.3


@dataclass(frozen=True)
class TrackingParameters:
    """What steers video tracking on top of the per-fit parameters.

    Attributes
    ----------
    fit : FitParameters
        The fit's parameters; ``fit.window_sizes`` is OpenFace's ``window_sizes_init``
        (first frame and after a failure or a re-detection).
    window_sizes_small : tuple[int, ...]
        Windows while the previous frame succeeded (0 skips a scale).
    reinit_video_every : int
        Re-detect every this many failed frames (0 or less: never while tracking).
    use_face_template : bool
        Shift the translation by template matching before each tracking fit.
    face_template_scale : float
        Model scale the template is matched at.
    """

    fit: FitParameters
    window_sizes_small: tuple[int, ...] = WINDOW_SIZES_SMALL
    reinit_video_every: int = REINIT_VIDEO_EVERY
    use_face_template: bool = False
    face_template_scale: float = FACE_TEMPLATE_SCALE

    @classmethod
    def from_preset(cls, name: str = "default", hierarchical: bool | None = None,
                    **kw) -> "TrackingParameters":
        """OpenFace's tracking parameters for a preset (as FaceLandmarkVid builds them)."""
        p = preset(name)
        if hierarchical is not None:
            p = p.with_overrides(refine_hierarchical=hierarchical)
        return cls(p, **kw)

    def to_manifest(self) -> dict:
        """The parameter block of a tracking record (names as in the C++ references)."""
        p = self.fit
        return {
            "window_sizes_init": list(p.window_sizes),
            "window_sizes_small": list(self.window_sizes_small),
            "sigma": p.sigma, "reg_factor": p.reg_factor, "weight_factor": p.weight_factor,
            "num_optimisation_iteration": p.n_iterations,
            "refine_parameters": p.refine_parameters, "refine_hierarchical": p.refine_hierarchical,
            "validate_detections": False, "limit_pose": p.limit_pose,
            "use_face_template": self.use_face_template,
            "face_template_scale": self.face_template_scale,
            "reinit_video_every": self.reinit_video_every,
        }


@dataclass
class TrackerState:
    """What OpenFace's CLNF object carries from one frame to the next.

    Attributes
    ----------
    params_global : (6,) float32
    params_local : (m,) float32
    landmarks : (n, 2) float32
        ``detected_landmarks`` (zeros before the first fit).
    likelihood : float
        ``model_likelihood`` (-10 before any; kept when a fit stops before taking one).
    landmark_likelihoods : (n,) float32
    detection_success, tracking_initialised : bool
    failures_in_a_row : int
        -1 after a success.
    face_template : (h, w) uint8 or None
    view_used : int
        View index of the last pass of the last fit.
    """

    params_global: np.ndarray
    params_local: np.ndarray
    landmarks: np.ndarray
    likelihood: float = NO_LIKELIHOOD
    landmark_likelihoods: np.ndarray | None = None
    detection_success: bool = False
    tracking_initialised: bool = False
    failures_in_a_row: int = -1
    face_template: np.ndarray | None = None
    view_used: int = 0

    def copy(self) -> "TrackerState":
        return replace(self, params_global=self.params_global.copy(),
                       params_local=self.params_local.copy(), landmarks=self.landmarks.copy(),
                       landmark_likelihoods=None if self.landmark_likelihoods is None
                       else self.landmark_likelihoods.copy())

    def take_estimate(self, other: "TrackerState") -> None:
        """Take ``other``'s estimate: parameters, landmarks and likelihoods (nothing else)."""
        self.params_global, self.params_local = other.params_global, other.params_local
        self.landmarks, self.likelihood = other.landmarks, other.likelihood
        self.landmark_likelihoods = other.landmark_likelihoods


@dataclass
class FrameRecord:
    """The outcome of one frame (the fields of the C++ references' per-frame records).

    Attributes
    ----------
    frame : int
    landmarks : (n, 2) float32
    params_global : (6,) float32
    params_local : (m,) float32
    likelihood : float
    success : bool
        The value ``DetectLandmarksInVideo`` returned.
    detection_success : bool
    windows : list[int] or None
        Windows of the fit that produced the landmarks (None: no fit ran).
    detector_needed : bool
        OpenFace would have run its face detector on this frame.
    detector_box : tuple or None
        The box the detector returned (None: not run, or found nothing).
    failures_in_a_row : int
    tracking_initialised : bool
    view_used : int
    hierarchical_used : bool
    stages : dict[str, numpy.ndarray]
        The frame's trace (empty when tracing was off).
    """

    frame: int
    landmarks: np.ndarray
    params_global: np.ndarray
    params_local: np.ndarray
    likelihood: float
    success: bool
    detection_success: bool
    windows: list[int] | None
    detector_needed: bool
    detector_box: tuple[float, float, float, float] | None
    failures_in_a_row: int
    tracking_initialised: bool
    view_used: int
    hierarchical_used: bool = False
    stages: dict[str, np.ndarray] = field(default_factory=dict)

    def as_json(self) -> dict:
        """One record of ``clnfdiag track --format json`` (plain floats)."""
        return {
            "frame": self.frame,
            "landmarks": [[float(x), float(y)] for x, y in self.landmarks],
            "params_global": [float(v) for v in self.params_global],
            "params_local": [float(v) for v in self.params_local],
            "likelihood": float(self.likelihood),
            "success": bool(self.success),
            "detection_success": bool(self.detection_success),
            "windows": None if self.windows is None else [int(w) for w in self.windows],
            "detector_needed": bool(self.detector_needed),
            "detector_box": None if self.detector_box is None else [float(v) for v in self.detector_box],
            "failures_in_a_row": int(self.failures_in_a_row),
            "tracking_initialised": bool(self.tracking_initialised),
            "view_used": int(self.view_used),
            "hierarchical_used": bool(self.hierarchical_used),
        }


#: A face detector: 8-bit gray image -> box (x, y, w, h) or None.
Detector = Callable[[np.ndarray], "tuple[float, float, float, float] | None"]


def c_remainder(a: int, b: int) -> int:
    """C++'s integer ``a % b`` (the sign of ``a``; Python's ``%`` takes the sign of ``b``)."""
    return int(math.fmod(a, b))


class Tracker:
    """OpenFace's video mode over clnfdiag's CLNF: feed frames in order with :meth:`step`.

    Parameters
    ----------
    fitter : Fitter
        Supplies the model, its stages (``fitter.main``) and the hierarchical
        refinement (``fitter.refine``).
    params : TrackingParameters
    detector : callable, optional
        ``detector(gray) -> box or None``, run when OpenFace would re-detect;
        default: no detector (as the C++ references' stub, which finds nothing).
    faults : iterable of str
        Known faults injected into every fit.
    """

    def __init__(self, fitter: Fitter, params: TrackingParameters,
                 detector: Detector | None = None, faults=NO_FAULTS):
        self.fitter = fitter
        self.params = params
        self.detector = detector
        self.faults = tuple(faults)
        self.ops = _ViewSpy(with_faults(fitter.main, self.faults))
        self.frame_index = 0
        self.state = self._fresh_state()

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> TrackerState:
        """A new CLNF object's state (OpenFace's constructor / ``Reset``)."""
        pdm = self.fitter.main.pdm
        return TrackerState(np.array([1, 0, 0, 0, 0, 0], F32), pdm.zero_local(),
                            np.zeros((pdm.n_points, 2), F32))

    def reset(self) -> None:
        """Start a new sequence (OpenFace's ``CLNF::Reset``)."""
        self.frame_index = 0
        self.state = self._fresh_state()

    # ------------------------------------------------------------------ one frame
    def step(self, gray: np.ndarray, bbox=None, trace: bool = False) -> FrameRecord:
        """Track one frame (``DetectLandmarksInVideo``; with ``bbox``, its box overload).

        Parameters
        ----------
        gray : (H, W) uint8
            The frame in OpenFace's 8-bit grayscale.
        bbox : (x, y, w, h), optional
            Place the model on this box first (zero shape parameters) and count
            tracking as initialised, as the box overload does.
        trace : bool
            Record the stages of the fit that produced the frame's landmarks.

        Returns
        -------
        FrameRecord
        """
        s = self.state
        tp = self.params
        hook: StageHook = Recorder() if trace else NO_HOOK
        if bbox is not None:
            s.params_local = self.fitter.main.pdm.zero_local()
            s.params_global = self.fitter.main.pdm.calc_params_from_bbox(bbox, s.params_local)
            s.tracking_initialised = True
        initial_detection = not s.tracking_initialised
        windows = None
        gray_f32 = np.asarray(gray).astype(F32)
        if s.tracking_initialised:
            windows = tp.fit.window_sizes if not s.detection_success else tp.window_sizes_small
            if tp.use_face_template and s.face_template is not None and s.detection_success:
                self._correct_by_template(gray)
            if self._detect(gray, gray_f32, windows, hook):
                s.failures_in_a_row = -1
                if tp.use_face_template:
                    s.face_template = face_template(gray, self.fitter.main.pdm, s)
            else:
                s.failures_in_a_row += 1
        result = s.detection_success
        detector_needed = self._needs_detector()
        box = None
        if detector_needed:
            box = self.detector(gray) if self.detector is not None else None
            if box is not None:
                if trace:
                    hook = Recorder()  # the frame's landmarks now come from the re-detection
                windows = tp.fit.window_sizes
                result = self._redetect(gray, gray_f32, box, initial_detection, hook)
        if box is None:
            if not s.tracking_initialised:
                s.failures_in_a_row += 1
            if s.failures_in_a_row > MAX_FAILURES_IN_A_ROW:
                s.tracking_initialised = False
        rec = FrameRecord(self.frame_index, s.landmarks.copy(), s.params_global.copy(),
                          s.params_local.copy(), float(s.likelihood), bool(result),
                          bool(s.detection_success), None if windows is None else list(windows),
                          detector_needed, box, s.failures_in_a_row, s.tracking_initialised,
                          s.view_used, self._hier_used,
                          dict(hook.stages) if isinstance(hook, Recorder) else {})
        self.frame_index += 1
        return rec

    def _needs_detector(self) -> bool:
        """OpenFace's re-initialisation test after the tracking fit."""
        s, every = self.state, self.params.reinit_video_every
        if not s.tracking_initialised:
            # OpenFace divides by ``6 * reinit_video_every`` unguarded; 0 here means never.
            return every > 0 and c_remainder(s.failures_in_a_row + 1, every * REINIT_UNTRACKED_FACTOR) == 0
        return (not s.detection_success and every > 0
                and c_remainder(s.failures_in_a_row, every) == 0)

    def _redetect(self, gray, gray_f32, box, initial_detection: bool, hook: StageHook) -> bool:
        """Fit from a detected box with every rotation hypothesis; keep or restore (OpenFace's rules)."""
        s = self.state
        s.tracking_initialised = True
        saved = s.copy()
        ok = self._detect_multi_view(gray, gray_f32, box, hook)
        if not initial_detection and not ok:
            s.take_estimate(saved)  # the failed fit's success flag stays
            return False
        s.failures_in_a_row = -1
        if self.params.use_face_template:
            s.face_template = face_template(gray, self.fitter.main.pdm, s)
        return True

    def _detect_multi_view(self, gray, gray_f32, box, hook: StageHook) -> bool:
        """OpenFace's ``DetectLandmarksInImage`` with ``multi_view`` (basic hypothesis search).

        Each rotation hypothesis starts from the box with zero shape parameters
        and is fitted with ``window_sizes_init``; the first hypothesis, then any
        with a strictly higher model likelihood, is kept (parameters, landmarks,
        likelihoods, success; ``view_used`` stays the last hypothesis's).
        """
        s = self.state
        pdm = self.fitter.main.pdm
        best = None
        best_hook = hook
        for k, rotation in enumerate(ROTATION_HYPOTHESES):
            s.params_local = pdm.zero_local()
            s.params_global = pdm.calc_params_from_bbox(box, s.params_local, rotation)
            h = Recorder() if isinstance(hook, Recorder) else NO_HOOK
            ok = self._detect(gray, gray_f32, self.params.fit.window_sizes, h)
            if k == 0 or best[0].likelihood < s.likelihood:
                best = (s.copy(), ok, self._hier_used)
                best_hook = h
        kept, ok, self._hier_used = best
        # view_used is not part of what OpenFace keeps: the last hypothesis's view stays.
        s.take_estimate(kept)
        s.detection_success = ok
        if isinstance(hook, Recorder) and isinstance(best_hook, Recorder):
            hook.stages.update(best_hook.stages)
        return ok

    def _detect(self, gray, gray_f32, windows, hook: StageHook) -> bool:
        """One ``CLNF::DetectLandmarks`` from the current state: fit, refine, success.

        Records the frame's trace like :meth:`Fitter.fit_gray` (``init/`` is the
        state the fit started from, ``final/`` its outcome).
        """
        s = self.state
        p = replace(self.params.fit, window_sizes=tuple(int(w) for w in windows))
        self.ops.last_view = None
        r = self.fitter.fit_from_params(gray, s.params_global.copy(), s.params_local.copy(), p,
                                        hook, self.ops, self.faults, gray_f32=gray_f32,
                                        kept_likelihood=(s.likelihood, s.landmark_likelihoods))
        s.params_global, s.params_local, s.landmarks = r.params_global, r.params_local, r.landmarks
        s.likelihood, s.landmark_likelihoods = r.likelihood, r.landmark_likelihoods
        s.detection_success = bool(r.success)
        if self.ops.last_view is not None:
            s.view_used = self.ops.last_view
        self._hier_used = r.hierarchical_used
        return s.detection_success

    _hier_used = False

    # ------------------------------------------------------------------ face template
    def _correct_by_template(self, gray: np.ndarray) -> None:
        """Shift the translation to the best template match (``CorrectGlobalParametersVideo``)."""
        s = self.state
        dx, dy, s.face_template = template_shift(gray, self.fitter.main.pdm, s,
                                                 self.params.face_template_scale)
        s.params_global = s.params_global.copy()
        s.params_global[4] = F32(s.params_global[4] + F32(dx))
        s.params_global[5] = F32(s.params_global[5] + F32(dy))


class _ViewSpy:
    """The main model's stages, remembering the last view a pass picked (OpenFace's ``view_used``).

    Every other attribute is the wrapped :class:`~clnfdiag.clnf.protocol.StageOps`'s own.
    """

    def __init__(self, ops):
        self._ops = ops
        self.last_view: int | None = None

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def view(self, params_global, scale):
        v = self._ops.view(params_global, scale)
        self.last_view = int(v)
        return v


def _int_rect_clip(x: float, y: float, w: float, h: float, width: int, height: int):
    """``cv::Rect(int(x), int(y), int(w), int(h)) & cv::Rect(0, 0, width, height)`` -> (x0, y0, x1, y1).

    Float -> int by truncation toward zero, as C++'s conversion; an empty
    intersection gives a zero-size rectangle.
    """
    x0, y0 = int(x), int(y)
    x1, y1 = x0 + int(w), y0 + int(h)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return 0, 0, 0, 0
    return x0, y0, x1, y1


def face_template(gray: np.ndarray, pdm, s: TrackerState) -> np.ndarray | None:
    """The face template after a successful frame (``UpdateTemplate``): the model's box cut out.

    Returns
    -------
    (h, w) uint8 or None (box wholly outside the image)
    """
    bx, by, bw, bh = (float(v) for v in pdm.calc_bounding_box(s.params_global, s.params_local))
    x0, y0, x1, y1 = _int_rect_clip(bx, by, bw, bh, gray.shape[1], gray.shape[0])
    if x1 == x0:
        return None
    return np.array(gray[y0:y1, x0:x1], np.uint8, copy=True)


def template_shift(gray: np.ndarray, pdm, s: TrackerState, template_scale: float):
    """Translation correction by template matching (``CorrectGlobalParametersVideo``).

    The search area is the model's box grown to twice its size around its
    centre, clipped to the image; both it and the template are shrunk so the
    face is at ``template_scale`` (never enlarged; the stored template is
    replaced by its shrunk copy, as in OpenFace), matched with normalised
    cross-correlation, and the best match's corner minus the model box's
    corner is the shift.

    Returns
    -------
    dx, dy : float
    template : (h, w) uint8
        The (possibly shrunk) template to keep.
    """
    tpl = s.face_template
    bx, by, bw, bh = (float(v) for v in pdm.calc_bounding_box(s.params_global, s.params_local))
    x0, y0, x1, y1 = _int_rect_clip(F32(bx - bw / F32(2)), F32(by - bh / F32(2)), bw * 2, bh * 2,
                                    gray.shape[1], gray.shape[0])
    roi = gray[y0:y1, x0:x1]
    scaling = float(F32(F32(template_scale) / s.params_global[0]))
    if scaling < 1:
        tpl = cv2.resize(tpl, None, fx=scaling, fy=scaling)
        image = cv2.resize(roi, None, fx=scaling, fy=scaling)
    else:
        scaling = 1.0
        image = roi.copy()
    if image.shape[0] < tpl.shape[0] or image.shape[1] < tpl.shape[1]:
        return 0.0, 0.0, tpl
    corr = cv2.matchTemplate(image, tpl, cv2.TM_CCOEFF_NORMED)
    row, col = np.unravel_index(int(np.argmax(corr)), corr.shape)
    # float arithmetic, as the C++'s ``max_loc / scaling + off``
    out_x = F32(F32(col) / F32(scaling)) + F32(x0)
    out_y = F32(F32(row) / F32(scaling)) + F32(y0)
    return float(F32(out_x - F32(bx))), float(F32(out_y - F32(by))), tpl


__all__ = ["Tracker", "TrackerState", "TrackingParameters", "FrameRecord", "face_template",
           "template_shift", "c_remainder", "WINDOW_SIZES_SMALL", "REINIT_VIDEO_EVERY"]
