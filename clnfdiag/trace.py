"""Stage recording: the single mechanism through which every stage is traced.

The fitter receives a recorder and calls ``rec.record(key, value)`` at each
stage. Keys use the golden vocabulary (``pass0/response_raw``,
``pass0/rigid/iter03/mean_shifts`` ...), see ``../shared/golden/FORMAT.md``.

Tracing off means the fitter holds :data:`NULL_RECORDER`: its ``enabled`` is
False, so call sites that would have to build a value only for the trace
(copies, reshapes) test ``rec.enabled`` first; ``record`` itself is a no-op.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def pass_key(pass_index: int, name: str) -> str:
    """Key of a per-pass stage, e.g. ``pass_key(0, "response")`` -> ``pass0/response``."""
    return f"pass{pass_index}/{name}"


def phase_key(pass_index: int, phase: str, name: str) -> str:
    """Key of a per-phase value, e.g. ``pass1/rigid/weights``."""
    return f"pass{pass_index}/{phase}/{name}"


def iter_key(pass_index: int, phase: str, iteration: int, name: str) -> str:
    """Key of a per-iteration value, e.g. ``pass0/nonrigid/iter04/param_update``."""
    return f"pass{pass_index}/{phase}/iter{iteration:02d}/{name}"


class Recorder:
    """Collects stage arrays in execution order.

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


class NullRecorder:
    """Tracing off: records nothing and costs one attribute look-up per call site."""

    enabled = False
    prefix = ""
    stages: dict[str, np.ndarray] = {}

    def record(self, key: str, value: Any, dtype: Any = None) -> None:  # noqa: D401
        return None

    def scoped(self, prefix: str) -> "NullRecorder":
        return self


NULL_RECORDER = NullRecorder()
