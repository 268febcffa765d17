"""PNG plots of one case comparison, drawn on a :class:`~clnfdiag.report.raster.Canvas`.

Each ``plot_*`` function returns ``(png_bytes, None)`` or ``(None, reason)``
when its input is missing, so the page can say why a plot is absent.

Plots read the case JSON through :class:`~clnfdiag.report.tables.CaseView`;
the two that need arrays (the image with landmarks, the response maps) take
them from a :class:`CaseArrays`, gathered from the golden case and the
candidate stages, or from the ``report_arrays.npz`` a previous report saved.

Every plot is laid out by hand in inches from the top left (panels, strips,
colour bars, labels); values are mapped to strip coordinates here. That is what
keeps a plot to a few milliseconds, so that a report of a hundred comparisons
builds in seconds.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .raster import CYCLE, DASHED, DOTTED, Canvas, colour_map
from .tables import (CONVERGENCE_FIELDS, MAP_KINDS, MAP_STAGES, MAP_TITLES, POINT_FIELD, REGION_COLOURS,
                     REGIONS, CaseView, fmt, region_of)
from ..clnf.loop import SHAPE_CHANGE_TOL
from ..keys import kind_of, pass_of

#: Response-map landmarks shown per case.
N_WORST_MAPS = 3
#: Floor of log-scale error axes (exact zeros are drawn there).
LOG_FLOOR = 1e-12
#: Opacity of a shaded rounding-noise band (the noise envelope).
BAND_ALPHA = 0.22


# --------------------------------------------------------------------------- arrays for the plots

@dataclass
class CaseArrays:
    """Arrays two plots need beyond the JSON (all optional).

    Attributes
    ----------
    image : ndarray or None
        (H, W, 3) BGR or (H, W) uint8 input image, or a crop of it.
    image_origin : ndarray or None
        (x, y) of the crop's top-left pixel in the full image (None: not cropped).
    golden_landmarks, candidate_landmarks : ndarray or None
        (68, 2) final landmarks.
    map_stage : str or None
        Response-map stage whose maps are stored.
    map_landmarks : ndarray
        Landmark indices of the stored maps.
    golden_maps, candidate_maps : ndarray or None
        (n, w, w) maps of ``map_landmarks``.
    golden_centre, candidate_centre : ndarray or None
        (n, 2) KDE centre (dxs, dys of the pass's first iteration) of those landmarks.
    notes : dict[str, str]
        Why a part is missing (``landmarks``, ``maps``).
    """

    image: np.ndarray | None = None
    image_origin: np.ndarray | None = None
    golden_landmarks: np.ndarray | None = None
    candidate_landmarks: np.ndarray | None = None
    map_stage: str | None = None
    map_landmarks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    golden_maps: np.ndarray | None = None
    candidate_maps: np.ndarray | None = None
    golden_centre: np.ndarray | None = None
    candidate_centre: np.ndarray | None = None
    notes: dict[str, str] = field(default_factory=dict)
    #: (68, 2) human annotation ``(x, y)`` from the golden's folder (:data:`ANNOTATION_FILES`), if any.
    annotation: np.ndarray | None = None

    _ARRAYS = ("image", "image_origin", "golden_landmarks", "candidate_landmarks", "map_landmarks", "golden_maps",
               "candidate_maps", "golden_centre", "candidate_centre", "annotation")

    def save_into(self, store: dict[str, np.ndarray], prefix: str) -> None:
        """Add the present arrays to ``store`` under ``prefix/name`` (for report_arrays.npz)."""
        for name in self._ARRAYS:
            value = getattr(self, name)
            if value is not None and np.asarray(value).size:
                store[f"{prefix}/{name}"] = np.asarray(value)
        if self.map_stage:
            store[f"{prefix}/map_stage"] = np.array(self.map_stage)

    @classmethod
    def load_from(cls, npz: Mapping[str, np.ndarray], prefix: str) -> "CaseArrays":
        """Arrays stored by :meth:`save_into` (missing ones stay None)."""
        out = cls()
        for name in cls._ARRAYS:
            key = f"{prefix}/{name}"
            if key in npz:
                setattr(out, name, np.asarray(npz[key]))
        if f"{prefix}/map_stage" in npz:
            out.map_stage = str(npz[f"{prefix}/map_stage"])
        return out


def _lookup(mapping: Any, view: CaseView) -> Any:
    """``mapping[case]`` (or ``[(case, mode)]``, ``["case/mode"]``); a list is searched by case id."""
    if mapping is None:
        return None
    if isinstance(mapping, Mapping):
        for key in ((view.case, view.mode), f"{view.case}/{view.mode}", view.case):
            if key in mapping:
                return mapping[key]
        return None
    for item in mapping:  # list of GoldenCase
        if getattr(item, "case_id", None) == view.case:
            return item
    return None


def _stage(source: Any, key: str) -> np.ndarray | None:
    """A stage array from a GoldenCase or a dict of arrays; None if absent."""
    if source is None:
        return None
    if hasattr(source, "has") and hasattr(source, "stage"):
        return np.asarray(source.stage(key)) if source.has(key) else None
    value = source.get(key) if isinstance(source, Mapping) else None
    return None if value is None else np.asarray(value)


def _first_iteration_centre(source: Any, k: int) -> np.ndarray | None:
    """(68, 2) dxs, dys of the first iteration of pass ``k`` (rigid phase, iteration 0)."""
    for phase in ("rigid", "nonrigid"):
        dxs = _stage(source, f"pass{k}/{phase}/iter00/dxs")
        dys = _stage(source, f"pass{k}/{phase}/iter00/dys")
        if dxs is not None and dys is not None:
            return np.stack([dxs.ravel(), dys.ravel()], axis=1).astype(np.float64)
    return None


def gather_arrays(view: CaseView, golden: Any, candidate: Mapping[str, Any] | None) -> CaseArrays:
    """Collect the plot arrays of one case from its golden case and candidate stages.

    Parameters
    ----------
    view : CaseView
        The case's JSON.
    golden : GoldenCase or None
        The golden case (image, golden stages).
    candidate : dict[str, ndarray] or None
        Candidate stages under golden keys.
    """
    out = CaseArrays()
    if golden is None:
        out.notes["landmarks"] = out.notes["maps"] = "golden case not given to the report"
        return out
    try:
        out.image = golden.load_image()
    except Exception as exc:  # noqa: BLE001  (a plot is not worth failing the report)
        out.notes["landmarks"] = f"image not readable: {exc}"
    out.golden_landmarks = _stage(golden, "final/landmarks")
    out.candidate_landmarks = _stage(candidate, "final/landmarks")
    out.annotation = case_annotation(getattr(golden, "path", None))
    if candidate is None:
        out.notes["landmarks"] = out.notes["maps"] = "candidate stages not given to the report"
    elif out.candidate_landmarks is None:
        out.notes["landmarks"] = "candidate has no final/landmarks"
    _crop_image(out)

    stage = view.map_stage_for_plot()
    if stage is None:
        out.notes.setdefault("maps", "no response-map stage was compared")
        return out
    lms = view.worst_landmarks(stage, N_WORST_MAPS)
    g_maps, c_maps = _stage(golden, stage), _stage(candidate, stage)
    if not lms or g_maps is None:
        out.notes.setdefault("maps", f"no landmark to show for {stage}")
        return out
    out.map_stage = stage
    out.map_landmarks = np.asarray(lms, np.int64)
    out.golden_maps = g_maps[lms].astype(np.float32)
    if c_maps is not None and c_maps.shape == g_maps.shape:
        out.candidate_maps = c_maps[lms].astype(np.float32)
    elif candidate is not None:
        out.notes["maps"] = f"candidate has no {stage} of the golden's shape"
    k = pass_of(stage)
    if k is not None:
        gc = _first_iteration_centre(golden, k)
        cc = _first_iteration_centre(candidate, k)
        out.golden_centre = None if gc is None else gc[lms]
        out.candidate_centre = None if cc is None or cc.shape != gc.shape else cc[lms]
    return out


#: Annotation files looked for in a golden's folder (the report then shows them beside the fits).
ANNOTATION_FILES = ("annotation.pts", "annotation.ljson")


def case_annotation(case_dir: Any) -> np.ndarray | None:
    """(68, 2) annotated ``(x, y)`` from ``annotation.pts`` / ``.ljson`` in the case folder, else None.

    An unreadable annotation is left out of the report (a figure is not worth failing it).
    """
    from ..annotations import read_annotation
    from ..errors import InputError
    for name in ANNOTATION_FILES:
        path = Path(case_dir) / name if case_dir is not None else None
        if path is not None and path.is_file():
            try:
                return read_annotation(path).points
            except InputError:
                return None
    return None


def _crop_window(points: list[np.ndarray], width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) around the points with a margin, clipped to the image."""
    pts = np.concatenate([p.reshape(-1, 2) for p in points]).astype(np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    margin = 0.25 * float(max(hi - lo)) + 5
    return (int(max(math.floor(lo[0] - margin), 0)), int(max(math.floor(lo[1] - margin), 0)),
            int(min(math.ceil(hi[0] + margin), width)), int(min(math.ceil(hi[1] + margin), height)))


def _crop_image(arrays: CaseArrays) -> None:
    """Keep only the face region of the image (smaller report_arrays.npz, faster plots)."""
    if arrays.image is None or arrays.golden_landmarks is None:
        return
    pts = [arrays.golden_landmarks] + ([arrays.candidate_landmarks] if arrays.candidate_landmarks is not None
                                       and np.isfinite(arrays.candidate_landmarks).all() else [])
    h, w = arrays.image.shape[:2]
    x0, y0, x1, y1 = _crop_window(pts, w, h)
    if x1 <= x0 or y1 <= y0:
        return
    arrays.image = np.ascontiguousarray(arrays.image[y0:y1, x0:x1])
    arrays.image_origin = np.array([x0, y0], np.int64)


def golden_only_arrays(view: CaseView) -> CaseArrays:
    """Arrays from the golden folder named in the JSON (``golden_path``), candidate side unknown."""
    path = view.data.get("golden_path")
    note = "candidate arrays not saved with this summary (no report_arrays.npz next to it)"
    if not path or not Path(path).is_dir():
        out = CaseArrays()
        out.notes["landmarks"] = out.notes["maps"] = note
        return out
    from ..golden import read_case
    try:
        with read_case(path, verify=False) as golden:
            out = gather_arrays(view, golden, None)
    except Exception:  # noqa: BLE001
        out = CaseArrays()
    out.notes["landmarks"] = out.notes["maps"] = note
    return out


# --------------------------------------------------------------------------- layout helpers

def _nice_factor(x: float) -> float:
    """Largest 1-2-5 step <= x (at least 1)."""
    if not math.isfinite(x) or x <= 1:
        return 1.0
    e = 10 ** math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * e <= x:
            return float(m * e)
    return float(e)


def _nice_decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0


def _linear_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """At most about ``n`` + 1 round values in [lo, hi] (steps 1, 2, 2.5, 5 x 10^k)."""
    span = hi - lo
    if not (span > 0 and math.isfinite(span)):
        return [lo]
    raw = span / n
    e = 10 ** math.floor(math.log10(raw))
    step = next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]


@dataclass
class _Scale:
    """Value -> fraction (0 bottom .. 1 top) of a strip, log or linear, with its tick values."""

    lo: float
    hi: float
    log: bool

    def frac(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.log:
                f = (np.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
            else:
                f = (v - self.lo) / (self.hi - self.lo)
        return f

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            e0, e1 = math.ceil(math.log10(self.lo) - 1e-9), math.floor(math.log10(self.hi) + 1e-9)
            vals = [10.0 ** e for e in range(e0, e1 + 1)]
            if len(vals) > 4:  # every k-th decade, at most 4 labels
                k = math.ceil(len(vals) / 4)
                vals = [10.0 ** e for e in range(e0, e1 + 1) if (e - e0) % k == 0]
            if len(vals) < 2:
                vals = sorted({m * 10.0 ** e for e in range(e0 - 1, e1 + 1) for m in (1, 2, 5)
                               if self.lo <= m * 10.0 ** e <= self.hi})
            return [(v, f"{v:g}") for v in vals]
        vals = [v for v in _linear_ticks(self.lo, self.hi) if self.lo - 1e-12 <= v <= self.hi + 1e-12]
        dec = _nice_decimals(vals[1] - vals[0]) if len(vals) > 1 else 3
        return [(v, f"{v:.{dec}f}") for v in vals]


class _Strips:
    """Stacked strips sharing one landmark x axis, on one canvas (inches from the top left)."""

    def __init__(self, n: int, n_strips: int, *, width: float = 8.0, header: float = 0.3, strip: float = 0.85,
                 gap: float = 0.35, bottom: float = 0.45, left: float = 0.64, right: float = 0.08):
        self.n, self.strip, self.gap = n, strip, gap
        self.height = header + n_strips * strip + (n_strips - 1) * gap + bottom
        self.canvas = Canvas(width, self.height)
        self.x0, self.x1 = left, width - right
        self.top = header
        self.tops = [header + j * (strip + gap) for j in range(n_strips)]
        self.slot = (self.x1 - self.x0) / (n + 0.4)  # landmark axis from -0.7 to n - 0.3

    def x(self, i: Any) -> Any:
        """Canvas x of landmark position ``i``."""
        return self.x0 + (np.asarray(i, np.float64) + 0.7) * self.slot

    def y(self, j: int, frac: Any) -> np.ndarray:
        """Canvas y of fraction ``frac`` of strip ``j`` (clipped to the strip)."""
        return self.tops[j] + self.strip * (1 - np.clip(frac, 0, 1))

    def decorate(self, scales: list[_Scale], titles: list[str], region_labels: bool = True) -> None:
        """Region bands, frames, y ticks and labels, titles, region ticks and labels."""
        cv, n = self.canvas, self.n
        bands, colours, frames, ticks = [], [], [], []
        names = [(name, lo, hi) for name, (lo, hi) in REGIONS.items() if lo < n]
        for j, (scale, title) in enumerate(zip(scales, titles)):
            t, b = self.tops[j], self.tops[j] + self.strip
            for name, lo, hi in names:
                xa, xb = float(self.x(lo - 0.5)), float(self.x(min(hi, n) - 0.5))
                bands.append([(xa, t), (xb, t), (xb, b), (xa, b)])
                colours.append(REGION_COLOURS[name])
            frames.append((self.x0, t, self.x1, b))
            for v, label in scale.ticks():
                yv = float(self.y(j, scale.frac(v)))
                ticks.append([(self.x0 - 0.05, yv), (self.x0, yv)])
                cv.text(self.x0 - 0.08, yv, label, size=7, ha="right", va="center")
            for _, lo, _ in names:
                ticks.append([(float(self.x(lo)), b), (float(self.x(lo)), b + 0.05)])
            cv.text(self.x0, t - 0.03, title, size=8, ha="left", va="bottom")
        cv.polygons(bands, fill=colours, alpha=0.07, over_white=True)  # the bands are drawn first
        cv.frames(frames)
        cv.lines(ticks)
        if region_labels:
            yb = self.tops[-1] + self.strip + 0.08
            for name, lo, _ in names:
                cv.text(float(self.x(lo)), yb, f"{lo}\n{name}", size=7, ha="center", va="top")

    def hline(self, segs: list, j: int, scale: _Scale, value: float) -> None:
        f = float(scale.frac(value))
        if 0 <= f <= 1:
            yv = float(self.y(j, f))
            segs.append([(self.x0, yv), (self.x1, yv)])


def _legend(cv: Canvas, x: float, y: float, entries: list[tuple[str, str, str, bool]], size: float = 7) -> None:
    """A framed legend with its top-left at (x, y): (marker, colour, label, filled) per line."""
    step = 0.17
    width = 0.35 + max(len(label) for *_, label, _ in entries) * size * 0.55 / 72.0
    cv.rectangle((x, y, x + width, y + step * len(entries) + 0.06), "white", alpha=0.75)
    cv.frames([(x, y, x + width, y + step * len(entries) + 0.06)], colour="#cccccc", width=0.6)
    for i, (marker, colour, label, filled) in enumerate(entries):
        yy = y + 0.03 + step * (i + 0.5)
        cv.markers([x + 0.14], [yy], marker, 4, colour, filled=filled)
        cv.text(x + 0.28, yy, label, size=size, va="center")


# --------------------------------------------------------------------------- (1) image + landmarks

def plot_landmarks(view: CaseView, arrays: CaseArrays) -> tuple[bytes | None, str | None]:
    """Image with golden and candidate final landmarks, error vectors magnified."""
    g, c, img = arrays.golden_landmarks, arrays.candidate_landmarks, arrays.image
    if g is None or c is None or img is None or g.shape != c.shape:
        return None, arrays.notes.get("landmarks", "final landmarks of both sides are needed")
    g = g.astype(np.float64)
    c = c.astype(np.float64)
    with np.errstate(invalid="ignore"):
        err = np.linalg.norm(c - g, axis=1)
    err_max = float(np.nanmax(err)) if np.isfinite(err).any() else 0.0
    lo, hi = np.nanmin(g, axis=0), np.nanmax(g, axis=0)
    extent = float(max(hi - lo))
    mag = _nice_factor(0.08 * extent / err_max) if err_max > 0 else 1.0
    mag = min(mag, 1e6)
    ox, oy = (0, 0) if arrays.image_origin is None else (int(arrays.image_origin[0]), int(arrays.image_origin[1]))
    h, w = img.shape[:2]
    # Window in full-image coordinates, within the (possibly cropped) image we have.
    wx0, wy0, wx1, wy1 = _crop_window([g - (ox, oy)], w, h)
    crop = img[wy0:wy1, wx0:wx1]
    x0, y0 = wx0 + ox, wy0 + oy
    if crop.ndim == 3:
        crop = crop[..., 2::-1]  # BGR -> RGB
    cw, ch = max(crop.shape[1], 1), max(crop.shape[0], 1)

    width = 5.2
    height = width * ch / cw * 0.9 + 0.6
    cv = Canvas(width, height)
    # The picture keeps its aspect ratio inside the area under the title, centred.
    ax0, ay0, aw, ah = 0.02 * width, 0.12 * height, 0.96 * width, 0.86 * height
    k = min(aw / cw, ah / ch)                     # inches per image pixel
    bx0, by0 = ax0 + (aw - cw * k) / 2, ay0 + (ah - ch * k) / 2
    cv.image(crop, (bx0, by0, bx0 + cw * k, by0 + ch * k), smooth=True)

    def to_in(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # image pixel centres -> inches
        return bx0 + (p[:, 0] - x0 + 0.5) * k, by0 + (p[:, 1] - y0 + 0.5) * k

    gx, gy = to_in(g)
    cx, cy = to_in(c)
    cv.markers(gx, gy, "o", 3.5, "#00e000", filled=False, width=1.0)
    cv.markers(cx, cy, "x", 3.5, "#ff3030", width=1.0)
    d = (c - g) * mag * k
    cv.arrows(gx, gy, d[:, 0], d[:, 1], "#ffd000", width=1.0, head=4)
    cv.frames([(bx0, by0, bx0 + cw * k, by0 + ch * k)])
    _legend(cv, bx0 + cw * k - 1.05, by0 + ch * k - 0.45,
            [("o", "#00e000", "golden", False), ("x", "#ff3030", "candidate", True)])
    worst = int(np.nanargmax(err)) if err_max > 0 else None
    cv.text(width / 2, 0.06, "final landmarks: golden (green o) vs candidate (red x)\n"
            f"error vectors (yellow) magnified \u00d7{mag:g}; max error {fmt(err_max)} px"
            + (f" at landmark {worst}" if worst is not None else ""), size=9, ha="center", va="top")
    cv.text(bx0 + 0.08, by0 + 0.08, f"vectors \u00d7{mag:g}", size=9, va="top", background="#ffd000")
    return cv.png(), None


# --------------------------------------------------------------------------- (2) per-landmark errors

def _kind_errors(view: CaseView) -> dict[str, dict[str, Any]]:
    """Per stage kind: worst per-landmark error over the stages of that kind, with its threshold."""
    out: dict[str, dict[str, Any]] = {}
    n = view.n_landmarks
    for key, entry in view.stages.items():
        kind = kind_of(key)
        if kind in MAP_KINDS:
            err = view.lm_array(key, "rel_per_landmark")
            peak = view.lm_array(key, "peak_golden")
            unit = "max |diff| / golden peak"
        else:
            err = view.lm_array(key, POINT_FIELD)
            peak = None
            unit = "error (px)"
        if err is None:
            continue
        atol, rtol = view.tolerance(key)
        atol, rtol = atol or 0.0, rtol or 0.0
        if kind in MAP_KINDS:
            with np.errstate(divide="ignore", invalid="ignore"):
                thr = rtol + atol / peak if peak is not None else np.full(n, rtol)
        else:
            thr = np.full(n, atol)  # point stages: rtol scales by the set's extent, not in the JSON
        slot = out.setdefault(kind, {"err": np.full(n, np.nan), "thr": np.full(n, np.inf), "unit": unit,
                                     "n_stages": 0, "beyond": set()})
        slot["err"] = np.fmax(slot["err"], err)
        slot["thr"] = np.fmin(slot["thr"], np.where(np.isfinite(thr), thr, np.inf))
        slot["n_stages"] += 1
        if not entry.get("within_tolerance", True):
            slot["beyond"].add(key)
    return out


#: Stage kind of the final landmarks (``final/landmarks``): its strip carries the envelope band.
FINAL_KIND = "landmarks"
#: Colour of the rounding-noise band of the final landmarks.
NOISE_COLOUR = "#555555"


def landmark_band_series(view: CaseView) -> tuple[np.ndarray, str] | None:
    """``(band, label)``: per final landmark the band of rounding noise (``landmark_band_px``, px)
    and its legend (``rounding noise (envelope K=64)``); None when the JSON has no band."""
    band = view.landmark_band
    if band is None or not np.isfinite(band).any():
        return None
    return band, view.envelope_label


def landmark_band_polygons(st: "_Strips", j: int, scale: "_Scale", band: np.ndarray) -> list:
    """One rectangle per landmark with a band > 0, from strip ``j``'s bottom up to the band value."""
    base = float(st.y(j, 0.0))
    tops = st.y(j, scale.frac(np.where(np.isfinite(band) & (band > 0), band, np.nan)))
    polys = []
    for i in np.flatnonzero(np.isfinite(band) & (band > 0)):
        xa, xb = float(st.x(i - 0.5)), float(st.x(i + 0.5))
        polys.append([(xa, base), (xb, base), (xb, float(tops[i])), (xa, float(tops[i]))])
    return polys


def plot_errors(view: CaseView) -> tuple[bytes | None, str | None]:
    """Per-landmark error bars for each stage kind, landmarks grouped by face region, tolerance drawn.

    One strip per stage kind (log scale each), all strips on one canvas sharing the landmark axis.
    The final landmarks' strip also shades each landmark's band of rounding noise (the case's noise
    envelope, ``landmark_band_px``), and is shown for it even where the error is 0 or not in the JSON.
    """
    kinds = _kind_errors(view)
    banded = landmark_band_series(view)
    n = view.n_landmarks
    if banded is not None and FINAL_KIND not in kinds:
        kinds[FINAL_KIND] = {"err": np.full(n, np.nan), "thr": np.full(n, view.landmark_tolerance),
                             "unit": "error (px)", "n_stages": 0, "beyond": set()}
    if not kinds:
        return None, "the JSON carries no per-landmark errors for this case"
    order = [k for k in ("area_of_interest", "response_raw", "response_sigma", "response", "landmarks_at_response",
                         "reference_shape", "dxs", "dys", "mean_shifts_ref", "mean_shifts", "shape",
                         "landmarks_before", "landmarks") if k in kinds]
    order += [k for k in kinds if k not in order]
    exact = [k for k in order if not np.nan_to_num(kinds[k]["err"], nan=0.0).any()
             and not (k == FINAL_KIND and banded is not None)]
    shown_kinds = [k for k in order if k not in exact]
    x = np.arange(n)
    colours = [REGION_COLOURS[region_of(i)] for i in range(n)]
    exact_lines = textwrap.wrap("Equal to the golden (error 0) at every landmark: " + ", ".join(exact), 120) \
        if exact else []
    header = 0.3 + 0.16 * len(exact_lines)
    if not shown_kinds:
        cv = Canvas(8.0, header + 1.65)
        if exact_lines:
            cv.text(0.08, 0.08, "\n".join(exact_lines), size=8, va="top")
        cv.text(4.0, header + 0.8, "no per-landmark error anywhere", ha="center", va="center", size=10)
        return cv.png(), None
    st = _Strips(n, len(shown_kinds), header=header)
    cv = st.canvas
    if exact_lines:
        cv.text(0.08, 0.08, "\n".join(exact_lines), size=8, va="top")
    bars, bar_colours, flat, steps_x, steps_y = [], [], [], [], []
    scales, titles, noise = [], [], []
    for j, kind in enumerate(shown_kinds):
        d = kinds[kind]
        err = d["err"]
        thr = np.where(np.isfinite(d["thr"]), d["thr"], np.nan)
        band = banded[0] if banded is not None and kind == FINAL_KIND else np.zeros(0)
        pos = np.concatenate([err[np.isfinite(err) & (err > 0)], thr[np.isfinite(thr) & (thr > 0)],
                              band[np.isfinite(band) & (band > 0)]])
        lo, hi = (max(pos.min() / 3, LOG_FLOOR), pos.max() * 3) if pos.size else (LOG_FLOOR, 1.0)
        scale = _Scale(lo, hi, log=True)
        # Exact zeros get no bar (log axis); an infinite error (a NaN in the candidate) a full one.
        ok = (np.isfinite(err) & (err > 0)) | np.isposinf(err)
        base = float(st.y(j, 0.0))
        tops = st.y(j, scale.frac(np.where(ok, err, lo)))
        xs = st.x(x)
        for i in np.flatnonzero(ok):
            bars.append([(xs[i], base), (xs[i], tops[i])])
            bar_colours.append(colours[i])
        if np.isfinite(thr).any():
            if np.nanmax(thr) - np.nanmin(thr) <= 1e-12 * max(np.nanmax(thr), 1e-300):
                st.hline(flat, j, scale, float(np.nanmax(thr)))
            else:  # a step per landmark, broken between strips
                ty = st.y(j, scale.frac(thr))
                ty = np.where(np.isfinite(thr) & (thr > 0), ty, np.nan)
                steps_x += list(np.repeat(st.x(np.arange(n + 1) - 0.5), 2)[1:-1]) + [np.nan]
                steps_y += list(np.repeat(ty, 2)) + [np.nan]
        over = int(np.sum(err > np.nan_to_num(thr, nan=np.inf)))
        n_zero = int(np.sum(err == 0))
        if d["n_stages"]:
            title = f"{kind}: worst of {d['n_stages']} stage(s), {d['unit']}; red dashed = tolerance"
        else:
            title = f"{kind}: per-landmark error not in the JSON; red dashed = tolerance"
        if band.size:
            noise.append((j, scale, band))
            title += f"; grey = {banded[1]}"
        if over:
            title += f"; {over} landmark(s) beyond"
        if n_zero:
            title += f"; {n_zero} exact (no bar)"
        scales.append(scale)
        titles.append(title)
    st.decorate(scales, titles)
    for j, scale, band in noise:  # shaded under the bars, with a step line on top
        cv.polygons(landmark_band_polygons(st, j, scale, band), fill=NOISE_COLOUR, alpha=BAND_ALPHA)
        ty = st.y(j, scale.frac(np.where(np.isfinite(band) & (band > 0), band, np.nan)))
        ty = np.where(np.isfinite(band) & (band > 0), ty, np.nan)
        cv.polyline(list(np.repeat(st.x(np.arange(n + 1) - 0.5), 2)[1:-1]), list(np.repeat(ty, 2)),
                    NOISE_COLOUR, width=0.8)
    bar_width = min(4.2, 0.56 * st.slot * 72)  # points, kept inside a landmark's slot
    cv.lines(bars, width=bar_width, colours=bar_colours)
    if flat:
        cv.lines(flat, "red", width=1, dash=DASHED)
    if steps_x:
        cv.polyline(steps_x, steps_y, "red", width=1, dash=DASHED)
    return cv.png(), None


# --------------------------------------------------------------------------- (3) peak ratios

def plot_peak_ratios(view: CaseView) -> tuple[bytes | None, str | None]:
    """Candidate/golden peak ratio per landmark for the raw, post-Sigma and post-shift maps.

    One strip per map stage on one canvas sharing the landmark axis; one legend for all strips.
    """
    n = view.n_landmarks
    series = []
    for kind in MAP_STAGES:
        per_pass = [(k, view.lm_array(f"pass{k}/{kind}", "peak_ratio")) for k in view.passes()]
        per_pass = [(k, r) for k, r in per_pass if r is not None and np.isfinite(r).any()]
        if per_pass:
            series.append((kind, per_pass))
    if not series:
        return None, "the JSON carries no peak ratios for this case"
    st = _Strips(n, len(series), header=0.42, strip=0.9, gap=0.4, left=0.72)
    cv = st.canvas
    markers = ["o", "s", "^", "D", "v"]
    x = np.arange(n)
    points: dict[int, tuple[list, list]] = {}
    ones, scales, titles = [], [], []
    for j, (kind, per_pass) in enumerate(series):
        allr = np.concatenate([r[np.isfinite(r)] for _, r in per_pass])
        pos = allr[allr > 0]
        dev = float(np.max(np.abs(allr - 1))) if allr.size else 0.0
        if pos.size and pos.max() / pos.min() > 1.5:
            scale = _Scale(min(pos.min(), 1) / 1.5, max(pos.max(), 1) * 1.5, log=True)
        else:
            d = max(1.2 * dev, 1e-4)
            scale = _Scale(1 - d, 1 + d, log=False)
        for k, r in per_pass:
            px, py = points.setdefault(k, ([], []))
            f = scale.frac(np.where(r > 0, r, np.nan) if scale.log else r)
            px += list(st.x(x))
            py += list(np.where(np.isfinite(f), st.y(j, f), np.nan))
        st.hline(ones, j, scale, 1.0)
        n_off = int(np.sum(np.abs(allr - 1) > 1e-3))
        scales.append(scale)
        titles.append(f"{MAP_TITLES[kind]} maps ({kind}): candidate peak / golden peak; "
                      f"max |ratio-1| {fmt(dev)}; {n_off} value(s) off by > 0.1%")
    st.decorate(scales, titles)
    cv.lines(ones)
    # Legend: one marker and name per pass, top right.
    lx = st.x1 - 0.6 * len(points)
    for j, (k, (px, py)) in enumerate(sorted(points.items())):
        colour = CYCLE[j % len(CYCLE)]
        cv.markers(px, py, markers[j % len(markers)], 3, colour, alpha=0.8)
        cv.markers([lx + 0.6 * j], [0.12], markers[j % len(markers)], 3, colour, alpha=0.8)
        cv.text(lx + 0.6 * j + 0.07, 0.12, f"pass{k}", size=7, va="center")
    return cv.png(), None


# --------------------------------------------------------------------------- (4) response maps

def _colour_bar(cv: Canvas, box: tuple[float, float, float, float], cmap: str, labels: list[str]) -> None:
    """A colour bar: the gradient in ``box`` (x0, y0, x1, y1), labels at its top, (middle,) bottom."""
    x0, y0, x1, y1 = box
    cv.image(colour_map(np.linspace(1, 0, 128)[:, None], 0.0, 1.0, cmap), box, smooth=True)
    for k, label in enumerate(labels):
        cv.text(x1 + 0.05, y0 + (y1 - y0) * k / (len(labels) - 1), label, size=6, va="center")


def plot_maps(view: CaseView, arrays: CaseArrays) -> tuple[bytes | None, str | None]:
    """Worst landmarks' maps: golden | candidate (shared scale) | difference, KDE centre marked."""
    if arrays.golden_maps is None or arrays.candidate_maps is None or not arrays.map_stage:
        return None, arrays.notes.get("maps", "response maps of both sides are needed")
    stage = arrays.map_stage
    lms = [int(i) for i in arrays.map_landmarks]
    rows = len(lms)
    cv = Canvas(7.6, 0.45 + 2.2 * rows)
    s = 1.75                                      # side of a map panel (inches)
    xg, xc, xd = 0.15, 0.15 + s + 0.12, 4.85      # golden | candidate | difference
    cb_w = 0.11
    frames, marks = [], {("+", "white"): ([], []), ("x", "white"): ([], []), ("+", "black"): ([], [])}
    for r, lm in enumerate(lms):
        y0 = 0.75 + 2.2 * r
        g = arrays.golden_maps[r].astype(np.float64)
        c = arrays.candidate_maps[r].astype(np.float64)
        diff = c - g
        finite = np.concatenate([g[np.isfinite(g)], c[np.isfinite(c)]])
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if vmax <= vmin:
            vmax = vmin + 1e-12
        dmax = float(np.nan_to_num(np.abs(diff), nan=0.0, posinf=0.0).max()) or 1e-12
        for xp, img in ((xg, colour_map(g, vmin, vmax, "viridis")), (xc, colour_map(c, vmin, vmax, "viridis")),
                        (xd, colour_map(diff, -dmax, dmax, "RdBu_r"))):
            cv.image(img, (xp, y0, xp + s, y0 + s))
            frames.append((xp, y0, xp + s, y0 + s))
        cb1 = (xc + s + 0.1, y0, xc + s + 0.1 + cb_w, y0 + s)
        cb2 = (xd + s + 0.1, y0, xd + s + 0.1 + cb_w, y0 + s)
        _colour_bar(cv, cb1, "viridis", [f"{vmax:.3g}", f"{(vmin + vmax) / 2:.3g}", f"{vmin:.3g}"])
        _colour_bar(cv, cb2, "RdBu_r", [f"{dmax:.3g}", "0", f"{-dmax:.3g}"])
        frames += [cb1, cb2]
        c_centre = arrays.candidate_centre if arrays.candidate_centre is not None else arrays.golden_centre
        h, w = g.shape
        for xp, centre, key in ((xg, arrays.golden_centre, ("+", "white")), (xc, c_centre, ("x", "white")),
                                (xd, arrays.golden_centre, ("+", "black"))):
            if (centre is not None and r < len(centre) and np.isfinite(centre[r]).all()
                    and -0.5 <= centre[r][0] <= w - 0.5 and -0.5 <= centre[r][1] <= h - 0.5):
                marks[key][0].append(xp + (centre[r][0] + 0.5) / w * s)
                marks[key][1].append(y0 + (centre[r][1] + 0.5) / h * s)
        gp, cp = float(np.abs(g).max()), float(np.nan_to_num(np.abs(c), nan=np.inf).max())
        for xp, text in ((xg, f"lm {lm} ({region_of(lm)}) golden\npeak {fmt(gp)}"),
                         (xc, f"candidate\npeak {fmt(cp)} (ratio {fmt(cp / gp if gp else math.nan)})"),
                         (xd, f"candidate \u2212 golden\nmax |diff| {fmt(dmax)}")):
            cv.text(xp + s / 2, y0 - 0.04, text, size=8, ha="center", va="bottom")
    cv.frames(frames)
    for (mk, colour), (mx, my) in marks.items():
        if mx:
            cv.markers(mx, my, mk, 9, colour, width=1.6)
    cv.text(3.8, 0.05, f"{stage}: worst landmarks. Golden and candidate share one colour scale; the difference "
            f"has its own.\n+ / x = KDE centre (dxs, dys) of the pass's first iteration, golden / candidate",
            size=8, ha="center", va="top")
    return cv.png(), None


# --------------------------------------------------------------------------- (5) convergence

#: Series of the convergence plot's lower panel: (row field, its envelope band field, colour, marker,
#: label of the difference, label of the band).
DIFF_SERIES = (
    ("landmark_rms_diff", "landmark_band_px", "#d03030", "o", "shape (iterKK/shape) RMS diff", "shape"),
    ("mean_shift_rms_diff", "mean_shift_band_px", "#1f77b4", "s", "mean-shifts RMS diff", "mean-shifts"),
)
def _ordered_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["pass"], {"rigid": 0, "nonrigid": 1}.get(r["phase"], 2), r["iteration"]))


def convergence_series(rows: list[dict]) -> dict[str, Any]:
    """The convergence plot's data in run order: ``pass``, ``phase``, ``iteration`` (lists) and
    every number of :data:`~clnfdiag.report.tables.CONVERGENCE_FIELDS` (arrays, NaN where missing),
    among them the envelope's ``landmark_band_px`` and ``mean_shift_band_px`` per iteration."""
    ordered = _ordered_rows(rows)
    out: dict[str, Any] = {"pass": [r["pass"] for r in ordered], "phase": [r["phase"] for r in ordered],
                           "iteration": [r["iteration"] for r in ordered]}
    for name in CONVERGENCE_FIELDS:
        out[name] = np.array([_num(r.get(name)) for r in ordered], np.float64)
    return out


def _band_tint(colour: str, alpha: float = BAND_ALPHA) -> str:
    """``colour`` at ``alpha`` over white, as ``#rrggbb`` (a band's legend swatch)."""
    h = colour.lstrip("#")
    return "#" + "".join(f"{round(255 + alpha * (int(h[i:i + 2], 16) - 255)):02x}" for i in (0, 2, 4))


def plot_convergence(view: CaseView, rows: list[dict]) -> tuple[bytes | None, str | None]:
    """Convergence per iteration for each pass and phase, log scale, in up to two panels.

    Top: shape-change norm, golden and candidate. Bottom: the candidate's difference from the
    golden (RMS over landmarks of ``iterKK/shape`` and of the mean-shifts), with the case's noise
    envelope at each iteration shaded under it (the spread rounding alone gives that iteration's
    shape and mean-shifts), when the JSON carries it.
    """
    ser = convergence_series(rows)
    m = len(ser["iteration"])
    gs, cs = ser["shape_change_norm_golden"], ser["shape_change_norm_candidate"]
    has_norm = bool(np.isfinite(gs).any() or np.isfinite(cs).any())
    has_diff = any(np.isfinite(ser[f]).any() or np.isfinite(ser[b]).any() for f, b, *_ in DIFF_SERIES)
    if not m or not (has_norm or has_diff):
        return None, "no shape-change norms or differences in the JSON for this case"
    panels = (["norm"] if has_norm else []) + (["diff"] if has_diff else [])
    width, top, panel_h, gap, bottom = 8.0, 0.45, 1.9, 0.62, 0.55
    height = top + len(panels) * panel_h + (len(panels) - 1) * gap + bottom
    cv = Canvas(width, height)
    px0, px1 = 0.08 * width, 0.98 * width

    def xi(i: Any) -> Any:
        return px0 + (np.asarray(i, np.float64) + 0.5) / m * (px1 - px0)

    blocks, prev = [], None
    for i, block in enumerate(zip(ser["pass"], ser["phase"])):
        if block != prev:
            blocks.append((i, f"p{block[0]} {block[1]}"))
            prev = block
    starts = {start for start, _ in blocks}
    for j, panel in enumerate(panels):
        py0 = top + j * (panel_h + gap)
        py1 = py0 + panel_h
        if panel == "norm":
            scale = _norm_panel(cv, ser, xi, starts, (px0, py0, px1, py1))
        else:
            scale = _diff_panel(cv, view, ser, xi, starts, (px0, py0, px1, py1))
        _conv_axes(cv, ser, xi, blocks, scale, (px0, py0, px1, py1))
    cv.text((px0 + px1) / 2, height - bottom + 0.26, "iteration within pass / phase (labels at 0, 5, 10, ... and "
            "the last)", size=7, ha="center", va="top")
    return cv.png(), None


def _yv(scale: _Scale, py0: float, py1: float, v: Any) -> Any:
    """Canvas y of values on a log panel (NaN for values <= 0 or missing)."""
    f = scale.frac(np.where(np.asarray(v, np.float64) > 0, v, np.nan))
    return np.where(np.isfinite(f), py1 - np.clip(f, 0, 1) * (py1 - py0), np.nan)


def _broken(values: np.ndarray, xi: Any, yv: Any, starts: set[int]) -> tuple[list[float], list[float]]:
    """x, y of a line through ``values``, broken (NaN) where a pass / phase starts."""
    xs, ys = [], []
    for i, v in enumerate(values):
        if i in starts and i:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(float(xi(i)))
        ys.append(float(yv(v)))
    return xs, ys


def _conv_axes(cv: Canvas, ser: dict, xi: Any, blocks: list, scale: _Scale,
               box: tuple[float, float, float, float]) -> None:
    """Frame, pass / phase separators and labels, iteration and value ticks of one panel."""
    px0, py0, px1, py1 = box
    m = len(ser["iteration"])
    cv.frames([box])
    seps = [[(float(xi(start - 0.5)), py0), (float(xi(start - 0.5)), py1)] for start, _ in blocks if start]
    cv.lines(seps, "grey", width=0.6, dash=DASHED)
    for start, label in blocks:
        cv.text(float(xi(start)) - 0.05, py0 - 0.03, label, size=7, va="bottom")
    # A tick at every iteration, a label at 0, 5, 10, ... and at the last of each pass / phase.
    ticks = [[(float(xi(i)), py1), (float(xi(i)), py1 + 0.06)] for i in range(m)]
    for v, label in scale.ticks():
        y = float(_yv(scale, py0, py1, v))
        ticks.append([(px0 - 0.05, y), (px0, y)])
        cv.text(px0 - 0.08, y, label, size=7, ha="right", va="center")
    cv.lines(ticks, width=0.6)
    for i, it in enumerate(ser["iteration"]):
        last = i + 1 == m or (ser["pass"][i + 1], ser["phase"][i + 1]) != (ser["pass"][i], ser["phase"][i])
        if it % 5 == 0 or last:
            cv.text(float(xi(i)), py1 + 0.08, str(it), size=6, ha="center", va="top")


def _norm_panel(cv: Canvas, ser: dict, xi: Any, starts: set[int], box: tuple[float, float, float, float]) -> _Scale:
    """Shape-change norm, golden and candidate, with OpenFace's stop threshold."""
    px0, py0, px1, py1 = box
    gs, cs = ser["shape_change_norm_golden"], ser["shape_change_norm_candidate"]
    vals = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in (gs, cs)] + [[SHAPE_CHANGE_TOL]])
    scale = _Scale(vals.min() / 3, vals.max() * 3, log=True)

    def yv(v: Any) -> Any:
        return _yv(scale, py0, py1, v)

    thr = float(yv(SHAPE_CHANGE_TOL))
    cv.lines([[(px0, thr), (px1, thr)]], width=0.8, dash=DOTTED)
    cv.text(px1 - 0.05, thr - 0.03, "OpenFace stop threshold 0.01", size=7, ha="right", va="bottom")
    xs, gy = _broken(gs, xi, yv, starts)
    _, cy = _broken(cs, xi, yv, starts)
    cv.polyline(xs, gy, "#2a7f2a", width=1.2)
    cv.markers(xs, gy, "o", 3.5, "#2a7f2a")
    cv.polyline(xs, cy, "#d03030", width=1.0, dash=DASHED)
    cv.markers(xs, cy, "s", 3, "#d03030", filled=False)
    cv.text(px0, py0 - 0.2, "shape-change norm per iteration (px)", size=8, va="bottom")
    cv.text(0.06, (py0 + py1) / 2, "shape-change norm (px)", size=7, ha="left", va="center", rotation=90)
    _legend(cv, px0 + 0.08, py1 - 0.45, [("o", "#2a7f2a", "golden", True), ("s", "#d03030", "candidate", False)])
    return scale


