"""``clnfdiag fit IMAGE``: fit the 68 landmarks on one image and print them.

Registered on the root command in :mod:`clnfdiag.cli`. Bad input (unreadable
image, malformed / zero-size / NaN box or a box wholly outside the image, no
face found, an output that cannot be written) is a
:class:`~clnfdiag.errors.ClnfdiagError`: one stderr line, exit 2; outputs are
checked before the fit. A box partly outside the image is accepted (areas of
interest are zero-padded, as in OpenFace). A fit OpenFace itself calls failed
(``success`` false) prints its landmarks, one stderr line, and exits 3.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import cv2
import numpy as np

from .cli_support import MODELS_HELP
from .parameters import PRESETS
from .detector import detect_faces
from .errors import EXIT_FIT_FAILED, InputError, OutputError, note_line, warning_line
from .faults import FAULTS, parse_faults
from .golden import FORMAT, is_case_folder, is_plain_case_id
from .outputs import check_container, check_file_target, check_folder_target, write_file


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


def check_overlay_target(overlay: Path) -> Path:
    """Fail now (OutputError) if the overlay cannot be written: folder, device, or an extension
    OpenCV has no image writer for (OpenCV picks the format from it)."""
    check_file_target(overlay, "--overlay")
    if not overlay.suffix or not cv2.haveImageWriter(str(overlay)):
        raise OutputError(f"--overlay: OpenCV cannot write an image named like this (extension "
                          f"{overlay.suffix or 'missing'!r}); use .png", overlay)
    return overlay


def write_overlay(overlay: Path, image: np.ndarray) -> None:
    """Encode ``image`` in the overlay's format and write it whole."""
    ok, buf = cv2.imencode(overlay.suffix, image)
    if not ok:
        raise OutputError("--overlay: OpenCV could not encode the image", overlay)
    write_file(overlay, buf.tobytes(), "--overlay")


def check_trace_target(trace_out: Path, case_id: str) -> None:
    """Fail now (before the fit) if ``--trace-out DIR`` cannot receive ``DIR/<case_id>``."""
    if not is_plain_case_id(case_id):
        raise InputError(f"--case-id must be a plain folder name, got {case_id!r}")
    check_container(trace_out, "--trace-out")
    if trace_out.is_dir():
        check_folder_target(trace_out / case_id, "--trace-out", is_case_folder, f"a {FORMAT} case")


def detected_box(gray: np.ndarray, image: Path) -> tuple[float, float, float, float]:
    """The box OpenFace's Haar path would fit (the widest face), said on stderr with the face count."""
    faces = detect_faces(gray)
    if not faces:
        raise InputError("no face found (give a box with --bbox)", image)
    box = faces[0]
    click.echo(note_line(
        f"{image}: no --bbox, so OpenCV's Haar cascade was used; it found {len(faces)} face(s), "
        f"fitting the widest: --bbox {','.join(f'{v:.1f}' for v in box)} (OpenFace's default "
        "detector, MTCNN, may choose another face: give --bbox when it matters)"), err=True)
    return box


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--bbox", default=None, metavar="X,Y,W,H",
              help="Face box in pixels. Without it OpenCV's Haar cascade finds the widest face and "
                   "the detection is described on stderr (not OpenFace's default MTCNN: give a box "
                   "for comparisons that matter). A box partly outside the image is accepted.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="default",
              show_default=True,
              help="OpenFace's parameter preset. wild is all that OpenFace's -wild sets, multi-view "
                   "hypotheses included (11 initial rotations, the likeliest fit kept); wild-single "
                   "is the same fit from the frontal start only (how the committed *_wild goldens "
                   "were made).")
@click.option("--multi-view", "multi_view", flag_value=True, default=None,
              help="Try OpenFace's 11 initial rotations and keep the likeliest fit (OpenFace's "
                   "-multi_view 1) [default: the preset's: on for wild only].")
@click.option("--single-view", "multi_view", flag_value=False,
              help="Fit from the frontal start only [default: the preset's].")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None, help=MODELS_HELP)
@click.option("--trace-out", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write every stage as a clnfdiag-golden/1 case DIR/<case-id> (usable as a golden, "
                   "or as a --candidate for compare, which matches it to a golden case by that id: "
                   "give --case-id). An earlier case folder of that id is replaced whole.")
@click.option("--case-id", default=None,
              help="Case id (and folder name) for --trace-out; set it to the golden case's id to "
                   "compare with --candidate [default: the image's file stem, e.g. 'image' for a "
                   "golden's image.png].")
@click.option("--overlay", type=click.Path(path_type=Path), default=None, metavar="PNG",
              help="Write the image with the box and landmarks drawn (format from the extension: "
                   ".png, .jpg ...).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: index,x,y per landmark; json: landmarks, parameters and result.")
@click.option("--no-hierarchical", is_flag=True,
              help="Turn off the hierarchical refinement with the part models (inner face, eyes), "
                   "which is ON by default as in OpenFace. Each golden case records whether it "
                   "was made with it (parameters.refine_hierarchical; in golden/ only "
                   "astronaut_default_h was).")
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
              help=f"Inject a known fault into the fit (repeatable): {', '.join(FAULTS)}.")
