"""Strict readers of human landmark annotations (``.pts``, menpo ``.ljson``) and the box rule.

Why our own readers and not menpo's (``menpo.io.import_landmark_file``): menpo
is the well-kept reader of both formats, but it is a large dependency (its own
image, shape and transform classes, scipy, a compiled extension) for two small
text formats, and it is lenient where a benchmark must not be: its ``.pts``
reader takes the first two numbers of any line, ignores ``n_points`` and reads
past a missing ``}``; its LJSON reader turns ``null`` into NaN. Here every file
is checked against its format and a problem is one :class:`~clnfdiag.errors.InputError`
line naming the file and the line or key. The coordinate conventions are
menpo's own, read from its source (menpo 0.11.1, ``menpo/io/input/landmark.py``):

* ``.pts`` (version 1): ``x y`` per point, **1-based** (menpo subtracts 1);
* ``.ljson`` version 3: ``groups -> <name> -> landmarks -> points``, each point
  **0-based** ``[y, x]`` (menpo's image axis order). The 68-point group is the
  face; a 2-point group named ``pupils`` (lenna has one) gives the pupils.

Every annotation comes out 0-based ``(x, y)`` in image pixels, float64 (the
annotations' own precision), the layout of clnfdiag's landmarks.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

#: Annotation file suffixes this module reads.
ANNOTATION_SUFFIXES = (".pts", ".ljson")
#: Image suffixes looked for beside an annotation (same stem), in this order.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")
#: Points of the face annotations clnfdiag can judge (the iBUG 68-point markup, OpenFace's).
N_POINTS = 68
#: ``.pts`` coordinates start at 1 (menpo's and the iBUG convention): subtract this.
PTS_ORIGIN = 1.0


@dataclass(frozen=True)
class Annotation:
    """One annotated face.

    Attributes
    ----------
    points : (68, 2) float64
        0-based ``(x, y)`` pixels.
    path : Path
        The annotation file.
    pupils : (2, 2) float64 or None
        Annotated pupils ``(x, y)`` (image-left first), when the file has them.
    """

    points: np.ndarray
    path: Path
    pupils: np.ndarray | None = None


# --------------------------------------------------------------------------- .pts
def read_pts(path: str | Path) -> Annotation:
    """Read a version-1 ``.pts`` file strictly: header, ``{``, ``n_points`` lines ``x y``, ``}``.

    Comment-free header lines ``version: 1`` and ``n_points: N`` come first (in
    that order, as every iBUG file has them), then ``{`` alone on its line, exactly
    N lines of two finite numbers, ``}``, and nothing but blank lines after.
    """
    p = Path(path)
    lines = _text(p).splitlines()
    rows = [(i + 1, ln.strip()) for i, ln in enumerate(lines)]
    body = [r for r in rows if r[1]]
    if len(body) < 4:
        raise InputError("not a .pts file (expected 'version: 1', 'n_points: N', '{', points, '}')", p)
    (lv, version), (ln, count) = body[0], body[1]
    if version.replace(" ", "") != "version:1":
        raise InputError(f"line {lv}: expected 'version: 1', got {version[:40]!r}", p)
    key, _, value = count.partition(":")
    if key.strip() != "n_points" or not value.strip().isdigit():
        raise InputError(f"line {ln}: expected 'n_points: N', got {count[:40]!r}", p)
    n = int(value)
    if body[2][1] != "{":
        raise InputError(f"line {body[2][0]}: expected '{{', got {body[2][1][:40]!r}", p)
    points = body[3:3 + n]
    if len(points) < n or len(body) < 4 + n or body[3 + n][1] != "}":
        where = body[3 + n][0] if len(body) > 3 + n else len(lines)
        raise InputError(f"line {where}: expected {n} point lines then '}}' (n_points says {n})", p)
    if len(body) > 4 + n:
        raise InputError(f"line {body[4 + n][0]}: unexpected text after '}}'", p)
    xy = np.array([_pair(p, line_no, text) for line_no, text in points], dtype=np.float64).reshape(n, 2)
    return Annotation(_face(p, xy - PTS_ORIGIN), p)


def _pair(path: Path, line_no: int, text: str) -> tuple[float, float]:
    parts = text.split()
    if len(parts) != 2:
        raise InputError(f"line {line_no}: expected two numbers 'x y', got {text[:40]!r}", path)
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise InputError(f"line {line_no}: not a number in {text[:40]!r}", path) from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InputError(f"line {line_no}: NaN or infinite coordinate", path)
    return x, y


# --------------------------------------------------------------------------- .ljson
def read_ljson(path: str | Path) -> Annotation:
    """Read a menpo LJSON version-3 file strictly: its 68-point group, and ``pupils`` if present.

    Points are 0-based ``[y, x]``; a ``null`` (menpo's missing point) is an error,
    since a benchmark cannot score a point nobody placed. Versions 1 and 2
    (deprecated by menpo itself) are refused with a message saying so.
    """
    p = Path(path)
    try:
        doc = json.loads(_text(p))
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno}: {exc.msg})", p) from None
    if not isinstance(doc, dict) or doc.get("version") != 3:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise InputError(f"LJSON version {version!r}: only version 3 is read (menpo re-exports "
                         "older files as version 3)", p)
    groups = doc.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise InputError("'groups' must be a non-empty object", p)
    faces = {name: _ljson_points(p, name, g) for name, g in groups.items()}
    face = [name for name, pts in faces.items() if len(pts) == N_POINTS]
    if len(face) != 1:
        raise InputError(f"expected exactly one {N_POINTS}-point group, found "
                         f"{', '.join(f'{k} ({len(v)})' for k, v in faces.items())}", p)
    pupils = faces.get("pupils")
    if pupils is not None and len(pupils) != 2:
        raise InputError(f"groups.pupils: expected 2 points, got {len(pupils)}", p)
    if pupils is not None:
        pupils = pupils[np.argsort(pupils[:, 0], kind="stable")]  # image-left pupil first
    return Annotation(_face(p, faces[face[0]]), p, pupils)


def _ljson_points(path: Path, name: str, group) -> np.ndarray:
    """``(n, 2)`` float64 ``(x, y)`` of one LJSON group (stored ``[y, x]``)."""
    where = f"groups.{name}.landmarks.points"
    try:
        pts = group["landmarks"]["points"]
    except (KeyError, TypeError):
        raise InputError(f"{where} missing", path) from None
    if not isinstance(pts, list):
        raise InputError(f"{where} must be a list of [y, x] pairs", path)
    out = np.empty((len(pts), 2), np.float64)
    for i, pt in enumerate(pts):
        ok = (isinstance(pt, list) and len(pt) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt))
        if not ok or not all(math.isfinite(v) for v in pt):
            raise InputError(f"{where}[{i}]: expected a finite pair [y, x], got {str(pt)[:40]}", path)
        out[i] = (pt[1], pt[0])
    return out


# --------------------------------------------------------------------------- dispatch
def read_annotation(path: str | Path) -> Annotation:
    """Read a ``.pts`` or ``.ljson`` file (by suffix)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".pts":
        return read_pts(p)
    if suffix == ".ljson":
        return read_ljson(p)
    raise InputError(f"unknown annotation type {p.suffix!r} (expected {', '.join(ANNOTATION_SUFFIXES)})", p)


def image_beside(annotation_path: str | Path) -> Path:
    """The image with the annotation's stem in its folder (first of :data:`IMAGE_SUFFIXES`)."""
    p = Path(annotation_path)
    for suffix in IMAGE_SUFFIXES:
        for candidate in (p.with_suffix(suffix), p.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    raise InputError(f"no image beside the annotation (looked for {p.stem}"
                     f"{{{','.join(IMAGE_SUFFIXES)}}})", p)


def annotation_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """The fitting box of an annotation: the extent of its 68 points, to 0.1 px.

    OpenFace's box convention is the face from the left to the right outline
    and from the eyebrows to the chin (``PDM::CalcParams`` fits the mean
    shape's extent to it), which is exactly the extent of the 68 points.
    ``x, y`` are the smallest coordinates, ``w, h`` the spans, each rounded to
    0.1 px as a person would type the box (this gives the ``einstein_default``
    golden's box from its annotation, to the digit).

    Parameters
    ----------
    points : (68, 2) float64, 0-based ``(x, y)``

    Returns
    -------
    (x, y, w, h) floats
    """
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (round(float(lo[0]), 1), round(float(lo[1]), 1),
            round(float(hi[0] - lo[0]), 1), round(float(hi[1] - lo[1]), 1))


def _face(path: Path, xy: np.ndarray) -> np.ndarray:
    if xy.shape != (N_POINTS, 2):
        raise InputError(f"{len(xy)} points; only {N_POINTS}-point face annotations are judged", path)
    return xy


def _text(p: Path) -> str:
    if not p.is_file():
        raise InputError("annotation file not found", p)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("not a text file (not UTF-8)", p) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", p) from None


__all__ = ["Annotation", "read_pts", "read_ljson", "read_annotation", "image_beside", "annotation_box",
           "ANNOTATION_SUFFIXES", "IMAGE_SUFFIXES", "N_POINTS"]
