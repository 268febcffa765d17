"""``compare --json`` written as the comparisons arrive: memory flat with the number of cases.

A comparison's JSON is a few hundred kB (every stage's errors); keeping them all
until the end costs the main process memory in proportion to the cases. The
:class:`CasesJsonWriter` instead appends each case's JSON, as it arrives, to an
anonymous spool file (``O_TMPFILE`` where the system has it: no name, so nothing
is left behind even by a killed process), and at the end writes the document
whole -- head, spooled cases, tail -- to a hidden temporary sibling of the target
renamed over it (as :func:`clnfdiag.outputs.write_file` does): an interrupt leaves
the previous file or none, never half a document.

The text is byte for byte what ``json.dumps(run_json(...), indent=1)`` gives for
the same results: with ``indent=1`` an element of the top-level ``"cases"`` list
sits at nesting depth 2, so each case is dumped on its own with ``indent=1`` and
every one of its lines shifted by two spaces (JSON strings escape their line
breaks, so every ``\\n`` of a dump is a line break of the layout), the elements
joined by ``",\\n"`` inside ``"[\\n" ... "\\n ]"`` (an empty list is ``[]``).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError
from ..outputs import TMP_PREFIX, write_file

#: Indentation of ``compare --json`` (one space per level: the files are large).
JSON_INDENT = 1
#: Prefix of a case's lines: an element of a top-level list is at depth 2.
_CASE_PREFIX = " " * (2 * JSON_INDENT)


def dumps(payload: Any) -> str:
    """The JSON text of ``payload`` as ``compare --json`` writes it (with its final newline)."""
    return json.dumps(payload, indent=JSON_INDENT, allow_nan=False) + "\n"


def case_text(case_json: dict) -> str:
    """One case's JSON text as :class:`CasesJsonWriter` spools it (before its shift to depth 2).

    Raises ValueError for a non-finite float, as ``json.dumps(allow_nan=False)`` does.
    """
    return json.dumps(case_json, indent=JSON_INDENT, allow_nan=False)


class CasesJsonWriter:
    """Spool each case's JSON as it arrives; write the whole document at :meth:`finish`.

    Parameters
    ----------
    target : str
        The file (checked beforehand with :func:`clnfdiag.outputs.check_file_target`),
        or ``-`` for stdout (written there at the end too: the head comes first and
        holds the summary).
    option : str
        The option naming the target, for error messages.

    Notes
    -----
    Use as a context manager: leaving it without :meth:`finish` (an error, Ctrl-C)
    discards the spool and writes nothing.
    """

    def __init__(self, target: str, option: str = "--json") -> None:
        self.target = target
        self.option = option
        self.count = 0
        folder = None if target == "-" else Path(os.path.abspath(target)).parent
        try:
            # Beside the target (its file system has room for the result anyway); unnamed.
            self._spool: IO[bytes] = tempfile.TemporaryFile(prefix=TMP_PREFIX, dir=folder)
        except OSError as exc:
            raise OutputError(f"{option}: cannot write ({exc.strerror or exc})", Path(target)) from None

    def __enter__(self) -> "CasesJsonWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Discard the spool (an unnamed file: closing it frees it)."""
        self._spool.close()

    def add(self, case_json: dict) -> None:
        """Append one case's JSON (:meth:`CaseComparison.to_json`), in input order.

        Raises ValueError for a non-finite float, as ``json.dumps(allow_nan=False)`` does.
        """
        self.add_text(case_text(case_json))

    def add_text(self, text: str) -> None:
        """Append one case's :func:`case_text` (made where the comparison was: in a worker), in
        input order."""
        sep = "[\n" if self.count == 0 else ",\n"
        self._spool.write((sep + _CASE_PREFIX + text.replace("\n", "\n" + _CASE_PREFIX)).encode("utf-8"))
        self.count += 1

    def finish(self, payload: dict) -> None:
        """Write the document: ``payload`` (:func:`run_json` of the failures alone, its
        ``"cases"`` empty) with the spooled cases in place of its ``"cases"`` list.

        Raises
        ------
        OutputError
            The target cannot be written (its temporary sibling is removed).
        """
        token = f"@@clnfdiag-cases-{uuid.uuid4().hex}@@"
        head, tail = dumps({**payload, "cases": token}).split(json.dumps(token))
        self._spool.write(b"[]" if self.count == 0 else ("\n" + " " * JSON_INDENT + "]").encode("utf-8"))
        if self.target == "-":
            self._copy_to(sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None, head, tail)
            return
        self._write_file(head, tail)

    def _pieces(self, out: IO[bytes], head: str, tail: str) -> None:
        out.write(head.encode("utf-8"))
        self._spool.flush()
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, out, 1 << 20)
        out.write(tail.encode("utf-8"))

    def _copy_to(self, out: IO[bytes] | None, head: str, tail: str) -> None:
        """stdout: bytes where it has a buffer, else text (a test runner's captured stream)."""
        sys.stdout.flush()
        if out is not None:
            self._pieces(out, head, tail)
            out.flush()
            return
        self._spool.seek(0)
        sys.stdout.write(head + self._spool.read().decode("utf-8") + tail)
        sys.stdout.flush()

    def _write_file(self, head: str, tail: str) -> None:
        write_file(self.target, lambda f: self._pieces(f, head, tail), self.option)


__all__ = ["CasesJsonWriter", "case_text", "dumps", "JSON_INDENT"]
