"""How far a case's fit moves under rounding: its noise envelope, measured by perturbed replays.

Two faithful CLNF builds differ only in the last bits of what their libraries
compute (another BLAS kernel sums a Sigma product or a Hessian in another
order), yet on a poorly constrained face those bits grow through the
fixed-point warp and the KDE grid into tenths of a pixel. A landmark move is
therefore only meaningful beyond the move that rounding alone causes on that
very case.

**Perturbation model.** The golden's fit is replayed from its own image and box
(:meth:`clnfdiag.fitter.Fitter.fit_gray` with the manifest's parameters, part
models included) ``K`` times; in each replay every nonzero value of every
post-shift response map and every parameter update is moved by ``k`` units in
the last place, ``k`` drawn from 1..:data:`MAX_ULPS` and the direction at random
(seeded). These are the two places where the C++'s own builds differ: the
patch-expert and Sigma products, the Cholesky solve and the NU-RLMS Hessian
sums (CLNF-NOTES §3–5), which other BLAS kernels sum in other orders. Two
orders of an n-term sum of same-sign terms differ by about sqrt(n)/4 ulps of
the result (each partial sum rounds by up to half an ulp, at random: a random
walk of n steps of standard deviation 1/(2·sqrt(3)) ulp, relative to partial
sums that average half the result); OpenFace's sums run over the 7x7 to 15x15
map values (n = 49..225: 1.75..3.75 ulps) and the 136 rows of the Jacobian
(2.9 ulps), hence 1..3 ulps, applied to every value. Every traced stage is
recorded, so the envelope holds a band per stage (its largest difference from
the unperturbed fit over the K runs, in the comparator's unit for that stage)
and the **band** of the final landmarks (largest distance of a final landmark).
It is a measured lower bound of the case's rounding noise (more runs can only
widen it). The unperturbed fit is clnfdiag's own, which is the golden bit for
bit, so the bands are spreads around the golden itself.

Envelopes depend only on the golden case (its bytes), the model and the code
version, so they are cached under ``$XDG_CACHE_HOME/clnfdiag/noise`` (default
``~/.cache``) by content hash: a repeated gate pays nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import cache
from ..fitter import Fitter
from ..golden import GoldenCase
from ..trace import Recorder
from ..keys import kind_of
from .metrics import abs_diff, family, point_errors
from .propagated import case_parameters
from .struct import Envelope

F32 = np.float32

#: Replays per envelope (``compare --noise-runs``). A flip (a landmark crossing a warp or
#: KDE grid boundary) is a rare event on a well-constrained face, and the band is the
#: largest move seen, so the sample must be large enough to meet events of a few percent:
#: with 64 runs an event of probability 5 % is missed with probability 0.95**64 < 4 %.
DEFAULT_RUNS = 64
#: Seed of the first replay; replay ``i`` uses ``SEED + i``.
SEED = 20261130
#: Stage kinds perturbed (see the module docstring).
PERTURBED_KINDS = ("response", "param_update")
#: Largest perturbation, in ulps: the typical difference of two summation orders of OpenFace's
#: longest sums (sqrt(n)/4 for n up to 225 map values or 136 Jacobian rows, module docstring).
MAX_ULPS = 3
#: Bumped whenever the perturbation model or the fit changes what an envelope measures.
MODEL_VERSION = "noise-3"
#: The cache (:mod:`clnfdiag.cache`) holding envelopes by content hash.
CACHE = "noise"
#: The key of the final landmarks (the band).
_FINAL = "final/landmarks"


class _Perturb(Recorder):
    """Recorder moving every nonzero value of the perturbed stages by 1..MAX_ULPS ulps, up or
    down at random, and recording what the fit goes on with."""

    def __init__(self, rng: np.random.Generator, prefix: str = "", stages: dict | None = None):
        super().__init__(prefix, stages)
        self.rng = rng

    def scoped(self, prefix: str) -> "_Perturb":
        return _Perturb(self.rng, self.prefix + prefix, self.stages)

    def stage(self, where, value: Any, dtype: Any = None) -> Any:
        if where.name in PERTURBED_KINDS:
            v = np.asarray(value, dtype=F32)
            target = np.where(self.rng.random(v.shape) < 0.5, F32(np.inf), F32(-np.inf))
            steps = self.rng.integers(1, MAX_ULPS + 1, v.shape)
            moved = v
            for step in range(MAX_ULPS):
                moved = np.where(steps > step, np.nextafter(moved, target), moved)
            value = np.where(v != 0, moved, v).astype(F32)
        return super().stage(where, value, dtype)


def stage_spread(key: str, a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference of two values of one stage, in the comparator's ``max_abs`` unit.

    Points (``(n, 2)`` positions and displacements): largest Euclidean distance
    per landmark (px); everything else: largest elementwise difference. Shapes
    that differ (a run whose iteration ended otherwise) give ``inf``.
    """
    if np.shape(a) != np.shape(b):
        return float("inf")
    if np.size(a) == 0:
        return 0.0
    if family(kind_of(key), np.shape(a)) == "points":
        return float(point_errors(b, a).max())
    return float(abs_diff(b, a).max())


