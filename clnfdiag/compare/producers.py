"""Producers: where the traces a comparison judges come from.

* :class:`FitProducer` — clnfdiag's own CLNF (or a port plugged into its fit loop)
  fits the golden case in isolated mode (:mod:`.isolated`) or propagated mode
  (:mod:`.propagated`), and replays a diverging stage for its impact (:mod:`.impact`);
* :class:`CandidateTraces` — traces another implementation already wrote in the
  golden format (``--candidate``);
* :class:`Replays` — what every comparison asks of clnfdiag's own fit whatever
  produced the candidate: impact replays (:mod:`.impact`), the case's noise
  envelope (:mod:`.noise`) and known-fault signatures.

A producer is a callable ``(golden_case, mode) -> {key: array}``; the comparator
(:func:`clnfdiag.compare.comparator.run`) only calls it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import InputError
from ..faults import FAULTS, parse_faults
from ..fitter import Fitter
from ..golden import MANIFEST, GoldenCase, find_cases, read_case
from ..keys import kind_of, parse
from ..ports import SwappedOps, load_port, methods_of, port_trace
from .impact import fit_impact, impact
from .isolated import isolated_trace
from .noise import DEFAULT_RUNS, envelope, stage_spread
from .propagated import propagated_trace
from .struct import Envelope

#: The trace producer of each mode.
PRODUCERS = {"isolated": isolated_trace, "propagated": propagated_trace}


class CandidateTraces:
    """Producer of traces already written in the golden format (no fitting).

    Parameters
    ----------
    root : path
        A candidate case folder, or a folder of candidate case folders
        matched to golden cases by folder name (= case id).
    match_any : bool
        With a single candidate case folder, use it for any golden case (the
        CLI sets this when exactly one golden case is compared); otherwise
        its folder name or manifest case id must equal the golden's.
    verify : bool
        Check every candidate array against its manifest (shape, dtype). NaN
        and inf are allowed: they are what the comparison is for (a NaN stage
        diverges there), unlike in a golden.
    """

    def __init__(self, root: str | Path, match_any: bool = False, verify: bool = True):
        self.root = Path(root)
        self.match_any = match_any
        self.verify = verify
        self.single: Path | None = None
        self.by_id: dict[str, Path] = {}
        if (self.root / MANIFEST).is_file():
            self.single = self.root
        elif self.root.is_dir():
            self.by_id = {p.name: p for p in find_cases([self.root])}
        else:
            raise InputError("no such candidate folder", self.root)
        self._cache: tuple[Path, dict[str, np.ndarray]] | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None  # worker processes read their own
        return state

    def path_for(self, case_id: str) -> Path:
        """Candidate folder for a golden case id (InputError when there is none)."""
        if self.single is not None:
            return self.single
        if case_id not in self.by_id:
            raise InputError(f"no candidate trace for golden case {case_id!r}: candidate case folders are "
                             f"matched by case id (make one with clnfdiag fit ... --trace-out "
                             f"{self.root} --case-id {case_id}, or TraceWriter({case_id!r}, ...))", self.root)
        return self.by_id[case_id]

    def __call__(self, case: GoldenCase, mode: str) -> dict[str, np.ndarray]:
        path = self.path_for(case.case_id)
        if self._cache is not None and self._cache[0] == path:
            return self._cache[1]
        with read_case(path, verify=self.verify, finite=False) as cand:
            if self.single is not None and not self.match_any and case.case_id not in (path.name, cand.case_id):
                raise InputError(f"candidate is case {cand.case_id!r}, golden is {case.case_id!r}", path)
            trace = {k: np.array(cand.stage(k)) for k in cand.keys()}
        self._cache = (path, trace)
        return trace


#: A candidate matches a known fault at a stage when it is at least this many times closer to
#: the fault's value (clnfdiag's fit with the fault injected, same golden inputs) than to the
#: golden's: an order of magnitude, so that a port that merely rounds differently from both
#: is not named after a fault.
SIGNATURE_RATIO = 10.0


class Replays:
    """clnfdiag's own fit, for what a comparison asks of it: impact replays, noise envelopes,
    known-fault signatures. Whatever produced the candidate (clnfdiag, a port, written traces),
    these always run clnfdiag's CLNF, which reproduces the goldens bit for bit.

    The fitter is loaded on first use, once per process; pickling drops it and the caches.

    Parameters
    ----------
    models : path, optional
        Model folder.
    noise_runs : int
        K of the noise envelopes (``--noise-runs``).
    fitter : Fitter, optional
        An already loaded fitter to use.
    """

    def __init__(self, models: str | Path | None = None, noise_runs: int = DEFAULT_RUNS,
                 fitter: Any = None):
        self.models = models
        self.noise_runs = noise_runs
        self._fitter = fitter
        self._case_path: str | None = None
        self._case_cache: dict = {}

    @property
    def fitter(self) -> Any:
        if self._fitter is None:
            self._fitter = Fitter(models=self.models)
        return self._fitter

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fitter"], state["_case_path"], state["_case_cache"] = None, None, {}
        return state

    def case_cache(self, case: GoldenCase, name: str) -> dict:
        """A cache of results that hold for one golden case (replay baselines, fault traces,
        a port's swapped fits), by ``name``; all are dropped when another case comes (a run
        goes case by case, and both modes of a case ask the same)."""
        path = str(case.path)
        if path != self._case_path:
            self._case_path, self._case_cache = path, {}
        return self._case_cache.setdefault(name, {})

    def impact(self, case: GoldenCase, candidate: Mapping[str, np.ndarray],
               stage_keys: str | tuple[str, ...]) -> Mapping[str, float]:
        """The candidate's ``stage_keys`` replayed through clnfdiag's fit (:func:`~.impact.impact`)."""
        return impact(case, dict(candidate), stage_keys, self.fitter, self.case_cache(case, "baselines"))

    def envelope(self, case: GoldenCase) -> Envelope:
        """The case's noise envelope (cached on disk by content, :func:`~.noise.envelope`; both
        modes of a case read it once)."""
        held = self.case_cache(case, "envelope")
        if "envelope" not in held:
            held["envelope"] = envelope(case, self.fitter, self.noise_runs)
        return held["envelope"]

    def signature(self, case: GoldenCase, candidate: Mapping[str, np.ndarray],
                  stage_keys: str | tuple[str, ...]) -> str | None:
        """The known fault whose values of ``stage_keys`` (stages of one kind) the candidate's match.

        Each fault that corrupts the kind first (:attr:`Fault.stage`) is injected into
        clnfdiag's isolated recomputation of the case (same golden inputs). It is judged at
        the first of ``stage_keys`` where it changes the golden's value at all (a fault may
        leave a stage exact where its arithmetic agrees, e.g. an exact kernel at grid-point
        offsets); the candidate matches it when it is :data:`SIGNATURE_RATIO` times closer to
        the fault's value than to the golden's there.

        Returns
        -------
        str or None
            The closest matching fault's name.
        """
        keys = (stage_keys,) if isinstance(stage_keys, str) else tuple(stage_keys)
        keys = tuple(k for k in keys if k in candidate and case.has(k))
        if not keys:
            return None
        kind = kind_of(keys[0])
        traces = self.case_cache(case, "fault traces")
        best, best_d = None, np.inf
        for name, fault in FAULTS.items():
            if fault.stage != kind:
                continue
            if name not in traces:
                traces[name] = isolated_trace(case, self.fitter, frozenset({name}))
            faulty = traces[name]
            key = next((k for k in keys if k in faulty
                        and stage_spread(k, faulty[k], case.stage(k)) > 0), None)
            if key is None:
                continue
            cand = np.asarray(candidate[key])
            d = stage_spread(key, cand, faulty[key])
            if d * SIGNATURE_RATIO <= stage_spread(key, cand, case.stage(key)) and d < best_d:
                best, best_d = name, d
        return best


class FitProducer:
    """Producer fitting with this project's :class:`~clnfdiag.fitter.Fitter`, or with a port.

    The fitter (model) is loaded on first use, once per process; pickling
    drops it, so worker processes load their own.

    Parameters
    ----------
    models : path, optional
        Model folder (``Fitter(models=...)``).
    faults : iterable of str
        Faults to inject (names from :data:`clnfdiag.faults.FAULTS`).
    port : str, optional
        A port adapter (``--port`` spec, see :mod:`clnfdiag.ports`): its stages
        run in the fit loop instead of clnfdiag's, and its trace keeps the stages
        it produces. Impact replays always use clnfdiag's own CLNF.
    noise_runs : int
        K of the noise envelopes.

    Attributes
    ----------
    replays : Replays
        clnfdiag's own fit for impacts, envelopes and signatures (shares the fitter).
    """

    def __init__(self, models: str | Path | None = None, faults: Iterable[str] = (),
                 port: str | None = None, noise_runs: int = DEFAULT_RUNS):
        self.models = models
        self.faults = parse_faults(list(faults))
        self.port = port
        self.replays = Replays(models, noise_runs)
        self._port_fitter: Any = None
        self._swapped: dict[tuple[str, ...], Any] = {}

    @property
    def fitter(self) -> Any:
        """The loaded Fitter (clnfdiag's own CLNF)."""
        return self.replays.fitter

    @property
    def candidate_fitter(self) -> Any:
        """The Fitter whose traces are judged: the port's when there is one."""
        if self.port is None:
            return self.fitter
        if self._port_fitter is None:
            self._port_fitter = Fitter(self.fitter.model, main_ops=load_port(self.port))
        return self._port_fitter

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_port_fitter"], state["_swapped"] = None, {}
        return state

    def cause_impact(self, case: GoldenCase, candidate: Mapping[str, np.ndarray],
                     stage_keys: str | tuple[str, ...]) -> Mapping[str, float]:
        """A cause's impact.

        With a port: the port's methods computing the stage kind swapped into clnfdiag's fit,
        end to end (closed loop: each computed from the fit's own values, as in the port once
        everything else is fixed; swapping recorded values instead would hold them fixed while
        the fit moves, and overstate what a self-correcting stage such as the mean-shift
        does). A kind no port method computes raises NotImplementedError (impact unknown).
        Without a port: the candidate's values swapped into a replay (:meth:`Replays.impact`).
        """
        if self.port is None:
            return self.replays.impact(case, candidate, stage_keys)
        sk = parse(stage_keys if isinstance(stage_keys, str) else stage_keys[0])
        methods = methods_of(sk.kind) if sk.part is None else ()
        if not methods:
            # No method of the port computes it (parameters carried between passes, counts, a
            # part model's stages): a consequence of the port's stages, not one to fix.
            raise NotImplementedError(f"no port method produces {sk.kind}")
        if methods not in self._swapped:
            own = self.fitter
            swapped = SwappedOps(own.main, self.candidate_fitter.main, methods)
            self._swapped[methods] = Fitter(own.model, main_ops=lambda clnf: swapped)
        results = self.replays.case_cache(case, "swapped fits")   # both modes ask the same
        if methods not in results:
            results[methods] = fit_impact(case, self._swapped[methods])
        return results[methods]

    def __call__(self, case: GoldenCase, mode: str) -> Mapping[str, np.ndarray]:
        fitter = self.candidate_fitter
        return port_trace(PRODUCERS[mode](case, fitter, self.faults), fitter.main)


__all__ = ["PRODUCERS", "FitProducer", "CandidateTraces", "Replays", "SIGNATURE_RATIO"]
