"""Errors that reach the user as one line and a distinct exit code.

Every failure caused by bad input (model files, golden cases, images, boxes,
arguments) is raised as a :class:`ClnfdiagError` subclass. The CLI prints
``str(err)`` on one line and exits with ``err.exit_code``; no traceback.
"""
from __future__ import annotations

from pathlib import Path

# Exit codes, shared by every command (README "Exit codes"; the CI gate relies on
# 0 = pass, 1 = divergence, 2 = bad input).
#: Everything ran and passed.
EXIT_OK = 0
#: ``compare`` ran fine and found a divergence beyond the gate.
EXIT_DIVERGENCE = 1
#: Bad input or usage: missing/corrupt files, bad options, unusable outputs.
EXIT_BAD_INPUT = 2
#: ``fit`` ran but OpenFace's own verdict on the fit is failure (``success`` false).
EXIT_FIT_FAILED = 3
#: Interrupted (Ctrl-C): 128 + SIGINT, the shell's convention.
EXIT_INTERRUPTED = 130

#: Prefix of every line clnfdiag writes to stderr about a problem.
_PREFIX = "clnfdiag"


class ClnfdiagError(Exception):
    """Base class: a problem with what the user gave us, reported in one line.

    Parameters
    ----------
    message : str
        What is wrong, without the location.
    path : str or Path, optional
        The file (or folder) concerned; prefixed to the message.
    where : str, optional
        A finer location inside the file: a key, a byte offset, a line.
    """

    exit_code = EXIT_BAD_INPUT
    kind = "error"

    def __init__(self, message: str, path: str | Path | None = None, where: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.where = where
        super().__init__(self.format())

    def format(self) -> str:
        loc = self.path or ""
        if self.where:
            loc = f"{loc} ({self.where})" if loc else self.where
        return f"{loc}: {self.message}" if loc else self.message


class ModelError(ClnfdiagError):
    """Model folder or model file missing, truncated or malformed."""

    kind = "model error"


class GoldenError(ClnfdiagError):
    """A golden case (manifest, image or stages) is missing or malformed."""

    kind = "golden error"


class InputError(ClnfdiagError):
    """An image, box or option value that cannot be used."""

    kind = "input error"


class OutputError(ClnfdiagError):
    """An output file or folder that cannot be written (checked before the work starts)."""

    kind = "output error"


class ClnfdiagWarning(UserWarning):
    """Something the user should know that does not stop the command.

    The command line shows it as one :func:`warning_line` (no source line).
    """


def error_line(err: ClnfdiagError) -> str:
    """The single stderr line a ClnfdiagError is reported as: ``clnfdiag: <kind>: <message>``."""
    return f"{_PREFIX}: {err.kind}: {err}"


def warning_line(message: str) -> str:
    """A stderr line for something the user should know that does not stop the command."""
    return f"{_PREFIX}: warning: {message}"


def note_line(message: str) -> str:
    """A stderr line saying what clnfdiag chose on the user's behalf (a detection, a cap)."""
    return f"{_PREFIX}: note: {message}"


#: The stderr line of an interrupted command (exit :data:`EXIT_INTERRUPTED`). Every output
#: is built aside and moved into place whole (:mod:`clnfdiag.outputs`), so none is left half-written.
INTERRUPTED_LINE = f"{_PREFIX}: interrupted; no partial output was left"
