"""Files and folders the commands write: checked before the work starts, then written whole.

Two rules hold for every output (``compare --json`` / ``--report``, ``report --out``,
``fit --trace-out`` / ``--overlay``):

* **Checked first.** :func:`check_file_target` and :func:`check_folder_target`
  raise an :class:`~clnfdiag.errors.OutputError` before any comparison or fit
  runs, so an unusable target (a folder where a file is wanted, ``/dev/null``,
  a missing parent, a read-only folder) does not cost a whole run. Writability
  is probed by creating an entry, because permission bits say nothing for root
  or on a read-only mount.
* **Written whole or not at all.** A file is written to a hidden temporary
  sibling and renamed over the target (:func:`write_file`). A folder is built
  in a hidden temporary sibling folder and swapped in at the end
  (:func:`staged_folder`) under an exclusive lock on the parent folder, with
  Ctrl-C held back during the swap: an interrupt leaves the previous folder (or
  none), stale files of an older folder disappear with it, and two runs writing
  the same folder never mix (the last to finish wins, whole).

An existing folder is only replaced when a ``replaceable`` predicate accepts it
(empty, or holding what clnfdiag writes there); anything else is refused, never
deleted.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ClnfdiagWarning, OutputError

#: Prefix of every hidden temporary sibling (files, build folders, replaced folders, probes).
TMP_PREFIX = ".clnfdiag-"

#: ``replaceable(folder) -> bool``: may this existing folder be replaced whole?
Replaceable = Callable[[Path], bool]


def is_empty_folder(folder: Path) -> bool:
    """True for a folder with no entries (the default ``replaceable``)."""
    return not any(Path(folder).iterdir())


# --------------------------------------------------------------------------- checks


def _reason(exc: OSError) -> str:
    """The system's words for an OSError (``Permission denied``), without the errno and path."""
    return exc.strerror or str(exc)


def _probe_writable(folder: Path, option: str, target: Path) -> None:
    """Create and remove an entry in ``folder`` (OutputError when that fails)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=TMP_PREFIX + "probe-", dir=folder))
    except OSError as exc:
        where = "this folder" if Path(os.path.abspath(folder)) == Path(os.path.abspath(target)) else folder
        raise OutputError(f"{option}: cannot write in {where} ({_reason(exc)})", target) from None


def _parent(target: Path, option: str) -> Path:
    """The existing folder ``target`` would be created in (OutputError when there is none)."""
    parent = Path(os.path.abspath(target)).parent
    if not parent.is_dir():
        raise OutputError(f"{option}: folder {parent} does not exist", target)
    return parent


def check_file_target(target: str | os.PathLike, option: str) -> Path:
    """Fail now if ``target`` cannot be written as a regular file.

    Parameters
    ----------
    target : path
        The file to be written (replaced when it exists).
    option : str
        The option naming it (``--json``), for the message.

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        ``target`` is a folder or not a regular file (a device such as
        ``/dev/null``, a pipe), or its folder is missing or not writable.
    """
    p = Path(target)
    if p.is_dir():
        raise OutputError(f"{option}: is a folder; give a file name", p)
    if p.exists() and not p.is_file():
        raise OutputError(f"{option}: not a regular file (a device or a pipe); give a file name", p)
    _probe_writable(_parent(p, option), option, p)
    return p


def check_container(folder: str | os.PathLike, option: str) -> Path:
    """Fail now if entries cannot be written into ``folder`` (created later when missing).

    Raises
    ------
    OutputError
        ``folder`` is a file, or it (when it exists) or its parent (when it
        does not) is missing or not writable.
    """
    f = Path(folder)
    if f.exists() and not f.is_dir():
        raise OutputError(f"{option}: exists and is not a folder", f)
    _probe_writable(f if f.is_dir() else _parent(f, option), option, f)
    return f


def check_folder_target(target: str | os.PathLike, option: str,
                        replaceable: Replaceable = is_empty_folder, what: str = "output") -> Path:
    """Fail now if ``target`` cannot be written (and, when it exists, replaced) as a folder.

    Parameters
    ----------
    target : path
        The folder to be written.
    option : str
        The option naming it (``--report``), for the message.
    replaceable : callable
        Accepts an existing folder that may be replaced whole.
    what : str
        What the folder holds (``a clnfdiag report``), for the refusal message.

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        ``target`` is a file, its parent is missing or not writable, or it is
        an existing folder that ``replaceable`` refuses or that is not writable.
    """
    t = Path(target)
    if t.exists() and not t.is_dir():
        raise OutputError(f"{option}: exists and is not a folder", t)
    _probe_writable(_parent(t, option), option, t)
    if t.is_dir():
        if not replaceable(t):
            raise OutputError(f"{option}: the folder holds files that are not {what}; give a new or "
                              "empty folder (it is replaced whole)", t)
        _probe_writable(t, option, t)  # its old content must be removable
    return t


# --------------------------------------------------------------------------- writing


def _mode(directory: bool) -> int:
    """Permissions a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_file(target: str | os.PathLike, data, option: str) -> Path:
    """Write ``data`` to ``target`` whole: a temporary sibling renamed over it.

    ``data`` is bytes, text (UTF-8), or a callable given the open binary file
    (output streamed from elsewhere, e.g. a spooled JSON).

    Raises
    ------
    OutputError
        The file cannot be written (the temporary file is removed).
    """
    p = Path(target)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write = payload if callable(payload) else (lambda f: f.write(payload))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{p.name}.", dir=_parent(p, option))
    except OSError as exc:
        raise OutputError(f"{option}: cannot write ({_reason(exc)})", p) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, _mode(directory=False))
        os.replace(tmp, p)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{option}: cannot write ({_reason(exc)})", p) from None
        raise
    return p


