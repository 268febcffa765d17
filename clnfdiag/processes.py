"""Worker processes: how many, and how they stay quiet on Ctrl-C.

Ctrl-C in a terminal sends SIGINT to the whole process group. The main process
turns it into one line and exit 130 (:mod:`clnfdiag.cli_support`) and stops its
pools; a worker that got it too would only print a traceback of its own. So
workers are started with SIGINT ignored (:func:`interrupts_ignored` around the
code that starts them: an ignored signal stays ignored through ``fork`` and
``exec``, so there is no window before a worker's initializer runs), keep
ignoring it (:func:`ignore_interrupts` as their initializer), and are stopped
by the main process when it is interrupted (:func:`terminate_workers`).
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def ignore_interrupts() -> None:
    """Worker initializer: SIGINT is the main process's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block (wrap the start of worker processes).

    An interrupt during the block is lost; the block should only start processes.
    Outside the main thread (where signal handlers cannot be set) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def terminate_workers(executor: ProcessPoolExecutor) -> None:
    """Stop a pool's processes now (on Ctrl-C: no result is wanted any more).

    Shutting the pool down instead would wait for every task already handed to
    the workers, which ignore SIGINT: seconds to tens of seconds.
    """
    # concurrent.futures has no public way before Python 3.14 (terminate_workers).
    for proc in list((getattr(executor, "_processes", None) or {}).values()):
        proc.terminate()


__all__ = ["usable_cpus", "ignore_interrupts", "interrupts_ignored", "terminate_workers"]
