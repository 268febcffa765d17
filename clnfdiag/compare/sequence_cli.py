"""``clnfdiag compare`` on tracking references: the body the compare command hands sequences to.

:func:`clnfdiag.compare.cli.compare` calls :func:`compare_sequences` when every
argument is a tracking reference or a traced sequence
(:func:`~clnfdiag.compare.sequence.is_sequence_path`). One line per run, then a
summary line; exit 0 when every run is identical or within the C++'s spread,
1 on a divergence, 2 bad input (raised as ClnfdiagError).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..errors import InputError
from ..outputs import check_file_target, check_folder_target, write_file
from .jsonstream import dumps
from .sequence import (SequenceComparison, check_frames, compare_frames, find_runs, load_traced_run,
                       match_candidate, records_to_arrays, run_arrays, summary_json, track_run)


def compare_sequences(paths, candidate: Path | None = None, port: str | None = None, exact: bool = False,
                      json_out: str | None = None, report_dir: Path | None = None, models=None,
                      quiet: bool = False, inject=(), noise_runs: int = 64) -> int:
    """Compare tracking runs; returns the exit code.

    Parameters
    ----------
    paths : iterable of path
        Tracking references (folders, run JSON files) or traced sequences.
    candidate : path, optional
        Traced sequences (``clnfdiag track --trace-out``), matched to runs by
        frames, preset, hierarchy and initialisation; no tracking then.
    port : str, optional
        Track with a port's stages (``pyclnf``: its CCNF path) inside
        OpenFace's video state machine; frame 0's first diverging stage is
        added per box-initialised run.
    exact : bool
        Any differing bit is a divergence.
    json_out, report_dir : optional
        ``--json FILE|-`` and ``--report DIR`` (checked before the run, written whole).
    """
    t0 = time.perf_counter()
    if candidate is not None and port is not None:
        raise InputError("--port tracks with a port; it cannot be combined with --candidate (no tracking)")
    if json_out is not None and json_out != "-":
        check_file_target(json_out, "--json")
    if report_dir is not None:
        from ..report.drift import REPORT_WHAT, is_drift_report
        check_folder_target(report_dir, "--report", is_drift_report, REPORT_WHAT)
    runs = find_runs(paths)
    for r in runs:
        check_frames(r)
    cands = find_runs([candidate]) if candidate is not None else None
    human = sys.stderr if json_out == "-" else sys.stdout
    fitter = port_fitter = None
    if candidate is None:
        from ..fitter import Fitter
        fitter = Fitter(models=models)
        if port is not None:
            from ..ports.pyclnf_video import port_fitter as make_port_fitter
            port_fitter = make_port_fitter(fitter, port)
    results: list[SequenceComparison] = []
    for r in runs:
        if cands is not None:
            c = match_candidate(r, cands)
            if c is None:
                click.echo(f"SKIP      {r.name}  no traced sequence in {candidate} tracks these frames "
                           f"with preset {r.preset}, hierarchical {r.hierarchical}, init {r.init}", file=human)
                continue
            cmp = compare_frames(r, run_arrays(c), f"candidate {c.path.parent}", exact)
        else:
            name = "clnfdiag" if port is None else f"port {port}"
            records = track_run(r, port_fitter or fitter, faults=inject)
            cmp = compare_frames(r, records_to_arrays(records), name, exact)
            if port is not None and r.init == "box" and not cmp.passed:
                from ..ports.pyclnf_video import frame0_divergence
                f0 = frame0_divergence(r, fitter, port, models, noise_runs)
                cmp.extra["frame0"] = f0
                # Isolated mode: the first stage the port computes differently from the same
                # inputs; the causes rank the stage kinds by their closed-loop landmark move.
                iso, prop = f0.get("isolated") or {}, f0.get("propagated") or {}
                cmp.first_divergence_stage = iso.get("first_divergent_stage")
                causes = prop.get("causes") or iso.get("causes")
                if causes:
                    cmp.note = f"frame 0 top cause: {causes[0]}"
        results.append(cmp)
        if not (quiet and cmp.passed):
            click.echo(cmp.line(), file=human)
    wall = time.perf_counter() - t0
    payload = summary_json(results, wall)
    if report_dir is not None:
        from ..report.drift import write_drift_report
        write_drift_report(payload, report_dir, source=" ".join(map(str, paths)))
    if json_out is not None:
        text = dumps(payload)
        if json_out == "-":
            click.echo(text, nl=False)
        else:
            write_file(json_out, text, "--json")
    n_pass, n_id = payload["summary"]["passed"], payload["summary"]["identical"]
    click.echo(f"{len(results)} tracking runs: {n_id} bit-identical, {n_pass - n_id} within the C++ spread, "
               f"{len(results) - n_pass} beyond ({time.perf_counter() - t0:.1f} s)", file=human)
    if not results:
        raise InputError("no tracking run was compared (no candidate matched)")
    return 0 if n_pass == len(results) else 1


__all__ = ["compare_sequences", "load_traced_run"]
