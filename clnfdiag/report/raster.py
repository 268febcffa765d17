"""A small raster canvas for the report's plots: Pillow drawing, numpy colour maps, no figure machinery.

Every plot of a report used to be a matplotlib figure; with 5 plots per comparison, text layout
and Axes set-up made them about 0.15 s each, which is what made a 96-comparison report take
most of a minute. The plots are simple (strips, bars, markers, small images, labels), so they
are drawn here directly: shapes on a 2x supersampled Pillow image (downsampled with area
averaging, which anti-aliases them), text afterwards at the final resolution with the DejaVu
Sans font matplotlib ships (crisp, and drawn once). Colour maps are matplotlib's, as tables.

Coordinates are inches from the top-left corner (x right, y down), as the plots lay themselves
out; sizes are points (1/72 inch), as in matplotlib, so the plots keep their look.
"""
from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Pixels per inch of the PNGs.
DPI = 80
#: Supersampling of the shapes (anti-aliasing by area averaging).
SUPERSAMPLE = 2
#: zlib level of the PNGs: 1 is several times faster than the default 6 for about 15% more bytes
#: (encoding is the largest part of drawing a plot).
PNG_COMPRESS_LEVEL = 1
#: matplotlib's default colour cycle (``C0``, ``C1``, ...).
CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
#: Line spacing of multi-line text, in font sizes.
LINE_SPACING = 1.2

Point = tuple[float, float]


@lru_cache(maxsize=None)
def _font_path() -> str:
    import matplotlib  # only for its data folder (the font it ships)
    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


