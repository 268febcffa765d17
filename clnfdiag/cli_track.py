"""``clnfdiag track FRAMES``: OpenFace's video mode over a sequence of frames.

Registered on the root command in :mod:`clnfdiag.cli`. Bad input (a missing or
empty frames folder, an unreadable frame, a malformed / NaN box or one wholly
outside the first frame, an output that cannot be written) is a
:class:`~clnfdiag.errors.ClnfdiagError`: one stderr line, exit 2. Every frame is
read and every output checked before the first fit; outputs are built aside and
moved into place whole at the end (:mod:`clnfdiag.outputs`).
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import click
import cv2
import numpy as np

from .cli_fit import draw_overlay, parse_bbox
from .cli_support import MODELS_HELP
from .errors import EXIT_FIT_FAILED, InputError, OutputError, note_line, warning_line
from .models.locate import sha256_file
from .outputs import check_folder_target, is_empty_folder, staged_folder, write_file

#: File extensions taken from a frames folder (what cv2.imread reads), compared lower-case.
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
#: Name of frame ``i``'s case folder (``--trace-out``) and overlay (``--overlay``).
FRAME_NAME = "frame_{:03d}"
_OVERLAY_RE = re.compile(r"frame_\d+\.png")


def list_frames(args: tuple[Path, ...]) -> list[Path]:
    """FRAMES as files in order: one folder (its images, sorted by name) or image files as given."""
    if len(args) == 1 and args[0].is_dir():
        files = sorted(p for p in args[0].iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS)
        if not files:
            raise InputError(f"no frames in the folder (looked for {', '.join(FRAME_EXTENSIONS)})", args[0])
        return files
    for p in args:
        if p.is_dir():
            raise InputError("give one folder of frames, or image files (not a folder among files)", p)
        if not p.is_file():
            raise InputError("frame file not found", p)
    return list(args)


def read_frames(files: list[Path]) -> list[np.ndarray]:
    """Every frame in OpenFace's 8-bit gray (InputError naming the first unreadable one)."""
    from .fitter import read_image, to_gray
    return [to_gray(read_image(f), f) for f in files]


