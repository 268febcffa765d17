"""PNG plots of one case comparison (matplotlib, Agg canvas, no pyplot state).

Each ``plot_*`` function returns ``(png_bytes, None)`` or ``(None, reason)``
when its input is missing, so the page can say why a plot is absent.

Plots read the case JSON through :class:`~clnfdiag.report.tables.CaseView`;
the two that need arrays (the image with landmarks, the response maps) take
them from a :class:`CaseArrays`, gathered from the golden case and the
candidate stages, or from the ``report_arrays.npz`` a previous report saved.
"""
from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from .tables import (MAP_KINDS, MAP_STAGES, MAP_TITLES, POINT_FIELD, REGION_COLOURS, REGIONS,
                     SHAPE_CHANGE_TOL, CaseView, fmt, kind_of, pass_of, region_of)

#: Resolution of every PNG (small: the page embeds them all).
DPI = 80
#: Response-map landmarks shown per case.
N_WORST_MAPS = 3
#: Floor of log-scale error axes (exact zeros are drawn there).
LOG_FLOOR = 1e-12


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

    _ARRAYS = ("image", "image_origin", "golden_landmarks", "candidate_landmarks", "map_landmarks", "golden_maps",
               "candidate_maps", "golden_centre", "candidate_centre")

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


# --------------------------------------------------------------------------- rendering helpers

#: zlib level of the PNGs: 3 compresses the photo plot about 3x faster than Pillow's default 6, and
#: dropping the (opaque) alpha channel more than makes up for the size.
PNG_COMPRESS_LEVEL = 3


def _png(fig: Figure) -> bytes:
    """The figure as RGB PNG bytes at :data:`DPI`."""
    from PIL import Image  # a matplotlib dependency

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="png", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _nice_factor(x: float) -> float:
    """Largest 1-2-5 step <= x (at least 1)."""
    if not math.isfinite(x) or x <= 1:
        return 1.0
    e = 10 ** math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * e <= x:
            return float(m * e)
    return float(e)


# --------------------------------------------------------------------------- cheap drawing on one Axes
#
# Every Axes (and every tick of it) costs matplotlib a lot of set-up and layout time. The
# multi-panel plots below are therefore drawn on ONE Axes spanning the whole figure whose data
# units are inches (x to the right, y downwards): panels, strips, colour bars and labels are
# placed by hand, values mapped to strip coordinates here, and each kind of mark is a single
# collection for the whole figure.

def _inch_canvas(width: float, height: float) -> tuple[Figure, Any]:
    """A figure and one frameless Axes over all of it, data units = inches from the top left."""
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_autoscale_on(False)
    return fig, ax


def _frames(ax, boxes: list[tuple[float, float, float, float]], lw: float = 0.8) -> None:
    """Black outlines of (x0, y0, x1, y1) boxes."""
    if boxes:
        ax.add_collection(PolyCollection([[(a, b), (c, b), (c, d), (a, d)] for a, b, c, d in boxes],
                                         facecolors="none", edgecolors="black", linewidths=lw), autolim=False)


def _nice_decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0


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
            if len(vals) > 4:  # like LogLocator(numticks=4): every k-th decade
                k = math.ceil(len(vals) / 4)
                vals = [10.0 ** e for e in range(e0, e1 + 1) if (e - e0) % k == 0]
            if len(vals) < 2:
                vals = sorted({m * 10.0 ** e for e in range(e0 - 1, e1 + 1) for m in (1, 2, 5)
                               if self.lo <= m * 10.0 ** e <= self.hi})
            return [(v, f"{v:g}") for v in vals]
        vals = [v for v in MaxNLocator(5).tick_values(self.lo, self.hi) if self.lo - 1e-12 <= v <= self.hi + 1e-12]
        dec = _nice_decimals(vals[1] - vals[0]) if len(vals) > 1 else 3
        return [(v, f"{v:.{dec}f}") for v in vals]


