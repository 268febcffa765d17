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
        Stage kind it corrupts first (golden vocabulary, without ``passN/``).
    reaches_landmarks : bool
        Whether the corruption is expected to move the final landmarks.
    description : str
        What a port does wrong.
    """

    name: str
    stage: str
    reaches_landmarks: bool
    description: str


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("normalize-response", "response", False,
          "divide every post-shift response map by its own maximum (the seed bug): every "
          "landmark gets peak 1.0; the mean-shift is a weighted centroid, so landmarks do not move"),
    Fault("skip-sigma", "response_sigma", True,
          "leave out the CCNF edge potentials: use the raw response instead of Sigma @ raw"),
    Fault("transpose-sigma", "response_sigma", True,
          "vectorise the raw map column-major before Sigma and read the result back row-major: "
          "the post-Sigma map comes out transposed"),
    Fault("clip-instead-of-shift", "response", True,
          "clip negative post-Sigma values to 0 instead of shifting the map up by its minimum"),
    Fault("no-kde-grid", "mean_shifts_ref", True,
          "exact Gaussian kernel at the landmark offset instead of OpenFace's 0.1-pixel table"),
    Fault("float64", "response_raw", True,
          "compute the patch responses in float64 instead of OpenFace's float32"),
    Fault("no-regularisation", "param_update", True,
          "solve the non-rigid update without the PDM eigenvalue prior"),
    Fault("sigmoid-no-double-alpha", "response_raw", True,
          "neuron output alpha·sigmoid instead of 2·alpha·sigmoid"),
    Fault("wrong-view", "response_raw", True,
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
