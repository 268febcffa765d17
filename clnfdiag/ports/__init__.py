"""Other CLNF implementations plugged into the one fit loop: the port adapter base and its loader.

A port adapter is a :class:`PortOps`: clnfdiag's own CLNF
(:class:`~clnfdiag.clnf.ops.OpenFaceOps`) with the stages the port computes
itself overridden by methods that call the port. Every comparison then runs
the port through the same loop as clnfdiag's fit: isolated mode (each of the
port's stages fed the golden's inputs), propagated mode (the port end to end,
with the golden's box and parameters), and impact replays of whatever it gets
wrong. A stage the adapter does not override is computed by clnfdiag to keep
the loop going, and is **not produced** by the port: it is dropped from the
port's trace, so the comparison lists it as missing instead of judging
clnfdiag's own value as the port's.

``clnfdiag compare GOLDEN... --port MODULE:OBJECT`` (or ``path/to/file.py:OBJECT``)
loads ``OBJECT``, a callable taking the main model's
:class:`~clnfdiag.models.CLNFModel` and returning the adapter (a ``PortOps``
subclass is one). See the README, "Write a port adapter".
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from ..clnf.ops import OpenFaceOps
from ..errors import InputError
from ..keys import kind_of

#: The stage kinds each protocol method produces.
METHOD_KINDS: dict[str, tuple[str, ...]] = {
    "view": ("view_id",),
    "visibilities": ("visibilities",),
    "shape_2d": ("landmarks_at_response",),
    "reference_shape": ("reference_shape",),
    "similarity": ("sim_img_to_ref", "sim_ref_to_img"),
    "area_of_interest": ("area_of_interest",),
    "response_raw": ("response_raw",),
    "response_sigma": ("response_sigma",),
    "response": ("response",),
    "weights": ("weights",),
    "shape_and_jacobian": ("shape", "jacobian"),
    "shape_change_norm": ("shape_change_norm",),
    "window_offsets": ("dxs", "dys"),
    "mean_shifts_ref": ("mean_shifts_ref",),
    "mean_shifts": ("mean_shifts",),
    "update_solver": ("param_update",),
    "update_parameters": ("params_global", "params_local"),
    "landmark_likelihoods": ("landmark_likelihoods",),
    "model_likelihood": ("likelihood",),
}

#: Named ports: ``--port NAME`` is ``--port`` of the spec.
PORTS: dict[str, str] = {"pyclnf": "clnfdiag.ports.pyclnf:PyclnfOps"}


class PortOps(OpenFaceOps):
    """Base of a port adapter: override the stages the port computes (same signatures)."""

    #: Name and version shown in reports (``producer``).
    producer = "port"


def produced_kinds(ops: Any) -> frozenset[str] | None:
    """Stage kinds an adapter computes itself (None: all of them, e.g. clnfdiag's own ops)."""
    if not isinstance(ops, PortOps):
        return None
    own = {name for name in METHOD_KINDS
           if getattr(type(ops), name, None) is not getattr(OpenFaceOps, name)}
    return frozenset(k for name in own for k in METHOD_KINDS[name])


#: Keys no port adapter produces: the start (clnfdiag's box-to-parameters) and the
#: hierarchical refinement (clnfdiag's own part models; an adapter plugs into the main
#: model's stages only).
NOT_PORTED = ("init/", "hierarchical/")


def port_trace(trace: dict, ops: Any) -> dict:
    """The keys of a trace made with ``ops`` that the port produced (see :func:`produced_kinds`).

    Dropped: the stage kinds the adapter does not compute, and :data:`NOT_PORTED`. On a
    hierarchical golden ``final/landmarks`` stays: the port's main fit refined by clnfdiag's
    part models, the end-to-end result of that port inside OpenFace's pipeline.
    """
    kinds = produced_kinds(ops)
    if kinds is None:
        return trace
    attributable = {k for ks in METHOD_KINDS.values() for k in ks}
    return {k: v for k, v in trace.items()
            if not k.startswith(NOT_PORTED) and (kind_of(k) not in attributable or kind_of(k) in kinds)}


class SwappedOps:
    """clnfdiag's own stages with some of a port's in their place: a cause's replay in a live fit.

    Only the named methods run the port's code; every other stage is clnfdiag's, so a fit
    with these ops differs from clnfdiag's (= the golden) by those stages alone, each of them
    computed from the fit's own current values (closed loop, as the port would after fixing
    everything else).

    Parameters
    ----------
    own : OpenFaceOps
        clnfdiag's stages.
    port : PortOps
        The port's.
    methods : iterable of str
        Protocol methods (:data:`METHOD_KINDS`) taken from ``port``.
    """

    def __init__(self, own: Any, port: Any, methods):
        self._own, self._port, self._methods = own, port, frozenset(methods)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port if name in self._methods else self._own, name)


def methods_of(kind: str) -> tuple[str, ...]:
    """The protocol methods producing stage ``kind`` (:data:`METHOD_KINDS`)."""
    return tuple(m for m, kinds in METHOD_KINDS.items() if kind in kinds)


def load_port(spec: str) -> Callable[[Any], Any]:
    """The adapter factory named by ``spec``: a :data:`PORTS` name, ``module:object`` or
    ``path/to/file.py:object``; an :class:`InputError` naming what is wrong otherwise."""
    spec = PORTS.get(spec, spec)
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise InputError(f"--port must be MODULE:OBJECT or FILE.py:OBJECT, got {spec!r}")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target)
            if not path.is_file():
                raise InputError("no such port file", path)
            mod_name = f"clnfdiag_port_{abs(hash(str(path.resolve())))}"
            loader = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[mod_name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except InputError:
        raise
    except Exception as exc:  # a port's own import error, reported in one line
        raise InputError(f"cannot import the port ({type(exc).__name__}: {exc})", target) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"the port module has no callable {name!r}", target)
    return factory


__all__ = ["PortOps", "METHOD_KINDS", "PORTS", "produced_kinds", "port_trace", "load_port", "SwappedOps",
           "methods_of"]
