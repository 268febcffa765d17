"""Fitting parameters: OpenFace's presets, the per-part settings, and manifest round-trips.

Values follow OpenFace's ``FaceModelParameters``: the ``default`` preset is
its ``init()``, ``wild`` is what its ``-wild`` flag sets. Part models get the
settings OpenFace assigns by part name when it reads ``LandmarkDetector_part``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class FitParameters:
    """Everything that steers one CLNF fit.

    Attributes
    ----------
    window_sizes : tuple[int, ...]
        Response window per patch scale (0 skips a scale). OpenFace keeps 4
        entries for 3 scales; only as many as there are scales are used.
    sigma, reg_factor, weight_factor : float
        KDE sigma, PDM regularisation, NU-RLMS weight (0: plain RLMS).
    n_iterations : int
        Iterations per phase (rigid, then non-rigid) and pass.
    refine_parameters : bool
        Adapt sigma, reg and weight per patch scale.
    refine_hierarchical : bool
        Run the part models (inner face, eyes) after the main fit.
    limit_pose : bool
        Clamp the rotation as OpenFace does.
    multi_view : bool
        Fit from each of OpenFace's initial rotations (:data:`clnfdiag.fitter.ROTATION_HYPOTHESES`)
        and keep the one with the highest model likelihood, as OpenFace's
        ``DetectLandmarksInImage`` does with ``multi_view`` (set by its ``-wild`` flag). Recorded
        in the manifest; ``from_manifest`` reads it (False when absent), so a golden made
        with one hypothesis is always replayed with one.
    """

    window_sizes: tuple[int, ...] = (11, 9, 7, 5)
    sigma: float = 1.5
    reg_factor: float = 25.0
    weight_factor: float = 0.0
    n_iterations: int = 5
    refine_parameters: bool = True
    refine_hierarchical: bool = True
    limit_pose: bool = True
    multi_view: bool = False
    preset: str = "default"

    def with_overrides(self, **kw: Any) -> "FitParameters":
        """A copy with the non-None keyword values replaced (validated)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        if "window_sizes" in kw:
            kw["window_sizes"] = tuple(int(w) for w in kw["window_sizes"])
        out = replace(self, **kw)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise :class:`InputError` for values OpenFace could not run with."""
        if not self.window_sizes or any(w < 0 or (w and w % 2 == 0) for w in self.window_sizes):
            raise InputError(f"window sizes must be odd positive integers (or 0 to skip a "
                             f"scale), got {list(self.window_sizes)}")
        if not all(w == 0 or w >= 3 for w in self.window_sizes):
            raise InputError(f"window sizes must be at least 3, got {list(self.window_sizes)}")
        if not self.sigma > 0:
            raise InputError(f"sigma must be positive, got {self.sigma}")
        if self.reg_factor < 0 or self.weight_factor < 0:
            raise InputError("reg_factor and weight_factor must not be negative")
        if self.n_iterations < 1:
            raise InputError(f"iterations must be at least 1, got {self.n_iterations}")

    def to_manifest(self, patch_scales: list[float]) -> dict[str, Any]:
        """The ``parameters`` block of a golden manifest."""
        return {
            "window_sizes_init": list(self.window_sizes),
            "sigma": self.sigma,
            "reg_factor": self.reg_factor,
            "weight_factor": self.weight_factor,
            "num_optimisation_iteration": self.n_iterations,
            "refine_parameters": self.refine_parameters,
            "refine_hierarchical": self.refine_hierarchical,
            "multi_view": self.multi_view,
            "validate_detections": False,
            "limit_pose": self.limit_pose,
            "landmark_detector": "CLNF",
            "patch_scales": list(patch_scales),
        }

    @classmethod
    def from_manifest(cls, params: dict[str, Any], preset: str = "default") -> "FitParameters":
        """Parameters exactly as a golden manifest states them (never the command's defaults)."""
        try:
            out = cls(
                window_sizes=tuple(int(w) for w in params["window_sizes_init"]),
                sigma=float(params["sigma"]),
                reg_factor=float(params["reg_factor"]),
                weight_factor=float(params["weight_factor"]),
                n_iterations=int(params["num_optimisation_iteration"]),
                refine_parameters=bool(params["refine_parameters"]),
                refine_hierarchical=bool(params.get("refine_hierarchical", False)),
                limit_pose=bool(params.get("limit_pose", True)),
                multi_view=bool(params.get("multi_view", False)),
                preset=preset,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"manifest parameters incomplete or malformed: {exc}") from None
        out.validate()
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: OpenFace's ``-wild`` values: windows, sigma, regularisation, weight factor, iterations.
_WILD = dict(window_sizes=(15, 13, 11, 11), sigma=1.25, reg_factor=35.0, weight_factor=2.5,
             n_iterations=10)

#: OpenFace's presets for a single image. ``wild`` is everything ``-wild`` sets, multi-view
#: hypotheses included; ``wild-single`` is the same fit from the one frontal start (how the
#: committed ``*_wild`` goldens were made: their manifests say ``multi_view: false``).
PRESETS: dict[str, FitParameters] = {
    "default": FitParameters(),
    "wild": FitParameters(**_WILD, multi_view=True, preset="wild"),
    "wild-single": FitParameters(**_WILD, multi_view=False, preset="wild-single"),
}


def preset(name: str) -> FitParameters:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None


def part_parameters(part_name: str) -> FitParameters:
    """Settings OpenFace gives a part model, by the part's name in the main config.

    Parts never refine parameters or run their own hierarchy. Names OpenFace
    does not special-case keep its defaults (scaled as for its CE-CLM default).
    """
    base = FitParameters(refine_parameters=False, refine_hierarchical=False, preset=f"part:{part_name}",
                         # OpenFace constructs part parameters with its CE-CLM default
                         # model location, which scales sigma and reg before the overrides.
                         sigma=float(np.float32(1.5) * np.float32(1.5)),
                         reg_factor=float(np.float32(0.9) * np.float32(25.0)))
    table: dict[str, dict[str, Any]] = {
        "left_eye": dict(window_sizes=(5, 3), reg_factor=0.1, sigma=2.0),
        "right_eye": dict(window_sizes=(5, 3), reg_factor=0.1, sigma=2.0),
        "left_eye_28": dict(window_sizes=(3, 5, 9), reg_factor=0.5, sigma=1.0),
        "right_eye_28": dict(window_sizes=(3, 5, 9), reg_factor=0.5, sigma=1.0),
        "mouth": dict(window_sizes=(7, 7), reg_factor=1.0, sigma=2.0),
        "brow": dict(window_sizes=(11, 9), reg_factor=10.0, sigma=3.5),
        "inner": dict(window_sizes=(9,), reg_factor=2.5, sigma=1.75, weight_factor=2.5),
    }
    return replace(base, **table.get(part_name, {}))

