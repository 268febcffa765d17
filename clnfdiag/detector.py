"""Face box for images given without one: OpenCV's Haar cascade, corrected as OpenFace corrects it.

OpenFace's default detector for images is MTCNN (whose weights are not among
the model files here); its Haar path uses ``haarcascade_frontalface_alt.xml``,
which ships inside opencv-python. The raw Haar box covers the forehead, so
OpenFace shrinks and lowers it to run from the brows to the chin; we apply the
same correction. Results therefore differ from OpenFace's default detector:
pass ``--bbox`` for a comparison that matters.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

CASCADE = "haarcascade_frontalface_alt.xml"


@lru_cache(maxsize=1)
def _classifier() -> cv2.CascadeClassifier:
    path = Path(cv2.data.haarcascades) / CASCADE
    clf = cv2.CascadeClassifier(str(path))
    if clf.empty():
        raise InputError("cannot load OpenCV's Haar cascade", path)
    return clf


def correct_haar_box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """OpenFace's correction of a raw Haar detection (float32 arithmetic, as its ``Rect_<float>``)."""
    f = np.float32
    return (float(f(x) + f(0.0578) * f(w)), float(f(y) + f(h) * f(0.2166)),
            float(f(w) * f(0.8924)), float(f(h) * f(0.8676)))


def detect_faces(gray: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Every face's corrected box ``(x, y, w, h)``, the one OpenFace keeps first.

    OpenFace keeps the widest detection (the first one on ties); the others
    follow in the same order, so callers can say how many faces were found.

    Parameters
    ----------
    gray : (H, W) uint8
    """
    faces = _classifier().detectMultiScale(gray, scaleFactor=1.2, minNeighbors=2, flags=0,
                                           minSize=(50, 50))
    order = sorted(range(len(faces)), key=lambda i: (-faces[i][2], i))
    return [correct_haar_box(*(float(v) for v in faces[i])) for i in order]


def detect_face(gray: np.ndarray) -> tuple[float, float, float, float] | None:
    """The widest face's corrected box ``(x, y, w, h)``, or None when no face is found.

    Parameters
    ----------
    gray : (H, W) uint8
    """
    faces = detect_faces(gray)
    return faces[0] if faces else None
