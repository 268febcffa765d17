"""``clnfdiag compare``: judge a CLNF implementation against OpenFace C++ golden cases.

Registered on the root group in :mod:`clnfdiag.cli` (``main.add_command(compare)``);
it also reports its own errors, so it runs on its own. Exit codes: 0 every
comparison passes the gate, 1 a divergence beyond the gate, 2 bad input or
usage (one line on stderr per problem), 130 interrupted. The ``--json`` and
``--report`` targets are checked before the first comparison and written
whole at the end (:mod:`clnfdiag.outputs`): an interrupt leaves no partial
output. The JSON of each comparison is spooled as it arrives
(:mod:`clnfdiag.compare.jsonstream`), so without ``--report`` the memory
does not grow with the cases.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import time
from functools import partial
from pathlib import Path
from typing import IO, Any

import click

from ..cli_support import MODELS_HELP, run_body
from ..errors import InputError, note_line
from ..faults import FAULTS, parse_faults
from ..golden import find_cases, read_case
from ..outputs import check_file_target, check_folder_target, is_empty_folder
from ..processes import usable_cpus
from .comparator import start_method, run
from .handoff import Brief, Handoff, hand_off
from .jsonstream import CasesJsonWriter
from .noise import DEFAULT_RUNS
from .producers import CandidateTraces, FitProducer, Replays
from .struct import CaseComparison, CaseFailure, Summary, run_json
from .tolerances import PROFILES, exact_tolerances, load_tolerances

#: Carriage return + erase line: removes the progress counter before a result line.
_CLEAR_LINE = "\r\033[K"
#: Format tag of the JSON written by ``--json``.


@click.command("compare")
@click.argument("golden_paths", metavar="GOLDEN_CASE_OR_DIR...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--candidate", type=click.Path(path_type=Path), default=None,
              help="Candidate traces in the golden format: a case folder, or a folder of case folders "
                   "matched to the golden cases by case id. No fitting then.")
@click.option("--port", "port", metavar="MODULE:OBJECT", default=None,
              help="Fit with another CLNF implementation plugged into clnfdiag's fit loop: OBJECT "
                   "(in an importable MODULE, or FILE.py:OBJECT) takes the main CLNF model and returns "
                   "a port adapter (clnfdiag.ports.PortOps). Every mode, the impact replays and "
                   "--inject work as for clnfdiag's own fit; stages the port does not compute are "
                   "listed as not produced.")
@click.option("--mode", type=click.Choice(["isolated", "propagated", "both"]), default=None,
              help="isolated: every stage from the golden's own inputs; propagated: end-to-end fit. "
                   "With --candidate the mode picks the tolerance table: a port's end-to-end trace "
                   "feeds each stage from its own earlier ones, so propagated is the default there; "
                   "use isolated for a trace whose stages were computed from the golden's inputs. "
                   "[default: both when fitting, propagated with --candidate]")
@click.option("--tolerances", "tolerances_file", type=click.Path(path_type=Path), default=None,
              help="TOML file of per-stage-kind tolerances [default: [tool.clnfdiag.tolerances] "
                   "of ./pyproject.toml, else the shipped defaults].")
@click.option("--exact", is_flag=True,
              help="Judge every stage of both modes by equality: any differing value diverges. "
                   "clnfdiag's own fit reproduces the OpenFace C++ goldens bit for bit on any CPU; "
                   "this is the regression gate for it (cannot be combined with --tolerances).")
@click.option("--profile", type=click.Choice(list(PROFILES)), default=None,
              help="Tolerance table of the isolated stages: exact (float32 rounding; exact equality "
                   "where OpenFace's arithmetic is reproducible bit for bit: clnfdiag and bit-faithful "
                   "ports) or port (what float64 or another rounding can make of each quantity; "
                   "clnfdiag/data/port_tolerances.toml states each bound). Propagated stages are "
                   "judged against each case's measured noise envelope either way. "
                   "[default: port with --port, else exact]")
@click.option("--noise-runs", type=click.IntRange(min=1), default=DEFAULT_RUNS, show_default=True,
              help="Perturbed fits per noise envelope (K). An envelope is measured once per golden "
                   "case (a few seconds) and cached by content under $XDG_CACHE_HOME/clnfdiag/noise.")
@click.option("--gate", type=click.Choice(["stages", "landmarks"]), default="stages", show_default=True,
              help="stages: fail on any stage beyond tolerance; landmarks: only when the final "
                   "landmarks are (or the first divergence's impact on them is).")
@click.option("--inject", multiple=True, metavar="FAULT",
              help=f"Inject a known fault into the fit (repeatable): {', '.join(FAULTS)}.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write the report (tables, plots, HTML) to this folder: checked before the run, "
                   "built aside and moved into place whole at the end. An earlier report there is "
                   "replaced (none of its files stay); a folder holding anything else is refused.")
@click.option("--json", "json_out", metavar="FILE|-", default=None,
              help="Write the comparisons as JSON to FILE (checked before the run, written whole at "
                   "the end), or to stdout with '-' (human lines go to stderr).")
@click.option("--models", type=click.Path(path_type=Path), default=None, help=MODELS_HELP)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Cases compared in parallel processes (at most the usable CPUs: more would only "
                   "compete for them and multiply the memory). [default: the usable CPUs]")
@click.option("--quiet", is_flag=True, help="No progress and no line per passing case.")
@click.pass_context
def compare(ctx: click.Context, golden_paths: tuple[Path, ...], candidate: Path | None, port: str | None,
            mode: str | None,
            tolerances_file: Path | None, exact: bool, profile: str | None, noise_runs: int, gate: str,
            inject: tuple[str, ...], report_dir: Path | None,
            json_out: str | None, models: Path | None, workers: int, quiet: bool) -> None:
    """Compare a CLNF implementation with OpenFace C++ golden cases, stage by stage.

    Each GOLDEN_CASE_OR_DIR is a golden case folder or a folder of them. With
    --candidate the given traces are judged; otherwise this project's fitter
    produces them (--mode, --inject). One line per case and mode, then a summary.
    Tracking references and traced sequences (clnfdiag track --trace-out) are
    compared frame by frame instead: one line per run (--candidate, --port,
    --exact, --json, --report apply).

    Exit codes: 0 all within the gate, 1 divergence, 2 bad input or usage
    (an unusable --json/--report target is found before the run), 130
    interrupted (nothing half-written).
    """
    ctx.exit(run_body(lambda: _compare(golden_paths, candidate, mode, tolerances_file, exact, gate, inject,
                                       report_dir, json_out, models, workers, quiet, port, profile,
                                       noise_runs)))


def _compare(golden_paths, candidate, mode, tolerances_file, exact, gate, inject, report_dir, json_out,
             models, workers, quiet, port=None, profile=None, noise_runs=DEFAULT_RUNS) -> int:
    """The command body; returns the exit code (raises ClnfdiagError for bad input)."""
    t0 = time.perf_counter()
    from .sequence import is_sequence_path
    sequences = [is_sequence_path(p) for p in golden_paths]
    if any(sequences) and not all(sequences):
        raise InputError("give golden cases or tracking references/traced sequences, not both in one run")
    if all(sequences):  # tracking references: judged frame by frame
        from .sequence_cli import compare_sequences
        return compare_sequences(golden_paths, candidate, port, exact, json_out, report_dir, models, quiet,
                                 parse_faults(list(inject)), noise_runs)
    if profile is None:
        # A port adapter is another implementation: its own rounding is expected.
        profile = "port" if port is not None and not exact else "exact"
    if exact and tolerances_file is not None:
        raise InputError("--exact and --tolerances cannot be combined (--exact allows no difference)")
    if exact and profile != "exact":
        raise InputError("--exact allows no difference; it cannot be combined with --profile port")
    tolerances = exact_tolerances() if exact else load_tolerances(tolerances_file, profile=profile)
    case_dirs = find_cases(list(golden_paths))
    modes = _modes(mode, candidate is not None)
    report_module = _report_module() if report_dir is not None else None
    _check_targets(json_out, report_dir, report_module)
    workers = _cap_workers(workers)
    producer, replays = _producer(candidate, inject, models, modes, len(case_dirs), workers, port, noise_runs)
    human = sys.stderr if json_out == "-" else sys.stdout
    progress = _progress_printer(len(case_dirs)) if not quiet and _is_tty(sys.stderr) else None

    # Memory flat with the cases: each comparison's JSON goes to the --json spool as it
    # arrives and only its Brief stays for the summary; the report (its tables span every
    # case) alone keeps the comparisons. Lines, briefs and JSON texts are made where the
    # comparison was (a worker): only they cross to this process.
    briefs: list[Brief | CaseFailure] = []
    results: list[CaseComparison | CaseFailure] | None = [] if report_module is not None else None
    keep = report_module.keep_for_report if report_module is not None else None
    finish = partial(hand_off, quiet=quiet, json=json_out is not None, whole=results is not None)
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(CasesJsonWriter(json_out)) if json_out is not None else None
        for h in run(case_dirs, producer, modes, tolerances, gate, workers=workers, progress=progress,
                     impact=replays.impact, keep=keep, envelope=replays.envelope, signature=replays.signature,
                     causes=True, cause_impact=getattr(producer, "cause_impact", None), finish=finish):
            _print_line(h, human, progress is not None)
            briefs.append(h.brief)
            if writer is not None and h.json_text is not None:
                writer.add_text(h.json_text)
            if results is not None:
                results.append(h.result)
            del h  # not held over the next case
        if progress is not None:
            click.echo(_CLEAR_LINE, err=True, nl=False)
        summary = Summary.from_results(briefs, time.perf_counter() - t0)
        failures = [b for b in briefs if isinstance(b, CaseFailure)]
        payload = run_json(failures, summary, modes, gate, tolerances.to_json()) if writer is not None else None
        if results is not None:
            _write_report(report_module.write_report, results, report_dir,
                          _source(golden_paths, candidate, inject, port))
        if writer is not None:
            writer.finish(payload)
    # The line's time is the whole command's, report and JSON included.
    summary.wall_time_s = time.perf_counter() - t0
    click.echo(summary.line(), file=human)
    return summary.exit_code


def _check_targets(json_out: str | None, report_dir: Path | None, report_module: Any) -> None:
    """Fail before the run on a --json or --report target that could not be written at the end."""
    if json_out is not None and json_out != "-":
        check_file_target(json_out, "--json")
    if report_dir is not None:
        # The report module says which existing folders are its own (replaceable whole).
        replaceable = getattr(report_module, "is_report_folder", is_empty_folder)
        check_folder_target(report_dir, "--report", replaceable, getattr(report_module, "REPORT_WHAT", "a report"))


def _cap_workers(workers: int | None) -> int:
    """``--workers`` capped at the usable CPUs (said on stderr); more only compete and multiply memory.
    Not given: the usable CPUs."""
    cpus = usable_cpus()
    if workers is None:
        return cpus
    if workers > cpus:
        click.echo(note_line(f"--workers {workers} capped at {cpus}, the CPUs this process may use"), err=True)
        return cpus
    return workers


def _source(golden_paths, candidate, inject, port=None) -> str:
    """What was compared, for the report page."""
    text = "golden " + " ".join(map(str, golden_paths))
    text += (f"; candidate {candidate}" if candidate is not None
             else f"; port {port}" if port is not None else "; clnfdiag fit")
    return text + (f"; injected {', '.join(inject)}" if inject else "")


def _modes(mode: str | None, have_candidate: bool) -> tuple[str, ...]:
    if mode is None:
        return ("propagated",) if have_candidate else ("isolated", "propagated")
    return ("isolated", "propagated") if mode == "both" else (mode,)


def _producer(candidate: Path | None, inject: tuple[str, ...], models: Path | None, modes: tuple[str, ...],
              n_cases: int, workers: int, port: str | None = None, noise_runs: int = DEFAULT_RUNS):
    """The trace producer and clnfdiag's own replays (impact, envelopes, fault signatures) for the
    options; fails fast on what it can check."""
    if candidate is not None:
        if inject:
            raise InputError("--inject changes the fit; it cannot be combined with --candidate (no fitting)")
        if port is not None:
            raise InputError("--port fits with a port; it cannot be combined with --candidate (no fitting)")
        replays = Replays(models, noise_runs)
        _load_early(replays, workers, n_cases, models)
        return CandidateTraces(candidate, match_any=n_cases == 1), replays
    faults = parse_faults(list(inject))
    if port is not None:
        from ..ports import load_port
        load_port(port)  # a bad spec is reported before any case
    producer = FitProducer(models, faults, port, noise_runs)
    _load_early(producer, workers, n_cases, models)
    return producer, producer.replays


def _load_early(producer: Any, workers: int, n_cases: int, models: Path | None) -> None:
    """Read the model (and port) now: a model error is reported before any case."""
    if workers == 1 or n_cases <= 1 or start_method() == "fork":
        # Forked workers inherit this loaded model (and its warnings were shown here, once).
        getattr(producer, "candidate_fitter", None) or producer.fitter
    else:
        # Read (and checksum) the model here too, so that a modified file's warning shows once,
        # not by every worker (the workers do not repeat it).
        from ..models import load_model
        load_model(models)


def _report_module():
    """``clnfdiag.report`` (with its ``write_report``), or InputError when that module is not there."""
    try:
        module = importlib.import_module("clnfdiag.report")
    except ModuleNotFoundError as exc:
        if exc.name not in ("clnfdiag.report",):
            raise
        raise InputError("--report needs the clnfdiag.report module, which is not installed") from None
    if not hasattr(module, "write_report") or not hasattr(module, "keep_for_report"):
        raise InputError("clnfdiag.report has no write_report(comparisons, out_dir) and keep_for_report(key)")
    return module


def _write_report(write_report, results: list, out_dir: Path, source: str) -> None:
    """Call the report writer with the golden cases and the kept candidate arrays."""
    comparisons = [r for r in results if isinstance(r, CaseComparison)]
    goldens = {}
    try:
        for c in comparisons:
            if c.case not in goldens and c.golden_path:
                goldens[c.case] = read_case(c.golden_path, verify=False)
        maps = {(c.case, c.mode): c.kept for c in comparisons}
        write_report(results, out_dir, golden_cases=goldens, candidate_maps=maps, source=source)
    finally:
        for g in goldens.values():
            g.close()


def _is_tty(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _progress_printer(total: int):
    def progress(done: int, total_: int = total) -> None:
        click.echo(f"\r{done}/{total_} cases", err=True, nl=False)
    return progress


def _print_line(h: Handoff, out: IO, progress_shown: bool) -> None:
    """A result's line, if it has one: a failure's on stderr, a comparison's on ``out``."""
    if h.line is None:
        return
    if progress_shown:
        click.echo(_CLEAR_LINE, err=True, nl=False)  # the next progress call redraws it
    click.echo(h.line, err=h.failed, file=None if h.failed else out)


__all__ = ["compare"]
