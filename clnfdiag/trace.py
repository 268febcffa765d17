"""Stage recording: the single mechanism through which every stage is traced.

The fitter receives a recorder and calls ``rec.record(key, value)`` at each
stage. Keys use the golden vocabulary (``pass0/response_raw``,
``pass0/rigid/iter03/mean_shifts`` ...), see ``../shared/golden/FORMAT.md``.

Tracing off means the fitter holds :data:`NULL_RECORDER`: its ``enabled`` is
False, so call sites that would have to build a value only for the trace
(copies, reshapes) test ``rec.enabled`` first; ``record`` itself is a no-op.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .golden import stage_meaning, write_case


def trace_digest(stages: dict[str, Any]) -> str:
    """SHA-256 over a trace's keys, dtypes, shapes and bytes, in key order.

    Two traces with the same digest are bit-identical stage by stage: the
    determinism checks compare digests of fits made under other CPUs,
    BLAS kernels and compilers.
    """
    import hashlib
    h = hashlib.sha256()
    for key in sorted(stages):
        a = np.ascontiguousarray(stages[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


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


class TraceWriter(Recorder):
    """The recorder for other CLNF ports: call it at each stage, then save a golden-format case.

    Keys are checked against the golden vocabulary (``../shared/golden/FORMAT.md``)
    as they are recorded, so a typo fails at once instead of silently leaving a
    stage uncompared. A port records what it has; stages it does not record are
    reported as missing by ``clnfdiag compare``, never as wrong — except
    ``final/landmarks``, which every trace needs.

    Examples
    --------
    >>> from clnfdiag.trace import TraceWriter
    >>> rec = TraceWriter("astronaut_default", "astronaut.png", bbox=(180.8, 85.7, 89.2, 86.8),
    ...                   producer="myport 0.3")
    >>> rec.record("pass0/response", my_maps)                  # (68, 11, 11)
    >>> rec.record(iter_key(0, "rigid", 0, "mean_shifts"), ms)  # (68, 2)
    >>> rec.record("final/landmarks", landmarks)                # (68, 2)
    >>> rec.save("traces/")            # then: clnfdiag compare golden/ --candidate traces/

    Parameters
    ----------
    case_id : str
        The golden case this trace answers (matched by id with ``--candidate``).
    image : path or (H, W[, 3]) uint8 array
        The input picture.
    bbox : (x, y, w, h)
    preset : str
    parameters : dict, optional
        The ``parameters`` block of the manifest (what the port ran with).
    producer : str
        Name and version of the implementation.
    """

    def __init__(self, case_id: str, image, bbox, preset: str = "default",
                 parameters: dict | None = None, producer: str = "unknown CLNF port"):
        super().__init__()
        self.case_id, self.image, self.bbox = case_id, image, tuple(float(v) for v in bbox)
        self.preset, self.parameters, self.producer = preset, dict(parameters or {}), producer

    def record(self, key: str, value: Any, dtype: Any = None) -> None:
        if stage_meaning(self.prefix + key) is None:
            raise InputError(f"{self.prefix + key!r} is not a stage key of the golden format "
                             "(see FORMAT.md)")
        super().record(key, value, dtype)

    def save(self, out_dir, result: dict | None = None) -> Path:
        """Write ``out_dir/<case_id>/`` (manifest.json, image.png, stages.npz)."""
        if "final/landmarks" not in self.stages:
            raise InputError("a trace needs final/landmarks before it can be saved")
        return write_case(out_dir, self.case_id, self.image, self.bbox, self.preset,
                          self.parameters, self.stages, result or {}, self.producer)
