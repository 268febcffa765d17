"""The CLNF fit, pass by pass, exactly as OpenFace 2.x runs it — and the public fitting API.

One pass per patch scale with a non-zero window: current landmarks and the
reference shape give the image<->reference similarity; every visible
landmark's area of interest is warped into the reference frame; the CCNF
experts give its response map; NU-RLMS runs a rigid then a non-rigid phase.
After the last pass the per-landmark and model likelihoods are taken. With
hierarchical refinement on, the part models (inner face, eyes) then refine
their points and the main PDM is refitted to all 68.

Every stage goes through a :class:`~clnfdiag.trace.Recorder` under the golden
keys; with tracing off the fitter holds the no-op recorder and builds nothing
for it.

>>> from clnfdiag import Fitter
>>> fitter = Fitter()                                   # loads the model once
>>> result = fitter.fit("face.jpg", bbox=(180.8, 85.7, 89.2, 86.8), parameters="wild")
>>> result.landmarks.shape, result.params_global
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .clnf.loop import NO_HOOK, NO_LANDMARK_LIKELIHOOD, NO_LIKELIHOOD, PhaseOutcome, fit_passes
from .clnf.ops import OpenFaceOps
from .clnf.protocol import StageHook, Where
from .clnf.warm import warm_up
from .detector import detect_face
from .errors import InputError
from .faults import NO_FAULTS, with_faults
from .keys import hypothesis_prefix
from .models import Model, PartModel, load_model
from .parameters import FitParameters, preset
from .trace import Recorder

F32 = np.float32

#: A part model runs only when the face scale exceeds this times its patch scale.
PART_SCALE_RATIO = 0.9

#: OpenFace's multi-view initial rotations ``(pitch, yaw, roll)`` in radians, in the order its
#: ``DetectLandmarksInImage`` tries them: frontal, yaw ±30°, ±55°, roll ±30°, yaw ±90°, and
#: yaw ±70° with roll ∓40°. OpenFace writes them as doubles; ``PDM::CalcParams`` takes them
#: as floats (``calc_params_from_bbox`` rounds them to float32 the same way).
ROTATION_HYPOTHESES: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0),
    (0.0, -0.5236, 0.0), (0.0, 0.5236, 0.0),
    (0.0, -0.96, 0.0), (0.0, 0.96, 0.0),
    (0.0, 0.0, 0.5236), (0.0, 0.0, -0.5236),
    (0.0, -1.57, 0.0), (0.0, 1.57, 0.0),
    (0.0, -1.22, 0.698), (0.0, 1.22, -0.698),
)
#: The single start of a fit without multi-view hypotheses.
FRONTAL = ROTATION_HYPOTHESES[0]


@dataclass
class FitResult:
    """Outcome of one fit.

    Attributes
    ----------
    landmarks : (n, 2) float32
        Final landmarks ``(x, y)`` in image pixels.
    params_global : (6,) float32
        ``[scale, pitch, yaw, roll, t_x, t_y]`` (radians).
    params_local : (m,) float32
    likelihood : float
        Model log-likelihood (mean over visible landmarks) after the last pass.
    landmark_likelihoods : (n,) float32
    success : bool
        False when the face was too small to fit (OpenFace's own verdict).
    bbox : tuple or None
        The box the fit started from (None: from parameters, e.g. a tracked frame).
    phases : list[PhaseOutcome]
    stages : dict[str, numpy.ndarray]
        The trace (empty when tracing was off).
    hypothesis : int or None
        With ``multi_view``: the index into :data:`ROTATION_HYPOTHESES` of the fit kept.
    hypothesis_likelihoods : tuple of float
        With ``multi_view``: each hypothesis's model likelihood as the selection saw it.
    """

    landmarks: np.ndarray
    params_global: np.ndarray
    params_local: np.ndarray
    likelihood: float
    landmark_likelihoods: np.ndarray
    success: bool
    bbox: tuple[float, float, float, float] | None
    parameters: FitParameters
    phases: list[PhaseOutcome] = field(default_factory=list)
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    hierarchical_used: bool = False
    hypothesis: int | None = None
    hypothesis_likelihoods: tuple[float, ...] = ()

    def result_manifest(self) -> dict[str, Any]:
        """The ``result`` block of a golden manifest."""
        out = {
            "success": bool(self.success),
            "likelihood": float(self.likelihood),
            "phases": [{"pass": p.pass_index, "window_size": p.window_size, "phase": p.phase,
                        "updates": p.updates, "last_shape_change_norm": p.last_shape_change_norm}
                       for p in self.phases],
        }
        if self.hypothesis is not None:
            out["multi_view"] = {"chosen": self.hypothesis,
                                 "rotations": [list(r) for r in ROTATION_HYPOTHESES],
                                 "likelihoods": [float(v) for v in self.hypothesis_likelihoods]}
        return out


# ------------------------------------------------------------------ image input
def to_gray(image: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """OpenFace's conversion to 8-bit grayscale (``ConvertToGrayscale_8bit``).

    Parameters
    ----------
    image : (H, W), (H, W, 3) BGR or (H, W, 4) BGRA; uint8 or uint16

    Returns
    -------
    (H, W) uint8
    """
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img / 256.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(f"image must be 8- or 16-bit, got {img.dtype}", source)
    if img.ndim == 2:
        return np.ascontiguousarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    raise InputError(f"unsupported image shape {img.shape}", source)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as OpenCV does (BGR), or a one-line :class:`InputError`."""
    p = Path(path)
    if not p.is_file():
        raise InputError("image file not found", p)
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise InputError("cannot read the image (not an image file, or corrupt)", p)
    return img


def check_bbox(bbox, width: int, height: int, source: str | Path | None = None
               ) -> tuple[float, float, float, float]:
    """Validate a face box ``(x, y, w, h)`` against the image.

    A box partly outside the image is accepted (the areas of interest are
    zero-padded, as in OpenFace); a box wholly outside, of zero or negative
    size, or with NaN/inf is an :class:`InputError`.
    """
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputError(f"bounding box must be 4 numbers x,y,w,h, got {bbox!r}", source) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InputError(f"bounding box has NaN or infinite values: {bbox!r}", source)
    if w <= 0 or h <= 0:
        raise InputError(f"bounding box has zero or negative size ({w} x {h})", source)
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise InputError(f"bounding box ({x}, {y}, {w}, {h}) lies wholly outside the "
                         f"{width}x{height} image", source)
    return x, y, w, h


# ------------------------------------------------------------ the public fitter
class Fitter:
    """Load OpenFace's model once, fit many images.

    Parameters
    ----------
    model : Model, optional
        An already loaded model; otherwise :func:`~clnfdiag.models.load_model`
        is called with ``models`` and ``strict``.
    main_ops : callable, optional
        ``main_ops(model.main)`` gives the main model's :class:`~clnfdiag.clnf.protocol.StageOps`
        (a port adapter, see :mod:`clnfdiag.ports`); default clnfdiag's own CLNF.

    Attributes
    ----------
    main : OpenFaceOps
        The 68-point CLNF's stages.
    parts : list of (PartModel, OpenFaceOps)
        The hierarchical part models.
    """

    def __init__(self, model: Model | None = None, models: str | Path | None = None,
                 strict: bool = False, main_ops=None):
        self.model = model if model is not None else load_model(models, strict=strict)
        # ``main_ops``: a factory of the main model's stages (a port adapter); default clnfdiag's.
        self.main = (main_ops or OpenFaceOps)(self.model.main)
        self.parts = [(part, OpenFaceOps(part.model)) for part in self.model.parts]
        if main_ops is None:
            # Compiled kernels and per-model Sigma matrices loaded now, not on the first fit.
            warm_up(self)

    def fit(self, image: str | Path | np.ndarray, bbox=None,
            parameters: str | FitParameters = "default", trace: bool = False,
            faults=(), hierarchical: bool | None = None) -> FitResult:
        """Fit the landmarks on one face.

        Parameters
        ----------
        image : path or array
            BGR/BGRA colour or grayscale, as ``cv2.imread`` gives it.
        bbox : (x, y, w, h), optional
            Face box; without one, OpenCV's Haar cascade finds the widest face
            (raising :class:`InputError` when there is none).
        parameters : str or FitParameters
            A preset name (``default``, ``wild`` — multi-view, as OpenFace's ``-wild`` —,
            ``wild-single``) or explicit parameters.
        trace : bool
            Record every stage into ``result.stages``.
        faults : iterable of str
            Known faults to inject (see :mod:`clnfdiag.faults`).
        hierarchical : bool, optional
            Override ``parameters.refine_hierarchical``.
        """
        source = image if isinstance(image, (str, Path)) else None
        img = read_image(image) if source is not None else np.asarray(image)
        gray = to_gray(img, source)
        p = preset(parameters) if isinstance(parameters, str) else parameters
        if hierarchical is not None:
            p = p.with_overrides(refine_hierarchical=hierarchical)
        if bbox is None:
            bbox = detect_face(gray)
            if bbox is None:
                raise InputError("no face found (give a box with --bbox)", source)
        box = check_bbox(bbox, gray.shape[1], gray.shape[0], source)
        return self.fit_gray(gray, box, p, Recorder() if trace else NO_HOOK, faults)

    def fit_gray(self, gray: np.ndarray, box, p: FitParameters, hook: StageHook = NO_HOOK,
                 faults=NO_FAULTS) -> FitResult:
        """The fit of :meth:`fit` from an 8-bit gray image and a checked box.

        ``hook`` sees every stage (a :class:`~clnfdiag.trace.Recorder` traces
        them; the comparison's producers feed golden or candidate values through
        it); ``faults`` are injected by name. With ``p.multi_view`` the fit is
        :meth:`fit_hypotheses`; otherwise one fit from the frontal start.
        """
        if p.multi_view:
            return self.fit_hypotheses(gray, box, p, hook, faults)
        return self._fit_from(gray, box, p, hook, faults, FRONTAL)

    def fit_hypotheses(self, gray: np.ndarray, box, p: FitParameters, hook: StageHook = NO_HOOK,
                       faults=NO_FAULTS) -> FitResult:
        """OpenFace's multi-view fit (``DetectLandmarksInImageMultiHypBasic``).

        Each rotation of :data:`ROTATION_HYPOTHESES`, in order, starts a whole fit
        (zero local parameters, global parameters from the box with that rotation,
        every pass, hierarchical refinement when on). The fit kept is the first one
        whose model likelihood is strictly higher than every earlier one's: OpenFace
        replaces its best only on ``best < likelihood``, so a tie keeps the earlier
        hypothesis. A hypothesis that stops (face too small) before its likelihood is
        taken leaves OpenFace's model likelihood as the previous hypothesis left it,
        so it is judged by that value (and can then never win over it). OpenFace
        holds no other state between hypotheses (``CalcParams`` from landmarks
        starts from zero rotation; part models start from the main landmarks).

        Tracing: each hypothesis is traced under ``hypothesisNN/``
        (:func:`clnfdiag.keys.hypothesis_prefix`); the one kept is then fitted
        again under the main keys, so the main trace is the chosen fit exactly as a
        single-start fit from that rotation records it.

        Parameters
        ----------
        gray : (H, W) uint8
        box : (x, y, w, h) checked box
        p : FitParameters
        hook : StageHook
        faults : iterable of str

        Returns
        -------
        FitResult
            The kept fit, with ``hypothesis`` and ``hypothesis_likelihoods`` set.
        """
        on = hook.enabled
        best: FitResult | None = None
        best_index, best_lh = 0, F32(0)
        seen = F32(NO_LIKELIHOOD)  # the model's likelihood before any hypothesis ran
        likelihoods: list[float] = []
        for h, rotation in enumerate(ROTATION_HYPOTHESES):
            sub = hook.scoped(hypothesis_prefix(h)) if on else hook
            r = self._fit_from(gray, box, p, sub, faults, rotation, record_input=False)
            # float32, as OpenFace's ``model_likelihood`` member.
            seen = F32(r.likelihood) if _likelihoods_taken(r.landmark_likelihoods) else seen
            likelihoods.append(float(seen))
            if best is None or best_lh < seen:
                best, best_index, best_lh = r, h, seen
        assert best is not None
        if on:
            best = self._fit_from(gray, box, p, hook, faults, ROTATION_HYPOTHESES[best_index])
        best.hypothesis = best_index
        best.hypothesis_likelihoods = tuple(likelihoods)
        best.likelihood = float(best_lh)
        return best

    def _fit_from(self, gray: np.ndarray, box, p: FitParameters, hook: StageHook, faults,
                  rotation, record_input: bool = True) -> FitResult:
        """One fit from the box placed with ``rotation`` (``(pitch, yaw, roll)``, radians).

        ``record_input`` False leaves ``input/gray`` out of the trace (a multi-view
        hypothesis: the picture is recorded once, under the main keys).
        """
        loc = self.main.pdm.zero_local()
        g = self.main.pdm.calc_params_from_bbox(box, loc, rotation)
        return self.fit_from_params(gray, g, loc, p, hook, with_faults(self.main, faults), faults,
                                    record_input=record_input, box=tuple(box))

    def fit_from_params(self, gray: np.ndarray, g: np.ndarray, loc: np.ndarray, p: FitParameters,
                        hook: StageHook = NO_HOOK, ops=None, faults=NO_FAULTS, *,
                        gray_f32: np.ndarray | None = None, record_input: bool = True,
                        box=None, kept_likelihood=None) -> FitResult:
        """OpenFace's ``CLNF::DetectLandmarks`` from given parameters: every pass, then the parts.

        The one fit behind :meth:`fit_gray` (parameters placed on a box), each
        multi-view hypothesis and every frame of :class:`~clnfdiag.tracking.Tracker`
        (parameters carried from the previous frame).

        Parameters
        ----------
        gray : (H, W) uint8
        g, loc : (6,), (m,) float32
            Initial global and local parameters.
        p : FitParameters
            ``p.window_sizes`` are the windows this fit uses (OpenFace's ``window_sizes_current``).
        hook : StageHook
        ops : StageOps, optional
            The main model's stages (faults already applied); default ``self.main`` with ``faults``.
        faults : iterable of str
            Injected into the part models' fits.
        gray_f32 : (H, W) float32, optional
            ``gray`` as float32, when the caller already has it.
        record_input : bool
            Record ``input/gray`` (once per picture).
        box : tuple, optional
            The box the parameters came from (kept in the result).
        kept_likelihood : (float, (n,) float32 or None), optional
            The likelihoods OpenFace's CLNF object holds from before: a fit that
            stops (face too small) before the likelihoods are taken leaves them
            as they were, so the result reports these. ``None``: report the
            loop's own "never taken" values, as a fresh object would.

        Returns
        -------
        FitResult
        """
        ops = ops if ops is not None else with_faults(self.main, faults)
        on = hook.enabled
        if on:
            if record_input:
                gray = hook.stage(Where("input/gray"), gray, np.uint8)
            g = hook.stage(Where("init/params_global"), g, F32)
            loc = hook.stage(Where("init/params_local"), loc, F32)
            hook.stage(Where("init/shape"), ops.shape_2d(loc, g), F32)
        if gray_f32 is None:
            gray_f32 = np.asarray(gray).astype(F32)
        out = fit_passes(ops, gray_f32, g, loc, p, hook)
        g, loc = out.params_global, out.params_local
        landmarks = ops.shape_2d(loc, g)
        used = False
        if p.refine_hierarchical and self.parts:
            landmarks, g, loc, used = self.refine(gray_f32, landmarks, g, loc, hook, faults)
        likelihood, lms = out.likelihood, out.landmark_likelihoods
        if kept_likelihood is not None and not _likelihoods_taken(lms):
            likelihood, lms = kept_likelihood
        if on:
            landmarks = hook.stage(Where("final/landmarks"), landmarks, F32)
            g = hook.stage(Where("final/params_global"), g, F32)
            loc = hook.stage(Where("final/params_local"), loc, F32)
            hook.stage(Where("final/likelihood"), likelihood, F32)
            if lms is not None:
                hook.stage(Where("final/landmark_likelihoods"), lms, F32)
            hook.stage(Where("final/success"), int(out.success), np.int32)
        stages = dict(hook.stages) if isinstance(hook, Recorder) else {}
        return FitResult(landmarks, g, loc, likelihood, lms, out.success, box, p, out.phases,
                         stages, used)

    def refine(self, gray_f32: np.ndarray, landmarks: np.ndarray, g: np.ndarray, loc: np.ndarray,
               hook: StageHook = NO_HOOK, faults=NO_FAULTS):
        """Hierarchical refinement with the part models (the end of OpenFace's ``DetectLandmarks``).

        Each part's points are taken from the main landmarks, its PDM is fitted
        to them, and the part model runs when the face's scale exceeds 0.9 x
        the part's first patch scale; the refined points go back into the 68
        and the main PDM is refitted to them.

        Parameters
        ----------
        gray_f32 : (H, W) float32
        landmarks : (n, 2) float32
            Main-model landmarks after the main fit.
        g, loc : (6,), (m,) float32
            Main-model parameters after the main fit.
        hook : StageHook
            Sees ``hierarchical/...`` stages (and each part's own fit under
            ``hierarchical/<part>/``).
        faults : iterable of str
            Injected into the part models' fits too.

        Returns
        -------
        landmarks, params_global, params_local, parts_used
        """
        on = hook.enabled
        if on:
            landmarks = hook.stage(Where("hierarchical/landmarks_before"), landmarks, F32)
        refined = landmarks.copy()
        used = False
        fitted: list[tuple[PartModel, np.ndarray]] = []
        for part, part_ops in self.parts:
            ops = with_faults(part_ops, faults)
            part_lm = np.zeros((part_ops.n_points, 2), F32)
            part_lm[part.mapping[:, 1]] = landmarks[part.mapping[:, 0]]
            pg, pl = part_ops.pdm.calc_params_from_landmarks(part_lm)
            if g[0] > PART_SCALE_RATIO * part_ops.patch_scales[0]:
                used = True
                out = fit_passes(ops, gray_f32, pg, pl, part.parameters,
                                 hook.scoped(f"hierarchical/{part.name}/"))
                pg, pl = out.params_global, out.params_local
            pre = f"hierarchical/{part.name}/"
            if on:
                pg = hook.stage(Where(pre + "params_global"), pg, F32)
                pl = hook.stage(Where(pre + "params_local"), pl, F32)
            part_out = ops.shape_2d(pl, pg)
            if on:
                part_out = hook.stage(Where(pre + "landmarks"), part_out, F32)
            fitted.append((part, part_out))
        if on:
            hook.stage(Where("hierarchical/parts_used"), int(used), np.int32)
        if not used:
            return landmarks, g, loc, False
        for part, part_out in fitted:
            refined[part.mapping[:, 0]] = part_out[part.mapping[:, 1]]
        g, loc = self.main.pdm.calc_params_from_landmarks(refined)
        return self.main.shape_2d(loc, g), g, loc, True


def _likelihoods_taken(landmark_likelihoods: np.ndarray | None) -> bool:
    """False while every per-landmark likelihood still holds the loop's "never evaluated" value.

    Once taken, the visible landmarks (every view has some) hold real values.
    """
    return landmark_likelihoods is not None and not bool(
        np.all(landmark_likelihoods == NO_LANDMARK_LIKELIHOOD))