def fit(image: Path, bbox: str | None, preset: str, models_dir: Path | None, trace_out: Path | None,
        case_id: str | None, overlay: Path | None, fmt: str, no_hierarchical: bool,
        window_sizes: str | None, sigma: float | None, reg: float | None,
        weight_factor: float | None, iterations: int | None, no_refine_parameters: bool,
        faults: tuple[str, ...], multi_view: bool | None = None) -> None:
    """Fit the 68 CLNF landmarks on IMAGE and print them (CSV index,x,y by default).

    Hierarchical refinement (part models) is on by default, as in OpenFace;
    --no-hierarchical turns it off. Outputs (--trace-out, --overlay) are
    checked before the fit and written whole. Exit 0 ok; 2 bad input
    (unreadable image, bad box, no face found, unusable output); 3 the fit
    failed (OpenFace's success flag is false, e.g. a box far too small): the
    landmarks are still printed and a line on stderr says so.
    """
    from . import __version__
    from .fitter import Fitter, read_image, to_gray
    from .golden import write_case
    from .parameters import preset as get_preset

    case = case_id or image.stem
    if trace_out is not None:
        check_trace_target(trace_out, case)
        if case_id is None:  # every golden's picture is image.png: say how to name the trace
            click.echo(note_line(f"--trace-out without --case-id: the case is named {case!r} after the "
                                 "image file; compare --candidate matches traces to golden cases by id, "
                                 "so give --case-id <golden case id> to compare it"), err=True)
    if overlay is not None:
        check_overlay_target(overlay)
    box = parse_bbox(bbox) if bbox is not None else None
    parse_faults(list(faults))
    params = get_preset(preset).with_overrides(
        window_sizes=parse_windows(window_sizes) if window_sizes is not None else None,
        sigma=sigma, reg_factor=reg, weight_factor=weight_factor, n_iterations=iterations,
        refine_parameters=False if no_refine_parameters else None,
        refine_hierarchical=False if no_hierarchical else None, multi_view=multi_view)
    img = read_image(image)
    if box is None:
        box = detected_box(to_gray(img, image), image)
    fitter = Fitter(models=models_dir)
    result = fitter.fit(img, bbox=box, parameters=params,
                        trace=trace_out is not None, faults=faults)

    if trace_out is not None:
        write_case(trace_out, case, img, result.bbox, params.preset,
                   result.parameters.to_manifest(fitter.main.patch_scales),
                   result.stages, result.result_manifest(), f"clnfdiag {__version__}",
                   fitter.model.files, source=str(image),
                   model_root=str(fitter.model.model_dir), option="--trace-out")
    if overlay is not None:
        write_overlay(overlay, draw_overlay(img, result.landmarks, result.bbox))
    click.echo(landmarks_text(result, fmt))
    if not result.success:
        click.echo(warning_line(
            f"{image}: the fit failed (OpenFace's success flag is false, likelihood "
            f"{float(result.likelihood):.3g}): the landmarks above do not locate a face; exit "
            f"{EXIT_FIT_FAILED}"), err=True)
        raise click.exceptions.Exit(EXIT_FIT_FAILED)


def landmarks_text(result, fmt: str) -> str:
    """What ``fit`` prints: CSV ``index,x,y`` rows, or the JSON summary of the result."""
    if fmt == "json":
        return json.dumps({
            "landmarks": [[float(x), float(y)] for x, y in result.landmarks],
            "params_global": [float(v) for v in result.params_global],
            "params_local": [float(v) for v in result.params_local],
            "likelihood": float(result.likelihood),
            "success": bool(result.success),
            "bbox": [float(v) for v in result.bbox],
            "hierarchical_used": bool(result.hierarchical_used),
            "hypothesis": result.hypothesis,  # multi-view: index of the rotation kept (None: one start)
            "parameters": result.parameters.as_dict(),
        }, indent=1)
    lines = ["index,x,y"] + [f"{i},{float(x):.6f},{float(y):.6f}" for i, (x, y) in enumerate(result.landmarks)]
    return "\n".join(lines)


__all__ = ["fit", "parse_bbox", "parse_windows", "draw_overlay", "landmarks_text", "check_overlay_target",
           "check_trace_target", "detected_box"]