@contextmanager
def _parent_locked(parent: Path) -> Iterator[None]:
    """Exclusive lock on a folder (flock on its descriptor: nothing is created)."""
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT back (delivered on exit) so a swap of two renames is never cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class LeftoverWarning(ClnfdiagWarning):
    """The previous content of a replaced folder could not be removed."""


def _swap_in(build: Path, target: Path, option: str, replaceable: Replaceable, what: str) -> None:
    """Move ``build`` to ``target``, replacing an existing ``target`` that ``replaceable`` accepts."""
    parent = build.parent
    old: Path | None = None
    with _parent_locked(parent), _interrupts_held():
        if target.is_dir() and not target.is_symlink():
            # Checked again under the lock: another run may have written it meanwhile.
            if not replaceable(target):
                raise OutputError(f"{option}: the folder now holds files that are not {what}; "
                                  "nothing was replaced", target)
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}.old-", dir=parent))
            os.rename(target, old)  # onto the empty placeholder: Linux allows that atomically
        elif target.exists() or target.is_symlink():
            raise OutputError(f"{option}: exists and is not a folder", target)
        try:
            os.rename(build, target)
        except OSError:
            if old is not None:
                os.rename(old, target)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            warnings.warn(f"{target}: the previous content could not be removed; it is in {old}",
                          LeftoverWarning, stacklevel=3)


@contextmanager
def staged_folder(target: str | os.PathLike, option: str, replaceable: Replaceable = is_empty_folder,
                  what: str = "output") -> Iterator[Path]:
    """Build a folder aside and move it to ``target`` whole when the block ends without error.

    Parameters
    ----------
    target : path
        Final folder. An existing one is replaced whole when ``replaceable``
        accepts it (checked now and again under the lock); refused otherwise.
    option : str
        The option naming it, for messages.
    replaceable : callable
        See :func:`check_folder_target`.
    what : str
        What the folder holds, for the refusal message.

    Yields
    ------
    Path
        The hidden build folder next to ``target``: write everything there.

    Raises
    ------
    OutputError
        ``target`` unusable, or the build cannot be moved into place. On any
        error or interrupt the build folder is removed and ``target`` is left
        as it was.
    """
    t = Path(os.path.abspath(target))
    check_folder_target(t, option, replaceable, what)
    try:
        build = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{t.name}.build-", dir=t.parent))
    except OSError as exc:
        raise OutputError(f"{option}: cannot write ({_reason(exc)})", t) from None
    try:
        yield build
        os.chmod(build, _mode(directory=True))
        _swap_in(build, t, option, replaceable, what)
    except BaseException as exc:
        shutil.rmtree(build, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{option}: cannot write ({_reason(exc)})", t) from None
        raise


__all__ = ["check_file_target", "check_container", "check_folder_target", "write_file", "staged_folder", "is_empty_folder",
           "LeftoverWarning", "TMP_PREFIX"]
