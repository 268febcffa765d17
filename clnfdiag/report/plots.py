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

def _title(ax, text: str, loc: str = "left", fontsize: int = 8) -> None:
    """An axes title as plain text just above the axes.

    ``Axes.set_title`` re-measures every tick label on each draw to place the
    title clear of them (a third of a plot's drawing time here); these titles
    sit above axes whose top has no tick labels, so a fixed offset is enough.
    """
    x, ha = {"left": (0.0, "left"), "center": (0.5, "center")}[loc]
    ax.text(x, 1.0, text, transform=ax.transAxes, ha=ha, va="bottom", fontsize=fontsize,
            clip_on=False)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _region_axis(ax, n: int, labels: bool = True) -> None:
    """Landmark x axis with face-region bands (and region labels when ``labels``)."""
    ax.set_xlim(-0.7, n - 0.3)
    for name, (lo, hi) in REGIONS.items():
        if lo >= n:
            break
        ax.axvspan(lo - 0.5, min(hi, n) - 0.5, color=REGION_COLOURS[name], alpha=0.07, lw=0)
    ticks = [lo for lo, _ in REGIONS.values() if lo < n]
    ax.set_xticks(ticks)
    if labels:
        ax.set_xticklabels([f"{lo}\n{name}" for name, (lo, _) in REGIONS.items() if lo < n], fontsize=7)
    else:
        ax.set_xticklabels([])


def _nice_factor(x: float) -> float:
    """Largest 1-2-5 step <= x (at least 1)."""
    if not math.isfinite(x) or x <= 1:
        return 1.0
    e = 10 ** math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * e <= x:
            return float(m * e)
    return float(e)


def _log_limits(ax, values: list[np.ndarray], lines: list[float]) -> None:
    pos = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values] + [np.array([l for l in lines if l > 0])])
    if pos.size:
        lo, hi = pos.min(), pos.max()
        ax.set_ylim(max(lo / 3, LOG_FLOOR), hi * 3)


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
    """Per-landmark error bars for each stage kind, landmarks grouped by face region, tolerance drawn."""
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
    fig = Figure(figsize=(8.0, header + 0.45 + 1.2 * max(len(shown_kinds), 1)))
    if exact_lines:
        fig.text(0.01, 1 - 0.08 / fig.get_figheight(), "\n".join(exact_lines), fontsize=8, va="top")
    if not shown_kinds:
        fig.text(0.5, 0.5, "no per-landmark error anywhere", ha="center", va="center", fontsize=10)
        return _png(fig), None
    axes = fig.subplots(len(shown_kinds), 1, squeeze=False)[:, 0]
    for j, (ax, kind) in enumerate(zip(axes, shown_kinds)):
        d = kinds[kind]
        err = d["err"]
        thr = np.where(np.isfinite(d["thr"]), d["thr"], np.nan)
        _log_limits(ax, [err], [float(t) for t in thr[np.isfinite(thr)]])
        # Exact zeros get no bar (log axis); the title counts them.
        shown = np.where(np.isfinite(err) & (err > 0), err, np.nan)
        n_zero = int(np.sum(err == 0))
        ax.set_yscale("log")
        # One LineCollection instead of 68 bar rectangles: the same picture, a fraction of the time.
        ax.vlines(x, ax.get_ylim()[0], shown, colors=colours, linewidth=4.2)
        if np.isfinite(thr).any():
            if np.nanmax(thr) - np.nanmin(thr) <= 1e-12 * max(np.nanmax(thr), 1e-300):
                ax.axhline(np.nanmax(thr), color="red", lw=1, ls="--")
            else:
                ax.step(x, thr, where="mid", color="red", lw=1, ls="--")
        over = int(np.sum(err > np.nan_to_num(thr, nan=np.inf)))
        _region_axis(ax, n, labels=j == len(shown_kinds) - 1)  # region names once, at the bottom
        _log_ticks(ax)
        title = f"{kind}: worst of {d['n_stages']} stage(s), {d['unit']}; red dashed = tolerance"
        if over:
            title += f"; {over} landmark(s) beyond"
        if n_zero:
            title += f"; {n_zero} exact (no bar)"
        _title(ax, title)
        ax.tick_params(axis="y", labelsize=7)
    fig.subplots_adjust(left=0.08, right=0.99, top=1 - header / fig.get_figheight(),
                        bottom=0.45 / fig.get_figheight(), hspace=0.45)
    return _png(fig), None


# --------------------------------------------------------------------------- (3) peak ratios