@lru_cache(maxsize=32)
def font(size_px: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``size_px`` pixels."""
    return ImageFont.truetype(_font_path(), size_px)


@lru_cache(maxsize=16)
def colour_table(name: str) -> np.ndarray:
    """(256, 3) uint8 RGB table of a matplotlib colour map."""
    from matplotlib import colormaps
    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def colour_map(values: np.ndarray, vmin: float, vmax: float, name: str) -> np.ndarray:
    """(h, w, 3) uint8 RGB of ``values`` through a colour map (NaN drawn as the lowest colour)."""
    span = vmax - vmin if vmax > vmin else 1.0
    with np.errstate(invalid="ignore"):
        idx = np.nan_to_num((np.asarray(values, np.float64) - vmin) / span * 255.0, nan=0.0)
    return colour_table(name)[np.clip(idx + 0.5, 0, 255).astype(np.intp)]


@lru_cache(maxsize=1024)
def rgb(colour: str | tuple[float, ...], alpha: float = 1.0) -> tuple[int, int, int, int]:
    """``"#rrggbb"`` / name / (r, g, b) in 0..1 -> RGBA 0..255 (cached: called per bar and marker)."""
    if isinstance(colour, str):
        colour = _NAMED.get(colour, colour)
        h = colour.lstrip("#")
        r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    else:
        r, g, b = (int(round(255 * c)) for c in colour[:3])
    return r, g, b, int(round(255 * alpha))


def tint(colour: str, alpha: float) -> tuple[int, int, int, int]:
    """The opaque colour ``colour`` at ``alpha`` over white: drawn first on the white canvas it looks
    the same as the blend, without blending every pixel."""
    r, g, b, _ = rgb(colour)
    return tuple(round(255 + alpha * (c - 255)) for c in (r, g, b)) + (255,)  # type: ignore[return-value]


_NAMED = {"black": "#000000", "white": "#ffffff", "red": "#ff0000", "grey": "#808080", "gray": "#808080"}


class Canvas:
    """A white picture ``width`` x ``height`` inches; draw on it, then :meth:`png`.

    Parameters
    ----------
    width, height : float
        Size in inches (pixels = inches x :data:`DPI`).
    """

    def __init__(self, width: float, height: float):
        self.width, self.height = width, height
        self._k = DPI * SUPERSAMPLE
        self.size = (max(1, round(width * DPI)), max(1, round(height * DPI)))
        self._img = Image.new("RGB", (self.size[0] * SUPERSAMPLE, self.size[1] * SUPERSAMPLE), "white")
        self._draw = ImageDraw.Draw(self._img, "RGBA")
        self._texts: list[tuple] = []

    # ---- units
    def _px(self, x: float, y: float) -> tuple[float, float]:
        return x * self._k, y * self._k

    def _w(self, points: float) -> int:
        """A line width in points, in supersampled pixels (at least 1)."""
        return max(1, round(points / 72.0 * self._k))

    # ---- shapes
    def lines(self, segments: Iterable[Sequence[Point]], colour: str | Sequence = "black", width: float = 0.8,
              dash: tuple[float, float] | None = None, alpha: float = 1.0,
              colours: Sequence[str] | None = None) -> None:
        """Polylines (each a sequence of (x, y) inches), optionally dashed (on, off in points) or each
        in its own colour."""
        w = self._w(width)
        for i, seg in enumerate(segments):
            c = rgb(colours[i] if colours is not None else colour, alpha)
            pts = [self._px(x, y) for x, y in seg]
            for piece in (_dashes(pts, dash, self._k / 72.0) if dash else [pts]):
                if len(piece) >= 2:
                    self._draw.line(piece, fill=c, width=w)

    def polyline(self, xs: Sequence[float], ys: Sequence[float], colour: str = "black", width: float = 1.0,
                 dash: tuple[float, float] | None = None, alpha: float = 1.0) -> None:
        """A line through the points, broken where x or y is NaN."""
        self.lines(_runs(xs, ys), colour, width, dash, alpha)

    def polygons(self, polygons: Iterable[Sequence[Point]], fill: str | Sequence[str] | None = None,
                 alpha: float = 1.0, outline: str | None = None, width: float = 0.8,
                 over_white: bool = False) -> None:
        """Filled and/or outlined polygons (``fill`` one colour or one per polygon). ``over_white``:
        they are the first thing drawn on that part of the canvas, so ``alpha`` is applied to white."""
        w = self._w(width)
        for i, poly in enumerate(polygons):
            colour = None if fill is None else (fill if isinstance(fill, str) else fill[i])
            f = None if colour is None else (tint(colour, alpha) if over_white else rgb(colour, alpha))
            pts = [self._px(x, y) for x, y in poly]
            self._draw.polygon(pts, fill=f, outline=None if outline is None else rgb(outline), width=w)

    def frames(self, boxes: Iterable[tuple[float, float, float, float]], colour: str = "black",
               width: float = 0.8) -> None:
        """Outlines of (x0, y0, x1, y1) boxes."""
        w = self._w(width)
        for x0, y0, x1, y1 in boxes:
            (a, b), (c, d) = self._px(x0, y0), self._px(x1, y1)
            self._draw.rectangle((a, b, c, d), outline=rgb(colour), width=w)

    def rectangle(self, box: tuple[float, float, float, float], fill: str, alpha: float = 1.0) -> None:
        (a, b), (c, d) = self._px(box[0], box[1]), self._px(box[2], box[3])
        self._draw.rectangle((a, b, c, d), fill=rgb(fill, alpha))

    def markers(self, xs: Sequence[float], ys: Sequence[float], marker: str = "o", size: float = 4.0,
                colour: str = "black", filled: bool = True, width: float = 1.0, alpha: float = 1.0) -> None:
        """One marker per finite point: ``o`` circle, ``s`` square, ``^``/``v`` triangles, ``D`` diamond
        (filled or open), ``+`` and ``x``. ``size`` is the marker's size in points, as matplotlib's ``ms``."""
        r = size / 72.0 * self._k / 2.0
        c = rgb(colour, alpha)
        w = self._w(width)
        shape = _MARKERS.get(marker)
        for x, y in zip(xs, ys):
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            px, py = self._px(x, y)
            if marker == "o":
                box = (px - r, py - r, px + r, py + r)
                self._draw.ellipse(box, fill=c if filled else None, outline=c, width=w)
            elif marker in ("+", "x"):
                for (ax, ay), (bx, by) in _CROSSES[marker]:
                    self._draw.line((px + ax * r, py + ay * r, px + bx * r, py + by * r), fill=c, width=w)
            else:
                pts = [(px + dx * r, py + dy * r) for dx, dy in shape]
                self._draw.polygon(pts, fill=c if filled else None, outline=c, width=w)

    def arrows(self, x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray, colour: str,
               width: float = 1.0, head: float = 4.0) -> None:
        """Arrows from (x, y) to (x + dx, y + dy), inches; ``head`` is the head's length in points."""
        c = rgb(colour)
        w = self._w(width)
        h = head / 72.0 * self._k
        for x0, y0, ux, uy in zip(x, y, dx, dy):
            if not all(math.isfinite(v) for v in (x0, y0, ux, uy)):
                continue
            (a, b), (e, f) = self._px(x0, y0), self._px(x0 + ux, y0 + uy)
            length = math.hypot(e - a, f - b)
            if length < 1e-9:
                continue
            self._draw.line((a, b, e, f), fill=c, width=w)
            hl = min(h, length)
            ux_, uy_ = (e - a) / length, (f - b) / length
            bx, by = e - ux_ * hl, f - uy_ * hl
            self._draw.polygon([(e, f), (bx - uy_ * hl * 0.45, by + ux_ * hl * 0.45),
                                (bx + uy_ * hl * 0.45, by - ux_ * hl * 0.45)], fill=c)

    def image(self, pixels: np.ndarray, box: tuple[float, float, float, float], smooth: bool = False) -> None:
        """(h, w, 3) uint8 RGB (or (h, w) gray) resampled into the (x0, y0, x1, y1) box: nearest
        (a map's cells stay square blocks) or area/bilinear for a photograph."""
        a = np.asarray(pixels)
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        (x0, y0), (x1, y1) = self._px(box[0], box[1]), self._px(box[2], box[3])
        ix0, iy0, ix1, iy1 = round(x0), round(y0), round(x1), round(y1)
        if ix1 <= ix0 or iy1 <= iy0 or a.size == 0:
            return
        size = (ix1 - ix0, iy1 - iy0)
        if smooth:
            shrinking = size[0] < a.shape[1]
            out = cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        else:
            out = cv2.resize(np.ascontiguousarray(a), size, interpolation=cv2.INTER_NEAREST)
        self._img.paste(Image.fromarray(np.ascontiguousarray(out[..., :3])), (ix0, iy0))

    # ---- text (drawn last, at the final resolution)
    def text(self, x: float, y: float, s: str, size: float = 8.0, ha: str = "left", va: str = "baseline",
             colour: str = "black", rotation: int = 0, background: str | None = None, pad: float = 2.0) -> None:
        """Text at (x, y) inches; ``ha`` left/center/right, ``va`` top/center/bottom/baseline as in
        matplotlib; ``rotation`` 0 or 90 (reading upwards); multi-line with ``\\n``."""
        self._texts.append((x, y, s, size, ha, va, colour, rotation, background, pad))

    def _draw_text(self, draw: ImageDraw.ImageDraw, img: Image.Image, x: float, y: float, s: str, size: float,
                   ha: str, va: str, colour: str, rotation: int, background: str | None, pad: float) -> None:
        f = font(max(1, round(size / 72.0 * DPI)))
        lines = s.split("\n")
        step = f.size * LINE_SPACING
        block = step * (len(lines) - 1)
        if rotation == 90:
            self._draw_rotated(img, x, y, lines, f, step, ha, va, colour)
            return
        px, py = x * DPI, y * DPI
        top = {"top": py, "center": py - block / 2, "bottom": py - block, "baseline": py - block}[va]
        v = {"top": "a", "center": "m", "bottom": "d", "baseline": "s"}[va]
        h = {"left": "l", "center": "m", "right": "r"}[ha]
        if background is not None:
            boxes = [draw.textbbox((px, top + i * step), ln, font=f, anchor=h + v) for i, ln in enumerate(lines)]
            p = pad / 72.0 * DPI
            draw.rectangle((min(b[0] for b in boxes) - p, min(b[1] for b in boxes) - p,
                            max(b[2] for b in boxes) + p, max(b[3] for b in boxes) + p), fill=rgb(background, 0.85))
        ink = rgb(colour)[:3]
        for i, ln in enumerate(lines):
            mask, (dx, dy) = _text_mask(ln, f.size, h + v)
            if mask is not None:
                img.paste(ink, (round(px) + dx, round(top + i * step) + dy), mask)

    def _draw_rotated(self, img: Image.Image, x: float, y: float, lines: list[str], f, step: float, ha: str,
                      va: str, colour: str) -> None:
        """Text reading upwards: drawn on its own image, turned, pasted centred as ``ha``/``va`` say."""
        width = max(round(f.getlength(ln)) for ln in lines) + 2
        height = round(step * len(lines)) + 2
        label = Image.new("RGBA", (width, height), (255, 255, 255, 0))
        d = ImageDraw.Draw(label)
        for i, ln in enumerate(lines):
            d.text((width / 2, i * step), ln, font=f, fill=rgb(colour), anchor="ma")
        label = label.transpose(Image.Transpose.ROTATE_90)
        px, py = x * DPI, y * DPI
        left = {"left": px, "center": px - label.width / 2, "right": px - label.width}[ha]
        top = {"top": py, "center": py - label.height / 2, "bottom": py - label.height,
               "baseline": py - label.height}[va]
        img.paste(label, (round(left), round(top)), label)

    # ---- output
    def png(self) -> bytes:
        """The picture as PNG bytes (shapes downsampled, then the text drawn)."""
        small = cv2.resize(np.asarray(self._img), self.size, interpolation=cv2.INTER_AREA)
        img = Image.fromarray(small)
        draw = ImageDraw.Draw(img, "RGBA")
        for t in self._texts:
            self._draw_text(draw, img, *t)
        buf = io.BytesIO()
        img.save(buf, format="png", compress_level=PNG_COMPRESS_LEVEL)
        return buf.getvalue()


@lru_cache(maxsize=4096)
def _text_mask(line: str, size_px: int, anchor: str) -> tuple[Image.Image | None, tuple[int, int]]:
    """The coverage of one line of text, and its offset from the anchor point, rendered once: tick
    labels, region names and units repeat across every plot of a report."""
    f = font(size_px)
    x0, y0, x1, y1 = f.getbbox(line, anchor=anchor)
    if x1 <= x0 or y1 <= y0:
        return None, (0, 0)
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).text((-x0, -y0), line, font=f, fill=255, anchor=anchor)
    return mask, (x0, y0)


