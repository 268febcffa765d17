"""``clnfdiag accuracy``: landmark error against human annotations (wiring only).

The work is in :mod:`clnfdiag.benchmark` (fits and rows), :mod:`clnfdiag.accuracy`
(NME arithmetic) and :mod:`clnfdiag.report.accuracy` (tables, plots, page).
"""
from __future__ import annotations

from pathlib import Path

import click

from .accuracy import FAILURE_THRESHOLD
from .cli_support import MODELS_HELP
from .errors import InputError
from .parameters import PRESETS

#: Presets fitted when none is given: OpenFace's default, -wild from one start, -wild as OpenFace runs it.
DEFAULT_PRESETS = ("default", "wild-single", "wild")
#: Name of the report's page and files.
REPORT_FILES = ("index.html", "accuracy.csv", "accuracy.json")


def _is_accuracy_report(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return not names or (names <= {*REPORT_FILES, "ced.png"} | {n for n in names if n.startswith("face_")}
                         and "index.html" in names)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--preset", "presets", multiple=True, type=click.Choice(list(PRESETS)),
              help="Preset to fit with (repeatable) [default: default, wild-single, wild].")
@click.option("--box", "boxes", multiple=True, type=click.Choice(["annotation", "detector"]),
              help="Where the fitting box comes from (repeatable) [default: both]: the extent of the "
                   "68 annotated points to 0.1 px, or the Haar detector's widest face.")
@click.option("--golden", "goldens", multiple=True, type=click.Path(path_type=Path),
              help="Golden cases (folders, repeatable): the C++ landmarks of every case made on the "
                   "same picture are scored beside clnfdiag's.")
@click.option("--candidate", "candidates", multiple=True, type=click.Path(path_type=Path),
              help="Candidate traces (golden-format cases, repeatable), scored like goldens.")
@click.option("--port", default=None, metavar="NAME|MODULE:OBJECT",
              help="Also fit with a port adapter (as compare --port), from the same boxes.")
@click.option("--no-hierarchical", is_flag=True, help="Fit without the part models.")
@click.option("--threshold", type=float, default=FAILURE_THRESHOLD, show_default=True,
              help="Failure when the 68-point inter-ocular NME exceeds this.")
@click.option("--csv", "csv_out", type=click.Path(path_type=Path), default=None, help="Write the table as CSV.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the table and summary as JSON ('-': stdout).")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Write index.html (CED plot, table, annotated points beside the fits) and the tables.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None, help=MODELS_HELP)
def accuracy(paths: tuple[Path, ...], presets: tuple[str, ...], boxes: tuple[str, ...],
             goldens: tuple[Path, ...], candidates: tuple[Path, ...], port: str | None,
             no_hierarchical: bool, threshold: float, csv_out: Path | None, json_out: Path | None,
             report_dir: Path | None, models_dir: Path | None) -> None:
    """Score fits against the 68-point annotations (.pts, .ljson) in PATHS (files or folders).

    Each annotation's image is the file with its stem beside it. Per face and
    configuration: NME over 68 and 49 points, inter-ocular and inter-pupil
    normalised; then per series the failure rate. Exit 0; 2 bad input.
    """
    from .benchmark import BOX_SOURCES, case_folders, find_faces, fit_rows, same_picture_rows
    from .fitter import Fitter
    from .outputs import check_file_target, check_folder_target, staged_folder, write_file
    from .report import accuracy as rep

    if not threshold > 0:
        raise InputError(f"--threshold must be positive, got {threshold}")
    for target, option in ((csv_out, "--csv"), (json_out, "--json")):
        if target is not None and str(target) != "-":
            check_file_target(target, option)
    if report_dir is not None:
        check_folder_target(report_dir, "--report", _is_accuracy_report, "an accuracy report")
    faces = find_faces(paths)
    golden_dirs, candidate_dirs = case_folders(goldens), case_folders(candidates)
    fitter = Fitter(models=models_dir)
    port_fitter = None
    if port is not None:  # loaded once, before any fit (a bad --port is said at once)
        from .ports import load_port
        port_fitter = Fitter(fitter.model, main_ops=load_port(port))
    hierarchical = False if no_hierarchical else None
    presets, boxes = presets or DEFAULT_PRESETS, boxes or BOX_SOURCES
    rows, pictures = [], []
    for face in faces:
        face_rows = fit_rows(fitter, face, presets, boxes, hierarchical=hierarchical)
        if port_fitter is not None:
            face_rows += fit_rows(port_fitter, face, presets, boxes, f"port:{port}", hierarchical)
        face_rows += same_picture_rows(face, golden_dirs, "golden")
        face_rows += same_picture_rows(face, candidate_dirs, "candidate")
        rows += face_rows
        if report_dir is not None:
            shown = [(f"{r.source} {r.preset} {r.box_source}", r.landmarks) for r in face_rows
                     if r.landmarks is not None and r.box_source != "detector"]
            pictures.append((face.name, rep.face_png(face.gray, face.annotation.points, shown)))
    table = [r.as_dict() for r in rows]
    if json_out is not None and str(json_out) == "-":
        click.echo(rep.table_json(table, threshold), nl=False)
    else:
        click.echo(rep.text_table(table, threshold))
        if json_out is not None:
            write_file(json_out, rep.table_json(table, threshold), "--json")
    if csv_out is not None:
        write_file(csv_out, rep.table_csv(table), "--csv")
    if report_dir is not None:
        with staged_folder(report_dir, "--report", _is_accuracy_report, "an accuracy report") as build:
            ced = rep.ced_png(table, threshold)
            (build / "ced.png").write_bytes(ced)
            for name, png in pictures:
                (build / f"face_{name}.png").write_bytes(png)
            (build / "accuracy.csv").write_text(rep.table_csv(table), encoding="utf-8")
            (build / "accuracy.json").write_text(rep.table_json(table, threshold), encoding="utf-8")
            (build / "index.html").write_text(
                rep.page(table, ced, pictures, threshold, " ".join(str(p) for p in paths)), encoding="utf-8")


__all__ = ["accuracy", "DEFAULT_PRESETS"]
