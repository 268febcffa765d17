"""The library of known port faults, injected with ``--inject FAULT``.

Each fault is a real way a CLNF port has drifted (or could drift) from
OpenFace. The code that a fault corrupts checks for it where the fault would
live (``if "skip-sigma" in faults``), so the library stays next to the real
code; this module only names and documents them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class Fault:
    """A named, documented deviation from OpenFace.

    Attributes
    ----------
    name : str
        The ``--inject`` value.
    stage : str
        Stage kind it corrupts first in isolated mode (golden vocabulary, the
        last part of the key).
    reaches_landmarks : bool or None
        Whether the corruption moves the final landmarks beyond tolerance (the
        case's C++ noise floor when larger); None where that depends on the case.
    reaches_mean_shifts : bool
        Whether it changes the image-frame mean-shifts beyond their tolerance.
    description : str
        What a port does wrong.
    """

    name: str
    stage: str
    reaches_landmarks: bool | None
    description: str
    reaches_mean_shifts: bool = True


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("normalize-response", "response", False,
          "divide every post-shift response map by its own maximum (the seed bug): every "
          "landmark gets peak 1.0; the mean-shift is a weighted centroid, so landmarks do not move",
          reaches_mean_shifts=False),
    Fault("skip-sigma", "response_sigma", True,
          "leave out the CCNF edge potentials: use the raw response instead of Sigma @ raw"),
    Fault("transpose-sigma", "response_sigma", True,
          "vectorise the raw map column-major before Sigma and read the result back row-major: "
          "the post-Sigma map comes out transposed"),
    Fault("clip-instead-of-shift", "response", True,
          "clip negative post-Sigma values to 0 instead of shifting the map up by its minimum"),
    Fault("no-kde-grid", "mean_shifts_ref", None,
          "exact Gaussian kernel at the landmark offset instead of OpenFace's 0.1-pixel table"),
    Fault("float64", "mean_shifts_ref", None,
          "compute in float64 where OpenFace uses float (patch responses, KDE mean-shift, the "
          "NU-RLMS solve): a difference of float32 rounding (~1e-5 px in the mean-shift), caught "
          "at the first stage clnfdiag reproduces bit for bit; whether it then moves the "
          "landmarks depends on how chaotic the fit is (0.1 px on einstein_default, nothing on "
          "most cases)", reaches_mean_shifts=False),
    Fault("no-regularisation", "param_update", None,
          "solve the non-rigid update without the PDM eigenvalue prior: moves the landmarks by "
          "0.02-0.9 px, less than the C++ noise floor on the poorly constrained multi4_wild"),
    Fault("sigmoid-no-double-alpha", "response_raw", False,
          "neuron output alpha·sigmoid instead of 2·alpha·sigmoid: every map is halved, which "
          "the weighted-centroid mean-shift cannot see", reaches_mean_shifts=False),
    Fault("wrong-view", "view_id", True,
          "use the patch experts of the next view instead of the closest one"),
    Fault("nearest-warp", "area_of_interest", True,
          "warp the area of interest with nearest-neighbour instead of bilinear interpolation"),
]}


def parse_faults(names: list[str] | tuple[str, ...] | None) -> frozenset[str]:
    """Validate ``--inject`` values; unknown names are an :class:`InputError`."""
    out = set()
    for n in names or ():
        if n not in FAULTS:
            raise InputError(f"unknown fault {n!r}; known faults: {', '.join(FAULTS)}")
        out.add(n)
    return frozenset(out)


NO_FAULTS: frozenset[str] = frozenset()
