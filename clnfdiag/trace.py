"""Stage recording: the single mechanism through which every stage is traced.

The fit loop (:mod:`clnfdiag.clnf.loop`) hands every stage value to its hook;
a :class:`Recorder` is the hook of a traced fit and keeps a copy under the
golden key (:func:`clnfdiag.keys.key_of`: ``pass0/response_raw``,
``pass0/rigid/iter03/mean_shifts`` ..., see ``../shared/golden/FORMAT.md``).

Tracing off means the fitter holds :data:`NULL_RECORDER`: its ``enabled`` is
False, so call sites that would have to build a value only for the trace
(copies, reshapes) test ``rec.enabled`` first; ``record`` itself is a no-op.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .clnf.protocol import StageHook, Where
from .keys import key_of


def trace_digest(stages: dict[str, Any]) -> str:
    """SHA-256 over a trace's keys, dtypes, shapes and bytes, in key order.

    Two traces with the same digest are bit-identical stage by stage: the
    determinism checks compare digests of fits made under other CPUs,
    BLAS kernels and compilers.
    """
    h = hashlib.sha256()
    for key in sorted(stages):
        a = np.ascontiguousarray(stages[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Recorder(StageHook):
    """Collects stage arrays in execution order (the fit loop's hook of a traced fit).

    Attributes
    ----------
    stages : dict[str, numpy.ndarray]
        Recorded arrays (copies: later in-place work of the fitter cannot
        change them), in the order they were recorded.
    prefix : str
        Prepended to every key (used for part models: ``hierarchical/inner/``).
    """

    enabled = True

    def __init__(self, prefix: str = "", stages: dict[str, np.ndarray] | None = None):
        self.prefix = prefix
        self.stages: dict[str, np.ndarray] = {} if stages is None else stages

    def record(self, key: str, value: Any, dtype: Any = None) -> None:
        """Store a copy of ``value`` under ``prefix + key``.

        Parameters
        ----------
        key : str
            Stage key in the golden vocabulary.
        value : array_like or scalar
            Copied; scalars become 0-d arrays.
        dtype : numpy dtype, optional
            Cast to this dtype (the golden's dtype for that key).
        """
        arr = np.array(value, dtype=dtype, copy=True)
        self.stages[self.prefix + key] = arr

    def scoped(self, prefix: str) -> "Recorder":
        """A recorder writing into the same store under an extra prefix."""
        return Recorder(self.prefix + prefix, self.stages)

    def stage(self, where: Where, value: Any, dtype: Any = None) -> Any:
        """The fit loop's call: record ``value`` under the key of ``where`` and go on with it."""
        self.record(key_of(where), value, dtype)
        return value

    def discard(self, where: Where) -> None:
        """Remove the value recorded for ``where`` (if any)."""
        self.stages.pop(self.prefix + key_of(where), None)


class NullRecorder(StageHook):
    """Tracing off: records nothing and costs one attribute look-up per call site."""

    enabled = False
    prefix = ""
    stages: dict[str, np.ndarray] = {}

    def record(self, key: str, value: Any, dtype: Any = None) -> None:  # noqa: D401
        return None

    def scoped(self, prefix: str) -> "NullRecorder":
        return self


NULL_RECORDER = NullRecorder()


class Feeding(Recorder):
    """Recorder that goes on with another value wherever ``lookup(key)`` has one.

    The value the loop computed is recorded either way; the loop then continues
    with ``lookup(key)`` (cast to the stage's dtype) unless that is None. Isolated
    mode feeds the golden's values this way, impact replays a candidate's.

    Parameters
    ----------
    lookup : callable
        ``lookup(key) -> array or None`` for full keys (prefix included).
    """

    def __init__(self, lookup, prefix: str = "", stages: dict[str, np.ndarray] | None = None):
        super().__init__(prefix, stages)
        self.lookup = lookup

    def scoped(self, prefix: str) -> "Feeding":
        return Feeding(self.lookup, self.prefix + prefix, self.stages)

    def stage(self, where: Where, value: Any, dtype: Any = None) -> Any:
        key = self.prefix + key_of(where)
        self.stages[key] = np.array(value, dtype=dtype, copy=True)
        fed = self.lookup(key)
        return value if fed is None else np.asarray(fed, dtype=dtype)
