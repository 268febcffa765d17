"""``clnfdiag cache``: what clnfdiag keeps under ``$XDG_CACHE_HOME/clnfdiag``, and clearing it.

* ``clnfdiag cache info`` prints the folder and, per cache (:data:`clnfdiag.cache.CACHES`),
  its entries and size;
* ``clnfdiag cache clear [NAME...]`` removes the named caches (default: all).

Every entry is keyed by the SHA-256 of what it depends on, so a changed golden or
model never reads a stale entry; clearing only frees the disk (and makes the next
gate pay for measuring again). Exit codes: 0 done, 2 an unknown cache name or a
folder that cannot be removed (one line on stderr).

Registered on the root group in :mod:`clnfdiag.cli`; it also runs on its own.
"""
from __future__ import annotations

import click

from . import cache
from .cli_support import run_body
from .errors import InputError, OutputError


@click.group("cache")
def cache_group() -> None:
    """Show or clear clnfdiag's caches (noise envelopes, verified goldens, converted models)."""


@cache_group.command("info")
def info() -> None:
    """Print the cache folder and each cache's entries and size."""
    def body() -> int:
        click.echo(f"cache folder: {cache.cache_root()}")
        for name, entries, size in cache.info():
            what = cache.CACHES.get(name, "not clnfdiag's own cache")
            click.echo(f"{name:10s} {entries:7d} entries {size / 1e6:10.2f} MB  {what}")
        return 0
    raise click.exceptions.Exit(run_body(body))


@cache_group.command("clear")
@click.argument("names", nargs=-1, metavar="[NAME]...")
def clear(names: tuple[str, ...]) -> None:
    """Remove the named caches (noise, verified, pyclnf); all of them without NAME."""
    def body() -> int:
        unknown = [n for n in names if n not in cache.CACHES]
        if unknown:
            raise InputError(f"unknown cache {unknown[0]!r}; expected one of {', '.join(cache.CACHES)}")
        try:
            removed = cache.clear(names or None)
        except OSError as exc:
            raise OutputError(f"cannot remove ({exc.strerror or exc})", exc.filename or cache.cache_root()) from None
        click.echo(f"removed {', '.join(removed)} from {cache.cache_root()}" if removed
                   else f"nothing to remove in {cache.cache_root()}")
        return 0
    raise click.exceptions.Exit(run_body(body))


__all__ = ["cache_group"]
