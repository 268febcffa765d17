"""Errors that reach the user as one line and a distinct exit code.

Every failure caused by bad input (model files, golden cases, images, boxes,
arguments) is raised as a :class:`ClnfdiagError` subclass. The CLI prints
``str(err)`` on one line and exits with ``err.exit_code``; no traceback.
"""
from __future__ import annotations

from pathlib import Path

#: Exit code for bad input or usage, shared by every command (the CI gate
#: relies on 0 = pass, 1 = divergence, 2 = bad input).
EXIT_BAD_INPUT = 2


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
