"""``clnfdiag fit IMAGE``: fit the 68 landmarks on one image and print them.

Registered on the root command in :mod:`clnfdiag.cli`. Bad input (unreadable
image, malformed / zero-size / NaN box or a box wholly outside the image, no
face found) is a :class:`~clnfdiag.errors.ClnfdiagError`: one stderr line,
exit 2. A box partly outside the image is accepted (areas of interest are
zero-padded, as in OpenFace).
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import cv2
import numpy as np

from .errors import InputError


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``"X,Y,W,H"`` -> 4 floats (NaN / size / position are checked by the fitter)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise InputError(f"--bbox must be X,Y,W,H (4 comma-separated numbers), got {text!r}")
    try:
        return tuple(float(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise InputError(f"--bbox must be X,Y,W,H (4 comma-separated numbers), got {text!r}") from None


def parse_windows(text: str) -> tuple[int, ...]:
    """``"11,9,7"`` -> (11, 9, 7)."""
    try:
        out = tuple(int(p.strip()) for p in text.split(","))
    except ValueError:
        raise InputError(f"--window-sizes must be comma-separated integers, got {text!r}") from None
    if not out:
        raise InputError("--window-sizes is empty")
    return out


def draw_overlay(image: np.ndarray, landmarks: np.ndarray, bbox) -> np.ndarray:
    """A BGR copy of ``image`` with the box (blue) and the landmarks (green) drawn."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img / 256.0).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    else:
        img = img.copy()
    x, y, w, h = bbox
    cv2.rectangle(img, (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h))),
                  (255, 0, 0), 1, cv2.LINE_AA)
    radius = max(1, int(round(min(img.shape[:2]) / 300)))
    for px, py in np.asarray(landmarks, np.float64):
        cv2.circle(img, (int(round(px)), int(round(py))), radius, (0, 255, 0), -1, cv2.LINE_AA)
    return img


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--bbox", default=None, metavar="X,Y,W,H",
              help="Face box in pixels. Without it OpenCV's Haar cascade finds the widest face "
                   "(not OpenFace's default MTCNN: give a box for comparisons that matter). "
                   "A box partly outside the image is accepted.")
@click.option("--preset", type=click.Choice(["default", "wild"]), default="default", show_default=True,
              help="OpenFace's parameter preset.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None,
              help="Model folder [default: $OPENFACE_MODELS_DIR, then $XDG_DATA_HOME/OpenFaceModels].")
@click.option("--trace-out", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write every stage as a clnfdiag-golden/1 case DIR/<case-id> "
                   "(usable as a golden or as a --candidate for compare).")
@click.option("--case-id", default=None, help="Case id for --trace-out [default: the image's stem].")
@click.option("--overlay", type=click.Path(path_type=Path), default=None, metavar="PNG",
              help="Write the image with the box and landmarks drawn.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: index,x,y per landmark; json: landmarks, parameters and result.")
@click.option("--no-hierarchical", is_flag=True,
              help="Turn off the hierarchical refinement with the part models (inner face, eyes), "
                   "which is ON by default as in OpenFace. The C++ goldens of golden/ were made "
                   "with it off.")
@click.option("--window-sizes", default=None, metavar="11,9,7",
              help="Response window per patch scale (0 skips a scale) [default: the preset's].")
@click.option("--sigma", type=float, default=None, help="KDE sigma [default: the preset's].")
@click.option("--reg", type=float, default=None, help="PDM regularisation [default: the preset's].")
@click.option("--weight-factor", type=float, default=None,
              help="NU-RLMS weight factor, 0 = plain RLMS [default: the preset's].")
@click.option("--iterations", type=int, default=None,
              help="Iterations per phase and pass [default: the preset's].")
@click.option("--no-refine-parameters", is_flag=True,
              help="Do not adapt sigma, reg and weight factor per patch scale.")
@click.option("--inject", "faults", multiple=True, metavar="FAULT",
              help="Inject a known fault (repeatable; see clnfdiag.faults).")
def fit(image: Path, bbox: str | None, preset: str, models_dir: Path | None, trace_out: Path | None,
        case_id: str | None, overlay: Path | None, fmt: str, no_hierarchical: bool,
        window_sizes: str | None, sigma: float | None, reg: float | None,
        weight_factor: float | None, iterations: int | None, no_refine_parameters: bool,
        faults: tuple[str, ...]) -> None:
    """Fit the 68 CLNF landmarks on IMAGE and print them (CSV index,x,y by default).

    Hierarchical refinement (part models) is on by default, as in OpenFace;
    --no-hierarchical turns it off. Exit 0 ok, 2 bad input (unreadable image,
    bad box, no face found).
    """
    from . import __version__
    from .fitter import Fitter, read_image
    from .golden import write_case
    from .parameters import preset as get_preset

    box = parse_bbox(bbox) if bbox is not None else None
    params = get_preset(preset).with_overrides(
        window_sizes=parse_windows(window_sizes) if window_sizes is not None else None,
        sigma=sigma, reg_factor=reg, weight_factor=weight_factor, n_iterations=iterations,
        refine_parameters=False if no_refine_parameters else None,
        refine_hierarchical=False if no_hierarchical else None)
    img = read_image(image)
    fitter = Fitter(models=models_dir)
    result = fitter.fit(img, bbox=box, parameters=params,
                        trace=trace_out is not None, faults=faults)

    if trace_out is not None:
        write_case(trace_out, case_id or image.stem, img, result.bbox, params.preset,
                   result.parameters.to_manifest(fitter.main.patch_scales),
                   result.stages, result.result_manifest(), f"clnfdiag {__version__}",
                   fitter.model.files, source=str(image),
                   model_root=str(fitter.model.model_dir))
    if overlay is not None:
        out = draw_overlay(img, result.landmarks, result.bbox)
        if not cv2.imwrite(str(overlay), out):
            raise InputError("cannot write the overlay image", overlay)

    if fmt == "json":
        click.echo(json.dumps({
            "landmarks": [[float(x), float(y)] for x, y in result.landmarks],
            "params_global": [float(v) for v in result.params_global],
            "params_local": [float(v) for v in result.params_local],
            "likelihood": float(result.likelihood),
            "success": bool(result.success),
            "bbox": [float(v) for v in result.bbox],
            "hierarchical_used": bool(result.hierarchical_used),
            "parameters": result.parameters.as_dict(),
        }, indent=1))
    else:
        lines = ["index,x,y"] + [f"{i},{float(x):.6f},{float(y):.6f}"
                                 for i, (x, y) in enumerate(result.landmarks)]
        click.echo("\n".join(lines))


__all__ = ["fit", "parse_bbox", "parse_windows", "draw_overlay"]
