"""How far a case's fit moves under rounding: its noise envelope, measured by perturbed replays.

Two faithful CLNF builds differ only in the last bits of what their libraries
compute (another BLAS kernel sums a Sigma product or a Hessian in another
order), yet on a poorly constrained face those bits grow through the
fixed-point warp and the KDE grid into tenths of a pixel. A landmark move is
therefore only meaningful beyond the move that rounding alone causes on that
very case.

**Perturbation model.** The golden's fit is replayed from its own start
(:func:`clnfdiag.clnf.loop.fit_passes`, main model) ``K`` times; in each replay
every nonzero value of every pass's post-shift response maps and every
parameter update is moved by one unit in the last place, up or down at random
(seeded). These are the two places where the C++'s own builds differ (the
patch-expert products and Cholesky, the NU-RLMS Hessian sums: CLNF-NOTES
§3–5), by one or a few ulps on a fraction of the values; one ulp on every
value is the same size of difference, applied everywhere. The **band** is the
largest distance of a final landmark from the unperturbed replay over the K
runs. It is a measured lower bound of the case's rounding noise (more runs can
only widen it).

Envelopes depend only on the golden case (its bytes), the model and the code
version, so they are cached under ``$XDG_CACHE_HOME/clnfdiag/noise`` (default
``~/.cache``) by content hash: a repeated gate pays nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..clnf.loop import NO_HOOK, fit_passes
from ..clnf.protocol import StageHook, Where
from ..fitter import Fitter
from ..golden import GoldenCase
from .propagated import case_parameters

F32 = np.float32

#: Replays per envelope. A flip (a landmark crossing a warp or KDE grid boundary) is a
#: rare event on a well-constrained face, and the band is the largest move seen, so
#: the sample must be large enough to meet events of a few percent: with 64 runs an
#: event of probability 5 % is missed with probability 0.95**64 < 4 %.
DEFAULT_RUNS = 64
#: Seed of the first replay; replay ``i`` uses ``SEED + i``.
SEED = 20261130
#: Stage kinds perturbed (see the module docstring).
PERTURBED_KINDS = ("response", "param_update")
#: Bumped whenever the perturbation model or the fit changes what an envelope measures.
MODEL_VERSION = "noise-1"


@dataclass(frozen=True)
class Envelope:
    """A case's measured rounding noise.

    Attributes
    ----------
    band_px : float
        Largest final-landmark distance from the unperturbed replay over the runs (px).
    runs : int
    per_run_px : tuple[float, ...]
    """

    band_px: float
    runs: int
    per_run_px: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"band_px": self.band_px, "runs": self.runs, "per_run_px": list(self.per_run_px),
                "version": MODEL_VERSION}


class _Perturb(StageHook):
    """Hook moving every nonzero value of the perturbed stages by one ulp, up or down at random."""

    enabled = True

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def stage(self, where: Where, value: Any, dtype: Any = None) -> Any:
        if where.name not in PERTURBED_KINDS:
            return value
        v = np.asarray(value, dtype=F32)
        up = self.rng.random(v.shape) < 0.5
        moved = np.where(up, np.nextafter(v, F32(np.inf)), np.nextafter(v, F32(-np.inf)))
        return np.where(v != 0, moved, v).astype(F32)


def _replay_landmarks(case: GoldenCase, fitter: Fitter, hook) -> np.ndarray:
    gray = case.stage("input/gray").astype(F32)
    out = fit_passes(fitter.main, gray, case.stage("init/params_global"),
                     case.stage("init/params_local"), case_parameters(case), hook)
    return fitter.main.shape_2d(out.params_local, out.params_global)


def measure(case: GoldenCase, fitter: Fitter, runs: int = DEFAULT_RUNS) -> Envelope:
    """The case's envelope from ``runs`` perturbed replays (no cache)."""
    base = _replay_landmarks(case, fitter, NO_HOOK)
    per_run = []
    for i in range(runs):
        lm = _replay_landmarks(case, fitter, _Perturb(np.random.default_rng(SEED + i)))
        per_run.append(float(np.linalg.norm(lm - base, axis=-1).max()))
    return Envelope(max(per_run, default=0.0), runs, tuple(per_run))


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clnfdiag/noise`` (default ``~/.cache/clnfdiag/noise``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "clnfdiag" / "noise"


def _cache_key(case: GoldenCase, runs: int) -> str:
    h = hashlib.sha256()
    for name in ("manifest.json", "stages.npz"):
        h.update((Path(case.path) / name).read_bytes())
    h.update(f"{MODEL_VERSION}|{runs}|{SEED}".encode())
    return h.hexdigest()


def envelope(case: GoldenCase, fitter: Fitter, runs: int = DEFAULT_RUNS) -> Envelope:
    """The case's envelope, from the cache when this golden's bytes were measured before.

    A cache that cannot be read or written is ignored (measured again).
    """
    path = cache_dir() / f"{_cache_key(case, runs)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Envelope(float(data["band_px"]), int(data["runs"]), tuple(data["per_run_px"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    env = measure(case, fitter, runs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(env.to_json()), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass
    return env


__all__ = ["Envelope", "envelope", "measure", "cache_dir", "DEFAULT_RUNS", "PERTURBED_KINDS"]
