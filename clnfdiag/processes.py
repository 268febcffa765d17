"""Worker processes: how many, and how they stay quiet on Ctrl-C.

Ctrl-C in a terminal sends SIGINT to the whole process group. The main process
turns it into one line and exit 130 (:mod:`clnfdiag.cli_support`) and stops its
pools; a worker that got it too would only print a traceback of its own. So
workers are started with SIGINT blocked (:func:`interrupts_blocked` around the
code that starts them: a blocked mask is inherited through ``fork`` and kept
through ``exec``, so there is no window before a worker's initializer runs), then
ignore it (:func:`ignore_interrupts` as their initializer), and are stopped
by the main process when it is interrupted (:func:`terminate_workers`).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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
def interrupts_blocked() -> Iterator[None]:
    """SIGINT kept from the processes started in the block (wrap the start of worker processes).

    The block blocks SIGINT in this (the main) thread instead of ignoring it
    process-wide. A process forked here inherits the blocked mask, so an
    interrupt cannot reach it before its initializer ignores SIGINT (a signal
    pending in a child is discarded when it is ignored, and a parent's pending
    one is never inherited). This process loses nothing: an interrupt during the
    block either reaches another of its threads, whose C-level handler flags it
    for the main thread (KeyboardInterrupt as usual), or stays pending here until
    the mask is restored. (Ignoring it process-wide lost it whenever the kernel
    handed it to a thread that did not block it, e.g. a BLAS worker thread.)
    Outside the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextmanager
def _sigint_wrapped(wrap: Callable[[Callable], Callable]) -> Iterator[Callable | None]:
    """Within the block SIGINT goes to ``wrap(previous)``, and ``previous`` is back after it.

    Yields ``previous``, or None when nothing was installed: outside the main thread (only
    it may set handlers), or with SIGINT not at a Python handler (ignored, as in a worker).
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):
        yield None
        return
    signal.signal(signal.SIGINT, wrap(previous))
    try:
        yield previous
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C during the block takes effect at its end, not inside it.

    Python raises KeyboardInterrupt between any two bytecodes of the main thread. Inside
    code that holds a lock for a moment (numba loading a kernel from its cache holds
    llvmlite's lock; a process pool's ``submit`` holds the pool's) it can leave that lock
    held for ever, and the next thread to want it hangs: an interrupted warm-up waited
    on its Sigma thread for ever, blocked on llvmlite's lock (seen). The block replaces
    the SIGINT handler with one that only notes the interrupt; on leaving it the previous
    handler is back and is called for a noted interrupt (the default one raises
    KeyboardInterrupt there). Nested blocks pass it outwards. Outside the main thread,
    or with SIGINT not at a Python handler (ignored, as in a worker), it does nothing.
    """
    noted: list[tuple[int, object]] = []
    previous = None
    try:
        with _sigint_wrapped(lambda _: lambda signum, frame: noted.append((signum, frame))) as previous:
            yield
    finally:
        if noted and previous is not None:
            previous(*noted[0])


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

    def noting(previous: Callable) -> Callable:
        def note(signum, frame):
            came.append(True)
            previous(signum, frame)
        return note

    sys.unraisablehook = lambda report: None if came else previous_hook(report)
    try:
        with _sigint_wrapped(noting):
            yield
    finally:
        sys.unraisablehook = previous_hook


def caused_by_interrupt(exc: BaseException) -> bool:
    """``exc`` is a KeyboardInterrupt or was raised because of one (its ``__cause__`` or
    ``__context__`` chain holds one): numba's dispatcher, interrupted while it ran Python
    code, reports ``SystemError: ... returned a result with an exception set`` caused by the
    KeyboardInterrupt."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def terminate_workers(executor: ProcessPoolExecutor) -> None:
    """Stop a pool's processes now (on Ctrl-C: no result is wanted any more).

    Shutting the pool down instead would wait for every task already handed to
    the workers, which ignore SIGINT: seconds to tens of seconds.
    """
    # concurrent.futures has no public way before Python 3.14 (terminate_workers).
    for proc in list((getattr(executor, "_processes", None) or {}).values()):
        proc.terminate()


__all__ = ["usable_cpus", "ignore_interrupts", "interrupts_blocked", "interrupts_deferred", "quiet_after_interrupt",
           "caused_by_interrupt", "terminate_workers"]
