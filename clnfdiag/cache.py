"""clnfdiag's on-disk caches: results that depend only on bytes, stored under their content hash.

A gate runs on every commit over the same golden cases; what depends only on a
golden's bytes (and the code's version of the computation) is computed once and
kept under ``$XDG_CACHE_HOME/clnfdiag/<name>`` (default ``~/.cache``), one
file per entry named by the SHA-256 of everything it depends on:

``noise``
    noise envelopes (:mod:`clnfdiag.compare.noise`): K perturbed replays of a
    golden's fit, seconds per case;
``verified``
    empty markers: a golden whose manifest and archive bytes were verified
    (every array's shape, dtype, finiteness) is not verified again
    (:func:`clnfdiag.golden.read_case`);
``pyclnf``
    pyclnf's converted model files (:mod:`clnfdiag.ports.pyclnf`).

A changed byte of a golden changes its key, so a stale entry is never read: it
just stays until ``clnfdiag cache clear``. Entries are written whole (to a
temporary name, then renamed), so a reader sees an entry or none; a cache that
cannot be read or written is ignored (the result is computed again). Two
processes about to compute one entry (two workers reaching copies of one
golden) take turns through :func:`key_lock`, so the entry is computed once and
the second reads it. This module is a leaf utility: it imports nothing of
clnfdiag.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

#: Suffix of the lock file beside an entry (:func:`key_lock`); not an entry itself.
LOCK_SUFFIX = ".lock"

#: The caches ``clnfdiag cache`` knows, with what each holds.
CACHES = {
    "noise": "noise envelopes of golden cases (K perturbed replays each)",
    "verified": "golden cases whose arrays were verified (empty markers)",
    "pyclnf": "pyclnf's model files converted from OpenFace's",
}


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/clnfdiag`` (default ``~/.cache/clnfdiag``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "clnfdiag"


def cache_dir(name: str) -> Path:
    """The folder of one cache (not created)."""
    return cache_root() / name


def content_key(parts: Iterable[bytes | str]) -> str:
    """SHA-256 hex digest of the parts, each length-prefixed (so ``("ab", "c")`` and
    ``("a", "bc")`` differ)."""
    h = hashlib.sha256()
    for part in parts:
        b = part.encode() if isinstance(part, str) else bytes(part)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def has_marker(name: str, key: str) -> bool:
    """True when the marker ``key`` exists in cache ``name``."""
    try:
        return (cache_dir(name) / key).is_file()
    except OSError:
        return False


def put_marker(name: str, key: str) -> None:
    """Create the marker ``key`` in cache ``name`` (ignored when the cache cannot be written)."""
    _write(cache_dir(name) / key, b"")


def read_json(name: str, key: str) -> Any | None:
    """The JSON entry ``key`` of cache ``name``, or None when absent or unreadable."""
    try:
        return json.loads((cache_dir(name) / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(name: str, key: str, value: Any) -> None:
    """Store a JSON entry whole (ignored when the cache cannot be written).

    Non-finite floats are kept as JSON's ``Infinity``/``NaN`` on purpose: the cache is
    ours, read back by :func:`json.loads`.
    """
    _write(cache_dir(name) / f"{key}.json", json.dumps(value).encode("utf-8"))


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:
        pass


@contextmanager
def key_lock(name: str, key: str) -> Iterator[None]:
    """Hold an exclusive lock on entry ``key`` of cache ``name`` while computing it.

    The lock is ``fcntl.flock`` on a lock file beside the entry (``.<key>.lock``):
    a second process waits here until the first has written the entry, then finds
    it (the caller reads the cache again once inside). The lock goes with the
    file descriptor, so a killed holder releases it. The lock files stay (removing
    one another process may be waiting on would let a third lock a new file
    meanwhile); they are empty and go with ``clnfdiag cache clear``. A cache
    folder that cannot be written gives no lock: the caller computes unlocked.
    """
    fd = -1
    try:
        folder = cache_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f".{key}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        if fd >= 0:
            os.close(fd)
        fd = -1
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock


def info() -> list[tuple[str, int, int]]:
    """``(name, entries, bytes)`` of each known cache and any other folder under the root."""
    root = cache_root()
    names = list(CACHES)
    if root.is_dir():
        names += sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in CACHES)
    out = []
    for name in names:
        files = ([p for p in cache_dir(name).rglob("*") if p.is_file() and not p.name.endswith(LOCK_SUFFIX)]
                 if cache_dir(name).is_dir() else [])
        out.append((name, len(files), sum(p.stat().st_size for p in files)))
    return out


def clear(names: Iterable[str] | None = None) -> list[str]:
    """Remove the named caches (default: every folder under the root); returns those removed."""
    root = cache_root()
    if names is None:
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    removed = []
    for name in names:
        d = cache_dir(name)
        if d.is_dir():
            shutil.rmtree(d)
            removed.append(name)
    return removed


__all__ = ["CACHES", "cache_root", "cache_dir", "content_key", "has_marker", "put_marker", "read_json",
           "write_json", "key_lock", "info", "clear"]