class _Strips:
    """Stacked strips sharing one landmark x axis, drawn on an inch canvas."""

    def __init__(self, n: int, n_strips: int, *, width: float = 8.0, header: float = 0.3, strip: float = 0.85,
                 gap: float = 0.35, bottom: float = 0.45, left: float = 0.64, right: float = 0.08):
        self.n, self.strip, self.gap = n, strip, gap
        self.height = header + n_strips * strip + (n_strips - 1) * gap + bottom
        self.fig, self.ax = _inch_canvas(width, self.height)
        self.x0, self.x1 = left, width - right
        self.top = header
        self.tops = [header + j * (strip + gap) for j in range(n_strips)]
        self._sx = (self.x1 - self.x0) / (n + 0.4)  # landmark axis from -0.7 to n - 0.3

    def x(self, i: Any) -> Any:
        """Canvas x of landmark position ``i``."""
        return self.x0 + (np.asarray(i, np.float64) + 0.7) * self._sx

    def y(self, j: int, frac: Any) -> np.ndarray:
        """Canvas y of fraction ``frac`` of strip ``j`` (clipped to the strip)."""
        return self.tops[j] + self.strip * (1 - np.clip(frac, 0, 1))

    def decorate(self, scales: list[_Scale], titles: list[str], region_labels: bool = True) -> None:
        """Region bands, frames, y ticks and labels, titles, region ticks and labels."""
        ax, n = self.ax, self.n
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
                ax.text(self.x0 - 0.08, yv, label, fontsize=7, ha="right", va="center")
            for _, lo, _ in names:
                ticks.append([(float(self.x(lo)), b), (float(self.x(lo)), b + 0.05)])
            ax.text(self.x0, t - 0.03, title, fontsize=8, ha="left", va="bottom")
        ax.add_collection(PolyCollection(bands, facecolors=colours, alpha=0.07, linewidths=0), autolim=False)
        _frames(ax, frames)
        ax.add_collection(LineCollection(ticks, colors="black", linewidths=0.8), autolim=False)
        if region_labels:
            yb = self.tops[-1] + self.strip + 0.08
            for name, lo, _ in names:
                ax.text(float(self.x(lo)), yb, f"{lo}\n{name}", fontsize=7, ha="center", va="top",
                        linespacing=1.15)

    def hline(self, segs: list, j: int, scale: _Scale, value: float) -> None:
        f = float(scale.frac(value))
        if 0 <= f <= 1:
            yv = float(self.y(j, f))
            segs.append([(self.x0, yv), (self.x1, yv)])


# --------------------------------------------------------------------------- (1) image + landmarks

def plot_landmarks(view: CaseView, arrays: CaseArrays) -> tuple[bytes | None, str | None]:
    """Image with golden and candidate final landmarks, error vectors magnified."""
    g, c, img = arrays.golden_landmarks, arrays.candidate_landmarks, arrays.image
    if g is None or c is None or img is None or g.shape != c.shape:
        return None, arrays.notes.get("landmarks", "final landmarks of both sides are needed")
    g = g.astype(np.float64)
    c = c.astype(np.float64)
    err = np.linalg.norm(c - g, axis=1)
    err_max = float(np.nanmax(err)) if err.size else 0.0
    lo, hi = np.nanmin(g, axis=0), np.nanmax(g, axis=0)
    extent = float(max(hi - lo))
    mag = _nice_factor(0.08 * extent / err_max) if err_max > 0 else 1.0
    mag = min(mag, 1e6)
    ox, oy = (0, 0) if arrays.image_origin is None else (int(arrays.image_origin[0]), int(arrays.image_origin[1]))
    h, w = img.shape[:2]
    # Window in full-image coordinates, within the (possibly cropped) image we have.
    wx0, wy0, wx1, wy1 = _crop_window([g - (ox, oy)], w, h)
    crop = img[wy0:wy1, wx0:wx1]
    x0, x1, y0, y1 = wx0 + ox, wx1 + ox, wy0 + oy, wy1 + oy
    if crop.ndim == 3:
        crop = crop[..., ::-1]  # BGR -> RGB

    fig = Figure(figsize=(5.2, 5.2 * max(y1 - y0, 1) / max(x1 - x0, 1) * 0.9 + 0.6))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.86))
    ax.imshow(crop, cmap="gray", extent=(x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5), interpolation="bilinear")
    ax.plot(g[:, 0], g[:, 1], "o", ms=3.5, mfc="none", mec="#00e000", mew=1.0, label="golden")
    ax.plot(c[:, 0], c[:, 1], "x", ms=3.5, color="#ff3030", mew=1.0, label="candidate")
    d = (c - g) * mag
    ax.quiver(g[:, 0], g[:, 1], d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1, color="#ffd000",
              width=0.004, headwidth=3, headlength=4)
    ax.set_xlim(x0 - 0.5, x1 - 0.5)
    ax.set_ylim(y1 - 0.5, y0 - 0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="lower right", fontsize=7, framealpha=0.7)
    worst = int(np.nanargmax(err)) if err.size and err_max > 0 else None
    fig.suptitle(f"final landmarks: golden (green o) vs candidate (red x)\n"
                 f"error vectors (yellow) magnified \u00d7{mag:g}; max error {fmt(err_max)} px"
                 + (f" at landmark {worst}" if worst is not None else ""), fontsize=9, y=0.985)
    ax.text(0.01, 0.99, f"vectors \u00d7{mag:g}", transform=ax.transAxes, va="top", ha="left", fontsize=9,
            color="black", bbox={"facecolor": "#ffd000", "alpha": 0.85, "pad": 2, "lw": 0})
    return _png(fig), None


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


