"""What every command shares: one stderr line per problem, warning or interrupt.

* :func:`one_line_warnings` shows a :class:`~clnfdiag.errors.ClnfdiagWarning`
  (a modified model file, a leftover folder) as ``clnfdiag: warning: ...``,
  the line ``clnfdiag models check`` prints, instead of Python's
  ``file:line: Category: message`` and source line;
* :func:`run_body` runs a command body and turns a ClnfdiagError into its line
  and exit code, and Ctrl-C into :data:`~clnfdiag.errors.INTERRUPTED_LINE`
  and exit 130 (click would print ``Aborted!`` and exit 1, which reads as
  "divergence found");

Imports nothing from :mod:`clnfdiag.cli`, so the command modules registered
there (``compare``, ``fit`` ...) can use it and still run on their own.
"""
from __future__ import annotations

import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from .errors import (EXIT_INTERRUPTED, INTERRUPTED_LINE, ClnfdiagError, ClnfdiagWarning, error_line,
                     warning_line)
from .processes import caused_by_interrupt


#: Help of every ``--models`` option (the README's "OpenFace model files" section says the same).
MODELS_HELP = ("OpenFace's model folder: the pyclnf/pyfaceau cache root or OpenFace's model/ folder "
               "[default: $OPENFACE_MODELS_DIR, then $XDG_DATA_HOME/OpenFaceModels].")


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, ClnfdiagWarnings go to stderr as one ``clnfdiag: warning:`` line each."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ClnfdiagWarning):
                click.echo(warning_line(str(message)), err=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


@contextmanager
def quiet_after_interrupt() -> Iterator[None]:
    """After Ctrl-C, no "Exception ignored in ..." report on stderr.

    A KeyboardInterrupt raised inside a constructor (llvmlite's, while numba loads a
    kernel) leaves a half-built object whose finaliser then fails; Python reports that
    on stderr, next to the interrupt line that should be the only one. The block notes
    SIGINT (the handler in place still runs: it raises KeyboardInterrupt) and, once one
    came, drops such reports; before it, they are shown as usual. Outside the main
    thread, or with SIGINT ignored, it notes nothing.
    """
    came: list[bool] = []
    previous_hook = sys.unraisablehook
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if callable(previous):
        def note(signum, frame):
            came.append(True)
            previous(signum, frame)
        signal.signal(signal.SIGINT, note)
    sys.unraisablehook = lambda report: None if came else previous_hook(report)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        if callable(previous):
            signal.signal(signal.SIGINT, previous)


def run_body(body: Callable[[], int | None]) -> int:
    """Run a command body and return its exit code.

    A :class:`ClnfdiagError` becomes its one line on stderr and its exit code,
    Ctrl-C the interrupt line and 130 -- also when it surfaced as another error
    raised because of it (:func:`~clnfdiag.processes.caused_by_interrupt`);
    warnings of clnfdiag are one line each.
    """
    with one_line_warnings(), quiet_after_interrupt():
        try:
            return body() or 0
        except ClnfdiagError as err:
            click.echo(error_line(err), err=True)
            return err.exit_code
        except BaseException as exc:
            if not caused_by_interrupt(exc):
                raise
            click.echo(INTERRUPTED_LINE, err=True)
            return EXIT_INTERRUPTED


__all__ = ["MODELS_HELP", "one_line_warnings", "quiet_after_interrupt", "run_body"]