def _fit(case: GoldenCase, fitter: Fitter, hook: Recorder) -> dict[str, np.ndarray]:
    gray = case.stage("input/gray")
    fitter.fit_gray(gray, case.bbox, case_parameters(case), hook)
    return hook.stages


def measure(case: GoldenCase, fitter: Fitter, runs: int = DEFAULT_RUNS) -> Envelope:
    """The case's envelope from ``runs`` perturbed fits (no cache).

    Parameters
    ----------
    case : GoldenCase
    fitter : Fitter
        clnfdiag's own CLNF (the unperturbed fit reproduces the golden).
    runs : int
        K, the perturbed fits (>= 1).
    """
    base = _fit(case, fitter, Recorder())
    bands: dict[str, float] = {}
    per_run: list[float] = []
    lm_band = np.zeros(len(base[_FINAL]), np.float64)
    for i in range(runs):
        trace = _fit(case, fitter, _Perturb(np.random.default_rng(SEED + i)))
        for key, value in trace.items():
            if key in base:
                bands[key] = max(bands.get(key, 0.0), stage_spread(key, base[key], value))
        moved = np.linalg.norm(trace[_FINAL].astype(np.float64) - base[_FINAL], axis=-1)
        lm_band = np.maximum(lm_band, moved)
        per_run.append(float(moved.max()))
    return Envelope(max(per_run, default=0.0), runs, tuple(per_run), tuple(lm_band.tolist()), bands)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clnfdiag/noise`` (default ``~/.cache/clnfdiag/noise``)."""
    return cache.cache_dir(CACHE)


def _cache_key(case: GoldenCase, runs: int) -> str:
    """Content key of an envelope: everything it depends on.

    The manifest (image SHA-256, box, parameters, layout) without its case id (a
    name: two copies of one golden under two ids have one envelope), the archive's
    bytes, and the measurement's version, K and seed. Any other change of the
    golden gives another key, so a stale envelope is never read.
    """
    manifest = {k: v for k, v in case.manifest.items() if k != "case"}
    raw = getattr(case.stages, "raw_bytes", None)
    archive = raw() if raw is not None else (Path(case.path) / "stages.npz").read_bytes()
    return cache.content_key([json.dumps(manifest, sort_keys=True), archive,
                              f"{MODEL_VERSION}|{runs}|{SEED}"])


def envelope(case: GoldenCase, fitter: Fitter, runs: int = DEFAULT_RUNS) -> Envelope:
    """The case's envelope, from the cache when this golden's bytes were measured before.

    A cache that cannot be read or written is ignored (measured again). Processes
    needing one envelope at once (workers reaching copies of one golden) measure it
    once: the others wait on the entry's lock (:func:`clnfdiag.cache.key_lock`) and
    then read it.
    """
    key = _cache_key(case, runs)
    env = _cached(key)
    if env is not None:
        return env
    with cache.key_lock(CACHE, key):
        env = _cached(key)  # measured by another process while this one waited
        if env is None:
            env = measure(case, fitter, runs)
            # inf (a stage whose shape changed in some run) is kept as JSON's Infinity on purpose.
            cache.write_json(CACHE, key, env.to_json())
    return env


def _cached(key: str) -> Envelope | None:
    """The cached envelope ``key``, or None (absent, unreadable or not an envelope)."""
    cached = cache.read_json(CACHE, key)
    if cached is not None:
        try:
            return Envelope.from_json(cached)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    return None


__all__ = ["Envelope", "envelope", "measure", "stage_spread", "cache_dir", "DEFAULT_RUNS",
           "PERTURBED_KINDS"]
