"""Command line: ``clnfdiag <command> ...``.

Commands only wire library modules together. To add one, define it here (or
in its own module and register it with ``main.add_command``)::

    @main.command()
    @click.argument("case", type=click.Path(path_type=Path))
    def compare(case: Path) -> None:
        \"\"\"One-line help.\"\"\"
        ...

Raise a :class:`~clnfdiag.errors.ClnfdiagError` subclass for anything the
user got wrong: :class:`ClnfdiagGroup` turns it into one line on stderr,
``clnfdiag: <kind>: <message>``, and exit code ``err.exit_code`` (2). Exit 1 is
left for "ran fine, found a divergence" (``ctx.exit(1)``). Ctrl-C is one line
and exit 130; a :class:`~clnfdiag.errors.ClnfdiagWarning` (a modified model
file) is one ``clnfdiag: warning:`` line. The exit codes are in
:mod:`clnfdiag.errors`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_support import one_line_warnings
from .errors import EXIT_INTERRUPTED, INTERRUPTED_LINE, ClnfdiagError, GoldenError, error_line
from .golden import GoldenCase, find_cases, read_case


class ClnfdiagGroup(click.Group):
    """Root group: a ClnfdiagError anywhere below becomes one stderr line and its exit code.

    Wrapping ``main`` (not ``invoke``) also covers errors raised while click
    parses arguments, e.g. in a parameter type's ``convert``. ``invoke`` shows
    clnfdiag's warnings as one line each and turns Ctrl-C into exit 130.
    """

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        with one_line_warnings():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                # click would print "Aborted!" and exit 1, which reads as "divergence found".
                click.echo(INTERRUPTED_LINE, err=True)
                raise click.exceptions.Exit(EXIT_INTERRUPTED) from None

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        try:
            return super().main(*args, standalone_mode=standalone_mode, **kwargs)
        except ClnfdiagError as err:
            if not standalone_mode:
                raise
            click.echo(error_line(err), err=True)
            sys.exit(err.exit_code)


@click.group(cls=ClnfdiagGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clnfdiag")
def main() -> None:
    """Check a CLNF facial-landmark implementation against OpenFace C++ 2.x, stage by stage.

    Exit codes: 0 ok, 1 divergence found (compare), 2 bad input, usage or an
    unusable output, 3 the fit failed (fit), 130 interrupted.
    """


# --------------------------------------------------------------------------- golden

@main.group()
def golden() -> None:
    """Inspect and validate golden cases (clnfdiag-golden/1)."""


@golden.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check every case in PATHS (case folders or folders of cases).

    Prints one line per case and goes on after a bad one; exits 2 if any is bad.
    """
    n_bad = 0
    n_cases = 0
    for arg in paths:
        try:
            case_dirs = find_cases([arg])
        except GoldenError as err:
            n_bad += 1
            click.echo(f"BAD {arg}  {err.kind}: {err}")
            continue
        for case_dir in case_dirs:
            n_cases += 1
            try:
                with read_case(case_dir, verify=True) as case:
                    click.echo(f"ok  {case_dir}  ({len(case.keys())} stages)")
            except GoldenError as err:
                n_bad += 1
                click.echo(f"BAD {case_dir}  {err.kind}: {err}")
    if n_bad:
        raise GoldenError(f"{n_bad} bad argument(s) or case(s), {n_cases} case(s) found")


@golden.command()
@click.argument("case_path", metavar="CASE", type=click.Path(path_type=Path))
def show(case_path: Path) -> None:
    """Summarise one golden case: input, parameters, passes, result."""
    with read_case(case_path, verify=False) as case:
        click.echo("\n".join(summary_lines(case)))


def summary_lines(case: GoldenCase) -> list[str]:
    """Readable summary of a case, one item per line (used by ``golden show``)."""
    m = case.manifest
    img = m["image"]
    p = case.parameters
    x, y, w, h = case.bbox
    lines = [
        f"case      {case.case_id}" + ("  (hierarchical)" if case.is_hierarchical else ""),
        f"folder    {case.path}",
        f"image     {img['file']}  {img.get('width', '?')}x{img.get('height', '?')}  source: {img.get('source', '?')}",
        f"bbox      x={x!r} y={y!r} w={w!r} h={h!r}",
        f"preset    {case.preset}",
        "params    windows={} sigma={} reg={} weight_factor={} iterations={}".format(
            p.get("window_sizes_init"), p.get("sigma"), p.get("reg_factor"),
            p.get("weight_factor"), p.get("num_optimisation_iteration")),
        f"stages    {len(case.keys())}",
    ]
    for i in range(case.n_passes):
        lines.append(_pass_line(case, i))
        for phase, n_entered, n_updates in case.phases(i):
            lines.append(_phase_line(case, i, phase, n_entered, n_updates))
    result = m["result"]
    lines.append(f"result    likelihood={result.get('likelihood')!r} success={result.get('success')}")
    return lines


def _scalar(case: GoldenCase, key: str) -> str:
    """A 0-d stage as text ("?" when the case lacks it); floats to 6 significant digits."""
    if not case.has(key):
        return "?"
    value = case.stage(key).item()
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _pass_line(case: GoldenCase, i: int) -> str:
    names = (("window", "window_size"), ("scale_index", "scale_index"), ("view", "view_id"),
             ("sigma", "sigma"), ("reg", "reg_factor"), ("weight_factor", "weight_factor"))
    return f"pass{i}     " + " ".join(f"{label}={_scalar(case, f'pass{i}/{key}')}" for label, key in names)


def _phase_line(case: GoldenCase, i: int, phase: str, n_entered: int, n_updates: int) -> str:
    iters = case.iterations(i, phase)
    norm = "-"
    for k in reversed(iters):  # iteration 0 has no shape_change_norm
        key = f"pass{i}/{phase}/iter{k:02d}/shape_change_norm"
        if case.has(key):
            norm = _scalar(case, key)
            break
    return f"  {phase:<9} iterations={n_entered} updates={n_updates} last_shape_change_norm={norm}"


__all__ = ["main", "ClnfdiagGroup", "error_line", "summary_lines"]

from .cli_models import models  # noqa: E402  (registered last: it is self-contained)
main.add_command(models)

from .compare.cli import compare  # noqa: E402  (registered last: it is self-contained)
main.add_command(compare)

from .report.cli import report  # noqa: E402  (registered last: it is self-contained)
main.add_command(report)

from .cli_fit import fit  # noqa: E402  (registered last: it is self-contained)
main.add_command(fit)

from .cli_track import track  # noqa: E402  (registered last: it is self-contained)
main.add_command(track)

from .cli_accuracy import accuracy  # noqa: E402  (registered last: it is self-contained)
main.add_command(accuracy)

from .cli_cache import cache_group  # noqa: E402  (registered last: it is self-contained)
main.add_command(cache_group)