def _log_ticks(ax) -> None:
    """Few major ticks, no minor ones (tick labels dominate the drawing time)."""
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=4))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(_PLAIN_LOG)


# Plain "1e-06" labels: the default log labels go through mathtext, which is slow to lay out.
_PLAIN_LOG = FuncFormatter(lambda v, _pos: f"{v:g}")


def plot_errors(view: CaseView) -> tuple[bytes | None, str | None]:
    """Per-landmark error bars for each stage kind, landmarks grouped by face region, tolerance drawn.

    One strip per stage kind (log scale each), all strips on one canvas sharing the landmark axis.
    """
    kinds = _kind_errors(view)
    if not kinds:
        return None, "the JSON carries no per-landmark errors for this case"
    order = [k for k in ("area_of_interest", "response_raw", "response_sigma", "response", "landmarks_at_response",
                         "reference_shape", "dxs", "dys", "mean_shifts_ref", "mean_shifts", "shape",
                         "landmarks_before", "landmarks") if k in kinds]
    order += [k for k in kinds if k not in order]
    exact = [k for k in order if not np.nan_to_num(kinds[k]["err"], nan=0.0).any()]
    shown_kinds = [k for k in order if k not in exact]
    n = view.n_landmarks
    x = np.arange(n)
    colours = [REGION_COLOURS[region_of(i)] for i in range(n)]
    exact_lines = textwrap.wrap("Equal to the golden (error 0) at every landmark: " + ", ".join(exact), 120) \
        if exact else []
    header = 0.3 + 0.16 * len(exact_lines)
    if not shown_kinds:
        fig, ax = _inch_canvas(8.0, header + 1.65)
        if exact_lines:
            ax.text(0.08, 0.08, "\n".join(exact_lines), fontsize=8, va="top")
        ax.text(4.0, header + 0.8, "no per-landmark error anywhere", ha="center", va="center", fontsize=10)
        return _png(fig), None
    st = _Strips(n, len(shown_kinds), header=header)
    ax = st.ax
    if exact_lines:
        ax.text(0.08, 0.08, "\n".join(exact_lines), fontsize=8, va="top")
    bars, bar_colours, flat, steps_x, steps_y = [], [], [], [], []
    scales, titles = [], []
    for j, kind in enumerate(shown_kinds):
        d = kinds[kind]
        err = d["err"]
        thr = np.where(np.isfinite(d["thr"]), d["thr"], np.nan)
        pos = np.concatenate([err[np.isfinite(err) & (err > 0)], thr[np.isfinite(thr) & (thr > 0)]])
        lo, hi = (max(pos.min() / 3, LOG_FLOOR), pos.max() * 3) if pos.size else (LOG_FLOOR, 1.0)
        scale = _Scale(lo, hi, log=True)
        # Exact zeros get no bar (log axis); the title counts them.
        ok = np.isfinite(err) & (err > 0)
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
        title = f"{kind}: worst of {d['n_stages']} stage(s), {d['unit']}; red dashed = tolerance"
        if over:
            title += f"; {over} landmark(s) beyond"
        if n_zero:
            title += f"; {n_zero} exact (no bar)"
        scales.append(scale)
        titles.append(title)
    st.decorate(scales, titles)
    lw = min(4.2, 0.56 * st._sx * 72)  # bar width in points, kept inside a landmark's slot
    ax.add_collection(LineCollection(bars, colors=bar_colours, linewidths=lw), autolim=False)
    if flat:
        ax.add_collection(LineCollection(flat, colors="red", linewidths=1, linestyles="--"), autolim=False)
    if steps_x:
        ax.plot(steps_x, steps_y, color="red", lw=1, ls="--")
    return _png(fig=st.fig), None


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
    ax = st.ax
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
            px += list(st.x(x)) + [np.nan]
            py += list(np.where(np.isfinite(f), st.y(j, f), np.nan)) + [np.nan]
        st.hline(ones, j, scale, 1.0)
        n_off = int(np.sum(np.abs(allr - 1) > 1e-3))
        scales.append(scale)
        titles.append(f"{MAP_TITLES[kind]} maps ({kind}): candidate peak / golden peak; "
                      f"max |ratio-1| {fmt(dev)}; {n_off} value(s) off by > 0.1%")
    st.decorate(scales, titles)
    ax.add_collection(LineCollection(ones, colors="black", linewidths=0.8), autolim=False)
    # Legend: one marker and name per pass, top right.
    lx = st.x1 - 0.6 * len(points)
    for j, (k, (px, py)) in enumerate(sorted(points.items())):
        colour = f"C{j}"
        ax.plot(px, py, markers[j % len(markers)], ms=3, color=colour, alpha=0.8)
        ax.plot([lx + 0.6 * j], [0.12], markers[j % len(markers)], ms=3, color=colour, alpha=0.8)
        ax.text(lx + 0.6 * j + 0.07, 0.12, f"pass{k}", fontsize=7, va="center", ha="left")
    return _png(st.fig), None