def convergence_band_polygons(ser: dict, band_field: str, xi: Any, yv: Any, y_bottom: float) -> list:
    """One rectangle per iteration with a band > 0: from the panel's bottom up to the band value."""
    polys = []
    for i, b in enumerate(ser[band_field]):
        if np.isfinite(b) and b > 0:
            xa, xb, yb = float(xi(i - 0.5)), float(xi(i + 0.5)), float(yv(b))
            if math.isfinite(yb):
                polys.append([(xa, y_bottom), (xb, y_bottom), (xb, yb), (xa, yb)])
    return polys


def _diff_panel(cv: Canvas, view: CaseView, ser: dict, xi: Any, starts: set[int],
                box: tuple[float, float, float, float]) -> _Scale:
    """The candidate's difference from the golden per iteration, the envelope's band shaded under it."""
    px0, py0, px1, py1 = box
    arrays = [ser[f] for f, *_ in DIFF_SERIES] + [ser[b] for _, b, *_ in DIFF_SERIES]
    pos = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays])
    scale = _Scale(max(pos.min() / 3, LOG_FLOOR), pos.max() * 3, log=True) if pos.size else \
        _Scale(1e-6, 1.0, log=True)

    def yv(v: Any) -> Any:
        return _yv(scale, py0, py1, v)

    lines, bands, n_zero = [], [], 0
    for _, band_field, colour, _, _, band_name in DIFF_SERIES:  # bands first, under the lines
        polys = convergence_band_polygons(ser, band_field, xi, yv, py1)
        if polys:
            cv.polygons(polys, fill=colour, alpha=BAND_ALPHA)
            bands.append(("s", _band_tint(colour), f"rounding noise: {band_name}", True))
    for field_, _, colour, marker, label, _ in DIFF_SERIES:
        vals = ser[field_]
        if not np.isfinite(vals).any():
            continue
        n_zero += int(np.sum(vals == 0))
        xs, ys = _broken(vals, xi, yv, starts)
        cv.polyline(xs, ys, colour, width=1.1)
        cv.markers(xs, ys, marker, 3.2, colour)
        lines.append((marker, colour, label, True))
    legend, any_band = lines + bands, bool(bands)
    title = "difference from golden, RMS over landmarks (px)"
    if any_band:
        title += f"; shaded = {view.envelope_label}"
    if n_zero:
        title += f"; {n_zero} zero(s) not drawn"
    diffs = np.concatenate([ser[f] for f, *_ in DIFF_SERIES])
    if np.isfinite(diffs).any() and not np.nan_to_num(diffs, nan=0.0).any():
        cv.text((px0 + px1) / 2, py0 + 0.3, "candidate equal to the golden at every iteration (difference 0)",
                size=9, ha="center", va="center", background="white")
    cv.text(px0, py0 - 0.2, title, size=8, va="bottom")
    cv.text(0.06, (py0 + py1) / 2, "RMS diff (px)", size=7, ha="left", va="center", rotation=90)
    if legend:
        _legend(cv, px0 + 0.08, py1 - 0.1 - 0.17 * len(legend), legend)
    return scale


def _num(x: Any) -> float:
    """A JSON number as float (None -> NaN)."""
    return math.nan if x is None else float(x)