# Marker outlines, unit radius, y down.
_MARKERS = {
    "s": ((-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)),
    "^": ((0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)),
    "v": ((0.0, 1.0), (0.87, -0.5), (-0.87, -0.5)),
    "D": ((0.0, -1.0), (0.8, 0.0), (0.0, 1.0), (-0.8, 0.0)),
}
_CROSSES = {"+": (((-1, 0), (1, 0)), ((0, -1), (0, 1))),
            "x": (((-0.75, -0.75), (0.75, 0.75)), ((-0.75, 0.75), (0.75, -0.75)))}


def _runs(xs: Sequence[float], ys: Sequence[float]) -> list[list[Point]]:
    """Consecutive finite points, split at NaN."""
    runs: list[list[Point]] = [[]]
    for x, y in zip(xs, ys):
        if math.isfinite(x) and math.isfinite(y):
            runs[-1].append((float(x), float(y)))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if len(r) >= 2]


def _dashes(pts: list[tuple[float, float]], dash: tuple[float, float], px_per_pt: float
            ) -> list[list[tuple[float, float]]]:
    """A polyline cut into dashes of ``dash`` = (on, off) points."""
    on, off = dash[0] * px_per_pt, dash[1] * px_per_pt
    out: list[list[tuple[float, float]]] = []
    drawing, left = True, on
    cur: list[tuple[float, float]] = [pts[0]]
    for (ax, ay), (bx, by) in zip(pts, pts[1:]):
        seg = math.hypot(bx - ax, by - ay)
        t = 0.0
        while seg - t > left:
            t += left
            p = (ax + (bx - ax) * t / seg, ay + (by - ay) * t / seg)
            if drawing:
                cur.append(p)
                out.append(cur)
            cur = [p]
            drawing = not drawing
            left = on if drawing else off
        left -= seg - t
        if drawing:
            cur.append((bx, by))
    if drawing and len(cur) >= 2:
        out.append(cur)
    return out


#: Dash patterns (on, off) in points, as matplotlib's ``--`` and ``:`` at width 1.
DASHED = (3.7, 1.6)
DOTTED = (1.0, 1.65)

__all__ = ["Canvas", "colour_map", "colour_table", "font", "rgb", "DPI", "CYCLE", "DASHED", "DOTTED"]