# --------------------------------------------------------------------------- (4) response maps

def _colour_bar(ax, box: tuple[float, float, float, float], cmap: str, labels: list[str]) -> None:
    """A cheap colour bar: a gradient image in ``box`` (x0, y0, x1, y1) and labels at its top,
    (middle,) bottom."""
    x0, y0, x1, y1 = box
    ax.imshow(np.linspace(1, 0, 128)[:, None], cmap=cmap, vmin=0, vmax=1, extent=(x0, x1, y1, y0),
              aspect="auto", interpolation="bilinear")
    for k, label in enumerate(labels):
        yv = y0 + (y1 - y0) * k / (len(labels) - 1)
        ax.text(x1 + 0.05, yv, label, fontsize=6, ha="left", va="center")


def plot_maps(view: CaseView, arrays: CaseArrays) -> tuple[bytes | None, str | None]:
    """Worst landmarks' maps: golden | candidate (shared scale) | difference, KDE centre marked."""
    if arrays.golden_maps is None or arrays.candidate_maps is None or not arrays.map_stage:
        return None, arrays.notes.get("maps", "response maps of both sides are needed")
    stage = arrays.map_stage
    lms = [int(i) for i in arrays.map_landmarks]
    rows = len(lms)
    fig, ax = _inch_canvas(7.6, 0.45 + 2.2 * rows)
    s = 1.75                                      # side of a map panel (inches)
    xg, xc, xd = 0.15, 0.15 + s + 0.12, 4.85      # golden | candidate | difference
    cb_w = 0.11
    frames, marks = [], {("+", "white"): ([], []), ("x", "white"): ([], []), ("+", "black"): ([], [])}
    for r, lm in enumerate(lms):
        y0 = 0.75 + 2.2 * r
        g = arrays.golden_maps[r].astype(np.float64)
        c = arrays.candidate_maps[r].astype(np.float64)
        diff = c - g
        vmin, vmax = float(min(g.min(), c.min())), float(max(g.max(), c.max()))
        if vmax <= vmin:
            vmax = vmin + 1e-12
        dmax = float(np.abs(diff).max()) or 1e-12
        for xp, img, kw in ((xg, g, {"vmin": vmin, "vmax": vmax, "cmap": "viridis"}),
                            (xc, c, {"vmin": vmin, "vmax": vmax, "cmap": "viridis"}),
                            (xd, diff, {"vmin": -dmax, "vmax": dmax, "cmap": "RdBu_r"})):
            ax.imshow(img, extent=(xp, xp + s, y0 + s, y0), aspect="auto", interpolation="nearest", **kw)
            frames.append((xp, y0, xp + s, y0 + s))
        cb1 = (xc + s + 0.1, y0, xc + s + 0.1 + cb_w, y0 + s)
        cb2 = (xd + s + 0.1, y0, xd + s + 0.1 + cb_w, y0 + s)
        _colour_bar(ax, cb1, "viridis", [f"{vmax:.3g}", f"{(vmin + vmax) / 2:.3g}", f"{vmin:.3g}"])
        _colour_bar(ax, cb2, "RdBu_r", [f"{dmax:.3g}", "0", f"{-dmax:.3g}"])
        frames += [cb1, cb2]
        c_centre = arrays.candidate_centre if arrays.candidate_centre is not None else arrays.golden_centre
        h, w = g.shape
        for xp, centre, key in ((xg, arrays.golden_centre, ("+", "white")), (xc, c_centre, ("x", "white")),
                                (xd, arrays.golden_centre, ("+", "black"))):
            if (centre is not None and r < len(centre) and np.isfinite(centre[r]).all()
                    and -0.5 <= centre[r][0] <= w - 0.5 and -0.5 <= centre[r][1] <= h - 0.5):
                marks[key][0].append(xp + (centre[r][0] + 0.5) / w * s)
                marks[key][1].append(y0 + (centre[r][1] + 0.5) / h * s)
        gp, cp = float(np.abs(g).max()), float(np.abs(c).max())
        for xp, text in ((xg, f"lm {lm} ({region_of(lm)}) golden\npeak {fmt(gp)}"),
                         (xc, f"candidate\npeak {fmt(cp)} (ratio {fmt(cp / gp if gp else math.nan)})"),
                         (xd, f"candidate \u2212 golden\nmax |diff| {fmt(dmax)}")):
            ax.text(xp + s / 2, y0 - 0.04, text, fontsize=8, ha="center", va="bottom")
    _frames(ax, frames)
    for (mk, colour), (mx, my) in marks.items():
        if mx:
            ax.plot(mx, my, mk, color=colour, ms=9, mew=1.6, ls="none")
    ax.text(3.8, 0.05, f"{stage}: worst landmarks. Golden and candidate share one colour scale; the difference "
            f"has its own.\n+ / x = KDE centre (dxs, dys) of the pass's first iteration, golden / candidate",
            fontsize=8, ha="center", va="top")
    return _png(fig), None


