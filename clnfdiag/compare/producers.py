"""Producers: where the traces a comparison judges come from.

* :class:`FitProducer` — clnfdiag's own CLNF (or a port plugged into its fit loop)
  fits the golden case in isolated mode (:mod:`.isolated`) or propagated mode
  (:mod:`.propagated`), and replays a diverging stage for its impact (:mod:`.impact`);
* :class:`CandidateTraces` — traces another implementation already wrote in the
  golden format (``--candidate``).

A producer is a callable ``(golden_case, mode) -> {key: array}``; the comparator
(:func:`clnfdiag.compare.comparator.run`) only calls it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import InputError
from ..faults import parse_faults
from ..fitter import Fitter
from ..golden import MANIFEST, GoldenCase, find_cases, read_case
from ..ports import load_port, port_trace
from .impact import impact
from .isolated import isolated_trace
from .propagated import propagated_trace

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
    """

    def __init__(self, models: str | Path | None = None, faults: Iterable[str] = (),
                 port: str | None = None):
        self.models = models
        self.faults = parse_faults(list(faults))
        self.port = port
        self._fitter: Any = None
        self._port_fitter: Any = None

    @property
    def fitter(self) -> Any:
        """The loaded Fitter (clnfdiag's own CLNF)."""
        if self._fitter is None:
            self._fitter = Fitter(models=self.models)
        return self._fitter

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
        state["_fitter"] = state["_port_fitter"] = None
        return state

    def __call__(self, case: GoldenCase, mode: str) -> Mapping[str, np.ndarray]:
        fitter = self.candidate_fitter
        return port_trace(PRODUCERS[mode](case, fitter, self.faults), fitter.main)

    def impact(self, case: GoldenCase, candidate: Mapping[str, np.ndarray], stage_key: str) -> Mapping[str, float]:
        """The candidate's ``stage_key`` replayed through clnfdiag's fit (:func:`~.impact.impact`)."""
        return impact(case, candidate, stage_key, self.fitter)


__all__ = ["PRODUCERS", "FitProducer", "CandidateTraces"]
