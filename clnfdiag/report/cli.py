"""``clnfdiag report SUMMARY_JSON [--out DIR]``: rebuild a report from a saved comparison."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("summary_json", metavar="SUMMARY_JSON", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: reports/<timestamp> of the repository): built aside and moved "
                   "into place whole; an earlier report there is replaced, a folder holding anything "
                   "else is refused.")
def report(summary_json: Path, out_dir: Path | None) -> None:
    """Build the HTML/CSV/PNG report of a saved comparison (the summary.json of compare --report).

    Nothing is re-run: the tables come from SUMMARY_JSON; the image and
    response-map plots use the report_arrays.npz saved next to it, when present.
    """
    from . import INDEX_FILE, rebuild_report  # pandas only when this command runs

    out = rebuild_report(summary_json, out_dir)
    click.echo(f"report: {out / INDEX_FILE}")
