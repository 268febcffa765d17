"""``clnfdiag models``: where OpenFace's model files are, and whether they are OpenFace 2.2.0's.

* ``clnfdiag models where [--models DIR]`` prints the resolved model folder;
* ``clnfdiag models check [--models DIR] [--strict]`` verifies the SHA-256 of
  every model file, reads them all (main model and parts) and summarises them.

Exit codes: 0 ok (modified or unknown files are warnings unless ``--strict``),
2 on any problem, reported as one line on stderr.

The group is registered on the root command in :mod:`clnfdiag.cli`; it also
runs on its own (``python -m clnfdiag.cli_models check``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NoReturn

import click

from .cli_support import MODELS_HELP
from .errors import ClnfdiagError, ModelError, error_line, warning_line
from .models import Model, ModelChecksumWarning, find_model_dir, load_model
from .models.locate import known_checksums, sha256_file

_MODELS_OPTION = click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None,
                              help=MODELS_HELP)


def _fail(err: ClnfdiagError) -> NoReturn:
    click.echo(error_line(err), err=True)
    raise click.exceptions.Exit(err.exit_code)


@click.group()
def models() -> None:
    """Locate and verify OpenFace's CLNF model files."""


@models.command()
@_MODELS_OPTION
def where(models_dir: Path | None) -> None:
    """Print the model folder that would be used."""
    try:
        click.echo(str(find_model_dir(models_dir)))
    except ClnfdiagError as err:
        _fail(err)


def file_status(rel: str, digest: str) -> str:
    """``ok``, ``modified`` or ``unknown`` for a file path relative to the model folder."""
    expected = known_checksums().get(rel)
    if expected is None:
        return "unknown"
    return "ok" if expected == digest else "modified"


def summary_lines(model: Model) -> list[str]:
    """What was read: points, modes, scales, views, parts."""
    main = model.main
    lines = [
        "main model    {} points, {} modes, patch scales {}, views per scale {}, "
        "sigma windows {}".format(
            main.pdm.n_points, main.pdm.n_modes, " ".join(f"{s:g}" for s in main.patch_scales),
            " ".join(str(s.n_views) for s in main.scales),
            " ".join(str(w) for w in sorted(main.scales[0].sigma_components))),
    ]
    if not model.parts:
        lines.append("parts         none")
    for p in model.parts:
        m = p.model
        lines.append(
            "part {:<12} {} points, {} modes, patch scales {}, views per scale {}, "
            "{} points mapped to the main model".format(
                p.name, m.pdm.n_points, m.pdm.n_modes, " ".join(f"{s:g}" for s in m.patch_scales),
                " ".join(str(s.n_views) for s in m.scales), len(p.mapping)))
    return lines


@models.command()
@_MODELS_OPTION
@click.option("--strict", is_flag=True,
              help="Treat modified or unknown model files as errors (exit 2).")
def check(models_dir: Path | None, strict: bool) -> None:
    """Verify every model file's SHA-256 against OpenFace 2.2.0's and read the whole model."""
    try:
        model_dir = find_model_dir(models_dir)
    except ClnfdiagError as err:
        _fail(err)
    click.echo(f"model folder  {model_dir}")
    # Files are always read leniently so the listing is complete; --strict
    # then turns the first modified/unknown file into the error.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ModelChecksumWarning)
        try:
            model = load_model(model_dir, strict=False)
        except ClnfdiagError as err:
            _echo_warnings(caught)
            _fail(err)
    checksum_warnings = _echo_warnings(caught)

    counts = {"ok": 0, "modified": 0, "unknown": 0}
    for rel, digest in model.files.items():
        status = file_status(rel, digest)
        counts[status] += 1
        click.echo(f"  {status:<9} {rel}")
    # Known files present but not needed by the CLNF (e.g. tris_68.txt): checked too.
    extra = 0
    for rel, expected in known_checksums().items():
        path = model_dir / rel
        if rel in model.files or not path.is_file():
            continue
        extra += 1
        status = "ok" if sha256_file(path) == expected else "modified"
        counts[status] += 1
        click.echo(f"  {status:<9} {rel}  (not read)")
        if status == "modified":
            checksum_warnings.append(f"{path}: differs from OpenFace 2.2.0 (not read by clnfdiag)")
            click.echo(warning_line(checksum_warnings[-1]), err=True)
    for line in summary_lines(model):
        click.echo(line)
    click.echo("files         {} checked: {} ok, {} modified, {} unknown".format(
        sum(counts.values()), counts["ok"], counts["modified"], counts["unknown"]))
    if strict and checksum_warnings:
        _fail(ModelError(f"--strict: {len(checksum_warnings)} model file(s) are not OpenFace "
                         f"2.2.0's, first: {checksum_warnings[0]}"))


def _echo_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Print checksum warnings as ``clnfdiag: warning: ...`` lines; re-emit any other warning."""
    out = []
    for w in caught:
        if issubclass(w.category, ModelChecksumWarning):
            out.append(str(w.message))
            click.echo(warning_line(str(w.message)), err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


if __name__ == "__main__":  # pragma: no cover
    models(prog_name="clnfdiag models")
