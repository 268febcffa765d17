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

from . import optimiser
from .detector import detect_face
from .errors import InputError
from .experts import PatchExperts, ResponseStages, shift_response, sigma_response
from .faults import NO_FAULTS, parse_faults
from .models import CLNFModel, Model, PartModel, load_model
from .parameters import FitParameters, preset
from .pdm import PDM
from .similarity import similarity_transforms
from .trace import NULL_RECORDER, Recorder, pass_key

F32 = np.float32

#: OpenFace stops a phase when the shape moved less than this (pixels, 2n-vector norm).
SHAPE_CHANGE_TOL = 0.01
#: Below this global scale OpenFace records the likelihood early ...
LIKELIHOOD_SCALE = 0.30
#: ... and below this it gives up: the face is too small to fit.
MIN_FACE_SCALE = 0.25
#: A part model runs only when the face scale exceeds this times its patch scale.
PART_SCALE_RATIO = 0.9


@dataclass
class PhaseOutcome:
    """What one NU-RLMS phase did (for manifests and convergence tables)."""

    pass_index: int
    window_size: int
    phase: str
    updates: int
    last_shape_change_norm: float | None


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
    bbox : tuple
        The box the fit started from.
    phases : list[PhaseOutcome]
    stages : dict[str, numpy.ndarray]
        The trace (empty when tracing was off).
    """

    landmarks: np.ndarray
    params_global: np.ndarray
    params_local: np.ndarray
    likelihood: float
    landmark_likelihoods: np.ndarray
    success: bool
    bbox: tuple[float, float, float, float]
    parameters: FitParameters
    phases: list[PhaseOutcome] = field(default_factory=list)
    stages: dict[str, np.ndarray] = field(default_factory=dict)
    hierarchical_used: bool = False

    def result_manifest(self) -> dict[str, Any]:
        """The ``result`` block of a golden manifest."""
        return {
            "success": bool(self.success),
            "likelihood": float(self.likelihood),
            "phases": [{"pass": p.pass_index, "window_size": p.window_size, "phase": p.phase,
                        "updates": p.updates, "last_shape_change_norm": p.last_shape_change_norm}
                       for p in self.phases],
        }


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


# ------------------------------------------------------------ area of interest
def extract_areas(gray_f32: np.ndarray, landmarks: np.ndarray, sim_ref_to_img: np.ndarray,
                  indices: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    """Warp each landmark's surroundings into the reference frame.

    Parameters
    ----------
    gray_f32 : (H, W) float32
    landmarks : (n, 2) float32
    sim_ref_to_img : (2, 2) float32
    indices : (v,) int
        Landmarks to extract (the visible ones).
    side : int
        ``A = window + support - 1``.
    nearest : bool
        Nearest-neighbour instead of bilinear (the ``nearest-warp`` fault).

    Returns
    -------
    (v, A, A) float32
        ``cv2.warpAffine`` with WARP_INVERSE_MAP: OpenCV's fixed-point bilinear
        sampling is part of what the goldens contain, so it is used as is.
    """
    a1 = F32(sim_ref_to_img[0, 0])
    b1 = F32(-sim_ref_to_img[0, 1])
    half = (F32(side) - F32(1.0)) / F32(2.0)
    flags = cv2.WARP_INVERSE_MAP | (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    idx = np.asarray(indices, dtype=np.intp).reshape(-1)
    out = np.zeros((idx.shape[0], side, side), F32)
    # Every landmark's 2x3 matrix [[a1, -b1, x - a1 h + b1 h], [b1, a1, y - a1 h - b1 h]]
    # at once (the same float32 operations, left to right), then one warp each.
    lm = np.asarray(landmarks)[idx]
    mats = np.empty((idx.shape[0], 2, 3), F32)
    mats[:, 0, 0] = a1
    mats[:, 0, 1] = -b1
    mats[:, 0, 2] = lm[:, 0] - a1 * half + b1 * half
    mats[:, 1, 0] = b1
    mats[:, 1, 1] = a1
    mats[:, 1, 2] = lm[:, 1] - a1 * half - b1 * half
    warp, size = cv2.warpAffine, (side, side)
    for row in range(idx.shape[0]):
        warp(gray_f32, mats[row], size, dst=out[row], flags=flags,
             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def adapt_parameters(p: FitParameters, patch_scales: list[float], scale: int
                     ) -> tuple[float, float, float]:
    """Per-scale ``(reg_factor, sigma, weight_factor)`` (OpenFace's ``refine_parameters``).

    With ``ps = patch_scales[min(scale, 2)]`` and ``k = log2(ps / 0.25)``:
    ``reg - 15k`` (floored at 0.001), ``sigma + 0.25k``, ``weight·(1 + 2k)``;
    evaluated in double and stored in float32, as OpenFace's float members.
    """
    if not p.refine_parameters:
        return float(F32(p.reg_factor)), float(F32(p.sigma)), float(F32(p.weight_factor))
    k = math.log(patch_scales[min(scale, 2)] / 0.25) / math.log(2)
    reg = float(F32(p.reg_factor)) - 15 * k
    if reg <= 0:
        reg = 0.001
    sigma = float(F32(p.sigma)) + 0.25 * k
    weight = float(F32(p.weight_factor)) + 2 * float(F32(p.weight_factor)) * k
    return float(F32(reg)), float(F32(sigma)), float(F32(weight))


def _phase_overrides(ov: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray] | None:
    """The overrides of one phase, with keys relative to it (``iter02/mean_shifts``)."""
    if not ov:
        return None
    return {k[len(prefix):]: v for k, v in ov.items() if k.startswith(prefix)} or None


def _override_responses(experts: PatchExperts, scale: int, view: int, stages: ResponseStages,
                        ov: dict[str, np.ndarray], pre: str,
                        faults: frozenset[str]) -> ResponseStages:
    """Replace a response stage by a given one and recompute the stages after it."""
    bank = experts.bank(scale, view)
    idx = stages.landmarks
    raw, sig, resp = stages.raw, stages.sigma, stages.response
    if pre + "response_raw" in ov:
        raw = np.asarray(ov[pre + "response_raw"], F32)[idx]
        sig = sigma_response(bank, raw, faults)
        resp = shift_response(sig, faults)
    if pre + "response_sigma" in ov:
        sig = np.asarray(ov[pre + "response_sigma"], F32)[idx]
        resp = shift_response(sig, faults)
    if pre + "response" in ov:
        resp = np.asarray(ov[pre + "response"], F32)[idx]
    return ResponseStages(idx, raw, sig, resp)


# ------------------------------------------------------------------ one CLNF
class CLNF:
    """A CLNF model (the main 68-point one, or a part) ready to fit.

    Parameters
    ----------
    clnf : CLNFModel
    """

    def __init__(self, clnf: CLNFModel):
        self.name = clnf.name
        self.pdm = PDM(clnf.pdm)
        self.experts = PatchExperts(clnf.scales)
        self.patch_scales = clnf.patch_scales

    def fit(self, gray_f32: np.ndarray, params_global: np.ndarray, params_local: np.ndarray,
            p: FitParameters, rec: Recorder = NULL_RECORDER,
            faults: frozenset[str] = NO_FAULTS, start_pass: int = 0,
            overrides: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Run every pass from the given parameters (OpenFace's ``CLNF::Fit``).

        Parameters
        ----------
        start_pass : int
            Skip the passes before this one (``params_*`` are then that pass's inputs):
            used to replay a golden from a given pass.
        overrides : dict[str, ndarray], optional
            Stage values under golden keys (``pass1/response``,
            ``pass0/rigid/iter02/mean_shifts`` ...) that replace what the fit
            computes, so a candidate's stage can be carried through the rest
            of the fit (impact analysis). Downstream stages are recomputed.

        Returns
        -------
        dict with ``params_global``, ``params_local``, ``likelihood``,
        ``landmark_likelihoods``, ``success`` and ``phases``.
        """
        g = np.asarray(params_global, F32).copy()
        loc = np.asarray(params_local, F32).copy()
        n = self.pdm.n_points
        n_scales = len(self.patch_scales)
        windows = list(p.window_sizes) + [0] * max(0, n_scales - len(p.window_sizes))
        likelihood = -10.0  # OpenFace's "very low" value before any likelihood is taken
        lhoods = np.full(n, -1e8, F32)
        phases: list[PhaseOutcome] = []
        success = True
        pass_index = 0
        ov = overrides or {}
        for scale in range(n_scales):
            ws = windows[scale]
            if ws == 0:
                continue
            if pass_index < start_pass:
                pass_index += 1
                continue
            pre = f"pass{pass_index}/"
            ps = self.patch_scales[scale]
            view = self.experts.view_index(g, scale)
            if "wrong-view" in faults:
                view = (view + 1) % self.experts.scales[scale].n_views
            view = int(ov.get(pre + "view_id", view))
            landmarks = self.pdm.calc_shape_2d(loc, g)
            reference = self.pdm.calc_shape_2d(loc, np.array([ps, 0, 0, 0, 0, 0], F32))
            if ov:
                landmarks = np.asarray(ov.get(pre + "landmarks_at_response", landmarks), F32)
                reference = np.asarray(ov.get(pre + "reference_shape", reference), F32)
            sim_i2r, sim_r2i = similarity_transforms(landmarks, reference)
            if ov:
                sim_i2r = np.asarray(ov.get(pre + "sim_img_to_ref", sim_i2r), F32)
                sim_r2i = np.asarray(ov.get(pre + "sim_ref_to_img", sim_r2i), F32)
            bank = self.experts.bank(scale, view)
            visible = self.experts.scales[scale].visibility[view].astype(bool)
            side = ws + bank.height - 1
            areas = extract_areas(gray_f32, landmarks, sim_r2i, bank.landmarks, side,
                                  nearest="nearest-warp" in faults)
            if pre + "area_of_interest" in ov:
                areas = np.asarray(ov[pre + "area_of_interest"], F32)[bank.landmarks]
            stages = self.experts.responses(areas, scale, view, faults)
            if ov:
                stages = _override_responses(self.experts, scale, view, stages, ov, pre, faults)
            responses = stages.full("response", n)
            reg, sigma, weight = adapt_parameters(p, self.patch_scales, scale)
            if ov:
                reg, sigma, weight = (float(ov.get(pre + k, v)) for k, v in
                                      (("reg_factor", reg), ("sigma", sigma), ("weight_factor", weight)))
            if rec.enabled:
                self._record_pass(rec, pass_index, ws, scale, view, visible, g, loc, landmarks,
                                  reference, sim_i2r, sim_r2i, reg, sigma, weight, areas, stages)
            confidences = np.zeros(n, np.float64)
            confidences[bank.landmarks] = bank.confidence
            common = dict(pdm=self.pdm, responses=responses, base_shape=landmarks,
                          sim_img_to_ref=sim_i2r, sim_ref_to_img=sim_r2i, window=ws,
                          visible=visible, confidences=confidences, reg_factor=reg, sigma=sigma,
                          weight_factor=weight, n_iterations=p.n_iterations,
                          limit_pose=p.limit_pose, faults=faults)
            g, loc, rigid = optimiser.nu_rlms(g, loc, rigid=True,
                                              overrides=_phase_overrides(ov, pre + "rigid/"),
                                              rec=rec.scoped(f"pass{pass_index}/rigid/")
                                              if rec.enabled else rec, **common)
            phases.append(PhaseOutcome(pass_index, ws, "rigid", rigid.updates, rigid.last_norm))
            last = scale == n_scales - 1 or windows[scale + 1] == 0 or g[0] < LIKELIHOOD_SCALE
            g, loc, nonrigid = optimiser.nu_rlms(g, loc, rigid=False, compute_likelihood=last,
                                                 overrides=_phase_overrides(ov, pre + "nonrigid/"),
                                                 rec=rec.scoped(f"pass{pass_index}/nonrigid/")
                                                 if rec.enabled else rec, **common)
            phases.append(PhaseOutcome(pass_index, ws, "nonrigid", nonrigid.updates,
                                       nonrigid.last_norm))
            if last:
                likelihood, lhoods = nonrigid.likelihood, nonrigid.landmark_likelihoods
                rec.record(pass_key(pass_index, "landmark_likelihoods"), lhoods, F32)
            pass_index += 1
            if g[0] < MIN_FACE_SCALE:
                success = False
                break
        return dict(params_global=g, params_local=loc, likelihood=float(likelihood),
                    landmark_likelihoods=lhoods, success=success, phases=phases)

    @staticmethod
    def _record_pass(rec, k, ws, scale, view, visible, g, loc, landmarks, reference, sim_i2r,
                     sim_r2i, reg, sigma, weight, areas, stages: ResponseStages) -> None:
        n = visible.shape[0]
        rec.record(pass_key(k, "window_size"), ws, np.int32)
        rec.record(pass_key(k, "scale_index"), scale, np.int32)
        rec.record(pass_key(k, "view_id"), view, np.int32)
        rec.record(pass_key(k, "visibilities"), visible, np.int32)
        rec.record(pass_key(k, "params_global_in"), g, F32)
        rec.record(pass_key(k, "params_local_in"), loc, F32)
        rec.record(pass_key(k, "landmarks_at_response"), landmarks, F32)
        rec.record(pass_key(k, "reference_shape"), reference, F32)
        rec.record(pass_key(k, "sim_img_to_ref"), sim_i2r, F32)
        rec.record(pass_key(k, "sim_ref_to_img"), sim_r2i, F32)
        rec.record(pass_key(k, "reg_factor"), reg, F32)
        rec.record(pass_key(k, "sigma"), sigma, F32)
        rec.record(pass_key(k, "weight_factor"), weight, F32)
        full_areas = np.zeros((n,) + areas.shape[1:], F32)
        full_areas[stages.landmarks] = areas
        rec.record(pass_key(k, "area_of_interest"), full_areas)
        rec.record(pass_key(k, "response_raw"), stages.full("raw", n), F32)
        rec.record(pass_key(k, "response_sigma"), stages.full("sigma", n), F32)
        rec.record(pass_key(k, "response"), stages.full("response", n), F32)


# ------------------------------------------------------------ the public fitter
class Fitter:
    """Load OpenFace's model once, fit many images.

    Parameters
    ----------
    model : Model, optional
        An already loaded model; otherwise :func:`~clnfdiag.models.load_model`
        is called with ``models`` and ``strict``.
    """

    def __init__(self, model: Model | None = None, models: str | Path | None = None,
                 strict: bool = False):
        self.model = model if model is not None else load_model(models, strict=strict)
        self.main = CLNF(self.model.main)
        self.parts = [(part, CLNF(part.model)) for part in self.model.parts]

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
            A preset name (``default``, ``wild``) or explicit parameters.
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
        faults = parse_faults(list(faults))
        if bbox is None:
            bbox = detect_face(gray)
            if bbox is None:
                raise InputError("no face found (give a box with --bbox)", source)
        box = check_bbox(bbox, gray.shape[1], gray.shape[0], source)
        rec: Recorder = Recorder() if trace else NULL_RECORDER
        return self._fit_gray(gray, box, p, rec, faults)

    def _fit_gray(self, gray: np.ndarray, box, p: FitParameters, rec,
                  faults: frozenset[str]) -> FitResult:
        pdm = self.main.pdm
        loc = pdm.zero_local()
        g = pdm.calc_params_from_bbox(box, loc)
        if rec.enabled:
            rec.record("input/gray", gray, np.uint8)
            rec.record("init/params_global", g, F32)
            rec.record("init/params_local", loc, F32)
            rec.record("init/shape", pdm.calc_shape_2d(loc, g), F32)
        gray_f32 = gray.astype(F32)
        out = self.main.fit(gray_f32, g, loc, p, rec, faults)
        g, loc = out["params_global"], out["params_local"]
        landmarks = pdm.calc_shape_2d(loc, g)
        used = False
        if p.refine_hierarchical and self.parts:
            landmarks, g, loc, used = self.refine(gray_f32, landmarks, g, loc, rec, faults)
        if rec.enabled:
            rec.record("final/landmarks", landmarks, F32)
            rec.record("final/params_global", g, F32)
            rec.record("final/params_local", loc, F32)
            rec.record("final/likelihood", out["likelihood"], F32)
            rec.record("final/landmark_likelihoods", out["landmark_likelihoods"], F32)
            rec.record("final/success", int(out["success"]), np.int32)
        return FitResult(landmarks, g, loc, out["likelihood"], out["landmark_likelihoods"],
                         out["success"], tuple(box), p, out["phases"], dict(rec.stages), used)

    def refine(self, gray_f32: np.ndarray, landmarks: np.ndarray, g: np.ndarray, loc: np.ndarray,
               rec=NULL_RECORDER, faults: frozenset[str] = NO_FAULTS,
               overrides: dict[str, np.ndarray] | None = None):
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
        overrides : dict, optional
            ``hierarchical/<part>/landmarks`` (or that part's ``params_global`` /
            ``params_local``) replacing a part's result, for impact analysis.

        Returns
        -------
        landmarks, params_global, params_local, parts_used
        """
        rec.record("hierarchical/landmarks_before", landmarks, F32)
        refined = landmarks.copy()
        used = False
        fitted: list[tuple[PartModel, np.ndarray]] = []
        for part, clnf in self.parts:
            part_lm = np.zeros((clnf.pdm.n_points, 2), F32)
            part_lm[part.mapping[:, 1]] = landmarks[part.mapping[:, 0]]
            pg, pl = clnf.pdm.calc_params_from_landmarks(part_lm)
            if g[0] > PART_SCALE_RATIO * clnf.patch_scales[0]:
                used = True
                part_rec = rec.scoped(f"hierarchical/{part.name}/") if rec.enabled else rec
                out = clnf.fit(gray_f32, pg, pl, part.parameters, part_rec, faults)
                pg, pl = out["params_global"], out["params_local"]
            pre = f"hierarchical/{part.name}/"
            if overrides:
                pg = np.asarray(overrides.get(pre + "params_global", pg), F32)
                pl = np.asarray(overrides.get(pre + "params_local", pl), F32)
            part_out = clnf.pdm.calc_shape_2d(pl, pg)
            if overrides and pre + "landmarks" in overrides:
                part_out = np.asarray(overrides[pre + "landmarks"], F32)
            rec.record(f"hierarchical/{part.name}/landmarks", part_out, F32)
            rec.record(f"hierarchical/{part.name}/params_global", pg, F32)
            rec.record(f"hierarchical/{part.name}/params_local", pl, F32)
            fitted.append((part, part_out))
        rec.record("hierarchical/parts_used", int(used), np.int32)
        if not used:
            return landmarks, g, loc, False
        for part, part_out in fitted:
            refined[part.mapping[:, 0]] = part_out[part.mapping[:, 1]]
        g, loc = self.main.pdm.calc_params_from_landmarks(refined)
        return self.main.pdm.calc_shape_2d(loc, g), g, loc, True