# --------------------------------------------------------------------------- (5) convergence

def plot_convergence(view: CaseView, rows: list[dict]) -> tuple[bytes | None, str | None]:
    """Shape-change norm per iteration for each pass and phase, golden and candidate, log scale."""
    have = [r for r in rows if any(np.isfinite([r.get("shape_change_norm_golden", math.nan),
                                                r.get("shape_change_norm_candidate", math.nan)]))]
    if not have:
        return None, "no shape-change norms in the JSON for this case"
    ordered = sorted(rows, key=lambda r: (r["pass"], {"rigid": 0, "nonrigid": 1}.get(r["phase"], 2), r["iteration"]))
    fig = Figure(figsize=(8.0, 2.9))
    ax = fig.add_axes((0.08, 0.2, 0.9, 0.66))
    xs, gs, cs, blocks = [], [], [], []
    prev = None
    for i, r in enumerate(ordered):
        block = (r["pass"], r["phase"])
        if block != prev:
            if prev is not None:  # break the lines between phases
                xs.append(i - 0.5)
                gs.append(math.nan)
                cs.append(math.nan)
            blocks.append((i, f"p{r['pass']} {r['phase']}"))
            prev = block
        xs.append(i)
        gs.append(r.get("shape_change_norm_golden", math.nan))
        cs.append(r.get("shape_change_norm_candidate", math.nan))
    ax.plot(xs, gs, "o-", ms=3.5, lw=1.2, color="#2a7f2a", label="golden")
    ax.plot(xs, cs, "s--", ms=3, lw=1.0, color="#d03030", label="candidate", mfc="none")
    ax.axhline(SHAPE_CHANGE_TOL, color="black", lw=0.8, ls=":")
    ax.text(len(ordered) - 0.6, SHAPE_CHANGE_TOL * 1.15, "OpenFace stop threshold 0.01", fontsize=7,
            va="bottom", ha="right")
    ax.set_yscale("log")
    vals = np.array([v for v in gs + cs if v is not None and np.isfinite(v) and v > 0] + [SHAPE_CHANGE_TOL])
    ax.set_ylim(vals.min() / 3, vals.max() * 3)
    top = ax.get_ylim()[1]
    for start, label in blocks:
        if start:
            ax.axvline(start - 0.5, color="grey", lw=0.6, ls="--")
        ax.text(start, top, label, fontsize=7, va="bottom", ha="left")
    ax.set_xlim(-0.5, len(ordered) - 0.5)
    # A tick at every iteration (one collection), a label at 0, 5, 10, ... and at the last of each
    # pass / phase: Axis ticks cost a Tick object and a text layout each.
    ax.set_xticks([])
    trans = ax.get_xaxis_transform()
    ax.add_collection(LineCollection([[(i, 0), (i, -0.025)] for i in range(len(ordered))], colors="black",
                                     linewidths=0.6, transform=trans, clip_on=False), autolim=False)
    for i, r in enumerate(ordered):
        last = i + 1 == len(ordered) or (ordered[i + 1]["pass"], ordered[i + 1]["phase"]) != (r["pass"], r["phase"])
        if r["iteration"] % 5 == 0 or last:
            ax.text(i, -0.04, str(r["iteration"]), fontsize=6, ha="center", va="top", transform=trans)
    ax.text(0.5, -0.13, "iteration within pass / phase (labels at 0, 5, 10, ... and the last)", fontsize=7,
            ha="center", va="top", transform=ax.transAxes)
    ax.set_ylabel("shape-change norm (px)", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.7)
    _log_ticks(ax)
    return _png(fig), None
