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

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from .errors import (EXIT_INTERRUPTED, INTERRUPTED_LINE, ClnfdiagError, ClnfdiagWarning, error_line,
                     warning_line)
from .processes import caused_by_interrupt, quiet_after_interrupt


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


__all__ = ["MODELS_HELP", "one_line_warnings", "run_body"]