def is_track_folder(folder: Path) -> bool:
    """An empty folder or an earlier ``--trace-out`` sequence (replaceable whole)."""
    from .compare.sequence import TRACK_FILE, TRACK_FORMAT
    if is_empty_folder(folder):
        return True
    try:
        doc = json.loads((Path(folder) / TRACK_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == TRACK_FORMAT


def is_overlay_folder(folder: Path) -> bool:
    """An empty folder or one holding only earlier overlays ``frame_NNN.png`` (replaceable whole)."""
    return all(p.is_file() and _OVERLAY_RE.fullmatch(p.name) for p in Path(folder).iterdir())


@click.command()
@click.argument("frames", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--bbox", default=None, metavar="X,Y,W,H",
              help="Face box on the first frame (OpenFace's box overload of DetectLandmarksInVideo). "
                   "Without it the first frame goes through the face detector (OpenCV's Haar "
                   "cascade here, not OpenFace's MTCNN) and the multi-view fit, as FaceLandmarkVid.")
@click.option("--preset", type=click.Choice(["default", "wild"]), default="default", show_default=True,
              help="OpenFace's parameter preset (first-frame windows, sigma, reg, weight, iterations); "
                   "tracking windows are 0,9,7,0 in both.")
@click.option("--no-hierarchical", is_flag=True,
              help="Turn off the hierarchical refinement with the part models (on by default, as in "
                   "OpenFace).")
@click.option("--face-template", is_flag=True,
              help="Correct the translation by template matching before each tracking fit "
                   "(OpenFace's use_face_template; off by default, as in OpenFace).")
@click.option("--reinit-every", type=click.IntRange(min=0), default=None,
              help="Re-detect every N failed frames (OpenFace's reinit_video_every) [default: 2].")
@click.option("--no-redetect", is_flag=True,
              help="Never run a face detector after the first frame (a failed frame is recorded as "
                   "needing one, detector_needed, as with the C++ references' stub).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: frame,index,x,y per landmark; json: one JSON record per frame and line "
                   "(frame, landmarks, params_global, params_local, likelihood, success, windows, "
                   "detector_needed, ...).")
@click.option("--trace-out", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write the sequence: DIR/track.json (every frame's record, a traced sequence that "
                   "clnfdiag compare accepts) and per frame a clnfdiag-golden/1 case DIR/frame_NNN "
                   "with every stage of that frame's fit. An earlier trace there is replaced whole.")
@click.option("--overlay", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write each frame with its landmarks drawn as DIR/frame_NNN.png (replaced whole).")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None, help=MODELS_HELP)
def track(frames: tuple[Path, ...], bbox: str | None, preset: str, no_hierarchical: bool,
          face_template: bool, reinit_every: int | None, no_redetect: bool, fmt: str,
          trace_out: Path | None, overlay: Path | None, models_dir: Path | None) -> None:
    """Track the 68 landmarks over FRAMES (a folder of images, or image files in order) as
    OpenFace's DetectLandmarksInVideo does: the previous frame's parameters start each fit,
    windows 0,9,7,0 after a success, re-detection after failures.

    Exit 0 ok; 2 bad input (missing or unreadable frame, bad box, unusable output); 3 no frame
    succeeded (a line on stderr says so; one line also lists failed frames when only some did).
    """
    from .detector import detect_face
    from .fitter import Fitter, check_bbox
    from .tracking import REINIT_VIDEO_EVERY, Tracker, TrackingParameters

    files = list_frames(frames)
    if trace_out is not None:
        check_folder_target(trace_out, "--trace-out", is_track_folder, "a clnfdiag track trace")
    if overlay is not None:
        check_folder_target(overlay, "--overlay", is_overlay_folder, "clnfdiag track overlays")
    box = parse_bbox(bbox) if bbox is not None else None
    grays = read_frames(files)
    if box is not None:
        box = check_bbox(box, grays[0].shape[1], grays[0].shape[0], files[0])
    params = TrackingParameters.from_preset(
        preset, hierarchical=False if no_hierarchical else None, use_face_template=face_template,
        reinit_video_every=REINIT_VIDEO_EVERY if reinit_every is None else reinit_every)
    first_detect = [box is None]

    def detector(gray):
        if no_redetect and not first_detect[0]:
            return None
        first_detect[0] = False
        found = detect_face(gray)
        return found

    fitter = Fitter(models=models_dir)
    tracker = Tracker(fitter, params, detector=detector)
    records = []
    for i, gray in enumerate(grays):
        rec = tracker.step(gray, bbox=box if i == 0 else None, trace=trace_out is not None)
        records.append(rec)
        if box is None and i == 0:
            click.echo(note_line(
                f"{files[0]}: no --bbox, so OpenCV's Haar cascade was run on the first frame: "
                + ("no face found" if rec.detector_box is None else
                   "--bbox " + ",".join(f"{v:.1f}" for v in rec.detector_box))), err=True)
    if trace_out is not None:
        _write_trace(trace_out, files, records, params, fitter, box)
    if overlay is not None:
        _write_overlays(overlay, files, records)
    click.echo(records_text(records, fmt))
    failed = [r.frame for r in records if not r.detection_success]
    if failed:
        click.echo(warning_line(f"{len(failed)} of {len(records)} frames failed (OpenFace's success flag "
                                f"false): frames {','.join(map(str, failed[:20]))}"
                                + ("..." if len(failed) > 20 else "")), err=True)
    if len(failed) == len(records):
        raise click.exceptions.Exit(EXIT_FIT_FAILED)


def records_text(records: list, fmt: str) -> str:
    """What ``track`` prints: CSV ``frame,index,x,y`` rows, or one JSON record per frame and line."""
    if fmt == "json":
        return "\n".join(json.dumps(r.as_json()) for r in records)
    lines = ["frame,index,x,y"]
    for r in records:
        lines.extend(f"{r.frame},{i},{float(x):.6f},{float(y):.6f}" for i, (x, y) in enumerate(r.landmarks))
    return "\n".join(lines)


def _write_trace(target: Path, files: list[Path], records: list, params, fitter, box) -> None:
    """DIR/track.json and a case folder per frame, built aside and moved into place whole."""
    from . import __version__
    from .compare.sequence import TRACK_FILE, TRACK_FORMAT
    from .golden import write_case

    pdm = fitter.main.pdm
    frames = []
    with staged_folder(target, "--trace-out", is_track_folder, "a clnfdiag track trace") as build:
        for f, rec in zip(files, records):
            name = FRAME_NAME.format(rec.frame)
            entry = rec.as_json()
            entry["image"] = str(f.resolve())
            entry["image_sha256"] = sha256_file(f)
            if rec.stages:
                start = rec.stages.get("init/params_global")
                frame_box = (box if rec.frame == 0 and box is not None else
                             tuple(float(v) for v in pdm.calc_bounding_box(start, rec.stages.get(
                                 "init/params_local"))))
                fit_params = replace(params.fit, window_sizes=tuple(rec.windows or params.fit.window_sizes))
                write_case(build, name, f, frame_box, params.fit.preset,
                           fit_params.to_manifest(fitter.main.patch_scales), rec.stages,
                           {"success": bool(rec.detection_success), "likelihood": float(rec.likelihood),
                            "phases": []},
                           f"clnfdiag {__version__} track", fitter.model.files, source=str(f),
                           model_root=str(fitter.model.model_dir), finite=False, option="--trace-out")
                entry["case"] = name
            frames.append(entry)
        doc = {"format": TRACK_FORMAT, "producer": f"clnfdiag {__version__} track",
               "preset": params.fit.preset, "init": "box" if box is not None else "detector",
               "initial_box_xywh": None if box is None else [float(v) for v in box],
               "parameters": params.to_manifest(), "n_frames": len(records),
               "n_success": sum(r.detection_success for r in records), "frames": frames}
        (build / TRACK_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _write_overlays(target: Path, files: list[Path], records: list) -> None:
    """DIR/frame_NNN.png per frame, the folder built aside and moved into place whole."""
    from .fitter import read_image

    with staged_folder(target, "--overlay", is_overlay_folder, "clnfdiag track overlays") as build:
        for f, rec in zip(files, records):
            img = read_image(f)
            x, y = rec.landmarks[:, 0], rec.landmarks[:, 1]
            box = (float(x.min()), float(y.min()), float(x.max() - x.min()), float(y.max() - y.min()))
            ok, buf = cv2.imencode(".png", draw_overlay(img, rec.landmarks, box))
            if not ok:
                raise OutputError("--overlay: OpenCV could not encode the image", target)
            write_file(build / (FRAME_NAME.format(rec.frame) + ".png"), buf.tobytes(), "--overlay")


__all__ = ["track", "list_frames", "read_frames", "records_text", "is_track_folder", "is_overlay_folder"]