def plot_peak_ratios(view: CaseView) -> tuple[bytes | None, str | None]:
    """Candidate/golden peak ratio per landmark for the raw, post-Sigma and post-shift maps."""
    n = view.n_landmarks
    series = []
    for kind in MAP_STAGES:
        per_pass = [(k, view.lm_array(f"pass{k}/{kind}", "peak_ratio")) for k in view.passes()]
        per_pass = [(k, r) for k, r in per_pass if r is not None and np.isfinite(r).any()]
        if per_pass:
            series.append((kind, per_pass))
    if not series:
        return None, "the JSON carries no peak ratios for this case"
    fig = Figure(figsize=(8.0, 0.4 + 1.6 * len(series)))
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    markers = ["o", "s", "^", "D", "v"]
    x = np.arange(n)
    for ax, (kind, per_pass) in zip(axes, series):
        allr = np.concatenate([r[np.isfinite(r)] for _, r in per_pass])
        pos = allr[allr > 0]
        for j, (k, r) in enumerate(per_pass):
            ax.plot(x, r, markers[j % len(markers)], ms=3, label=f"pass{k}", alpha=0.8)
        ax.axhline(1.0, color="black", lw=0.8)
        dev = float(np.max(np.abs(allr - 1))) if allr.size else 0.0
        if pos.size and pos.max() / pos.min() > 1.5:
            ax.set_yscale("log")
            ax.set_ylim(min(pos.min(), 1) / 1.5, max(pos.max(), 1) * 1.5)
            _log_ticks(ax)
        else:
            d = max(1.2 * dev, 1e-4)
            ax.set_ylim(1 - d, 1 + d)
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        n_off = int(np.sum(np.abs(allr - 1) > 1e-3))
        _title(ax, f"{MAP_TITLES[kind]} maps ({kind}): candidate peak / golden peak; "
                     f"max |ratio-1| {fmt(dev)}; {n_off} value(s) off by > 0.1%")
        _region_axis(ax, n)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=6, loc="upper right", ncol=len(per_pass), framealpha=0.6)
    fig.subplots_adjust(left=0.09, right=0.99, top=1 - 0.25 / fig.get_figheight(),
                        bottom=0.45 / fig.get_figheight(), hspace=0.75)
    return _png(fig), None


# --------------------------------------------------------------------------- (4) response maps

def plot_maps(view: CaseView, arrays: CaseArrays) -> tuple[bytes | None, str | None]:
    """Worst landmarks' maps: golden | candidate (shared scale) | difference, KDE centre marked."""
    if arrays.golden_maps is None or arrays.candidate_maps is None or not arrays.map_stage:
        return None, arrays.notes.get("maps", "response maps of both sides are needed")
    stage = arrays.map_stage
    lms = [int(i) for i in arrays.map_landmarks]
    rows = len(lms)
    fig = Figure(figsize=(7.6, 0.85 + 2.2 * rows))
    # golden | candidate | colour bar | gap | difference | colour bar
    gs = fig.add_gridspec(rows, 6, width_ratios=[1, 1, 0.06, 0.32, 1, 0.06], left=0.02, right=0.93,
                          top=1 - 0.85 / fig.get_figheight(), bottom=0.02, wspace=0.12, hspace=0.3)
    for r, lm in enumerate(lms):
        ax_g, ax_c, cax = fig.add_subplot(gs[r, 0]), fig.add_subplot(gs[r, 1]), fig.add_subplot(gs[r, 2])
        ax_d, cax_d = fig.add_subplot(gs[r, 4]), fig.add_subplot(gs[r, 5])
        g = arrays.golden_maps[r].astype(np.float64)
        c = arrays.candidate_maps[r].astype(np.float64)
        diff = c - g
        vmin, vmax = float(min(g.min(), c.min())), float(max(g.max(), c.max()))
        if vmax <= vmin:
            vmax = vmin + 1e-12
        dmax = float(np.abs(diff).max()) or 1e-12
        ig = ax_g.imshow(g, vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
        ax_c.imshow(c, vmin=vmin, vmax=vmax, cmap="viridis", interpolation="nearest")
        idf = ax_d.imshow(diff, vmin=-dmax, vmax=dmax, cmap="RdBu_r", interpolation="nearest")
        for im, ca in ((ig, cax), (idf, cax_d)):
            cb = fig.colorbar(im, cax=ca)
            cb.ax.tick_params(labelsize=6)
            cb.ax.yaxis.set_major_locator(MaxNLocator(4))
        c_centre = arrays.candidate_centre if arrays.candidate_centre is not None else arrays.golden_centre
        for ax, centre, mk, colour in ((ax_g, arrays.golden_centre, "+", "white"), (ax_c, c_centre, "x", "white"),
                                       (ax_d, arrays.golden_centre, "+", "black")):
            if centre is not None and r < len(centre) and np.isfinite(centre[r]).all():
                ax.plot(centre[r][0], centre[r][1], mk, color=colour, ms=9, mew=1.6)
        gp, cp = float(np.abs(g).max()), float(np.abs(c).max())
        _title(ax_g, f"lm {lm} ({region_of(lm)}) golden\npeak {fmt(gp)}", "center")
        _title(ax_c, f"candidate\npeak {fmt(cp)} (ratio {fmt(cp / gp if gp else math.nan)})", "center")
        _title(ax_d, f"candidate \u2212 golden\nmax |diff| {fmt(dmax)}", "center")
        for ax in (ax_g, ax_c, ax_d):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{stage}: worst landmarks. Golden and candidate share one colour scale; the difference "
                 f"has its own.\n+ / x = KDE centre (dxs, dys) of the pass's first iteration, golden / candidate",
                 fontsize=8, y=1 - 0.05 / fig.get_figheight(), va="top")
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
    ax.set_xticks(range(len(ordered)))
    ax.set_xticklabels([str(r["iteration"]) for r in ordered], fontsize=6)
    ax.set_xlabel("iteration within pass / phase", fontsize=7)
    ax.set_ylabel("shape-change norm (px)", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower left", framealpha=0.7)
    _log_ticks(ax)
    return _png(fig), None
