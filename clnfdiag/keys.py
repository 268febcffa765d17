"""The stage-key vocabulary of the golden format: the one place that builds and parses keys.

A key names one traced value of a CLNF fit (``../shared/golden/FORMAT.md``)::

    input/gray, init/params_global, final/landmarks, ...        outside the passes
    pass0/response_raw                                          per pass
    pass0/rigid/weights, pass0/rigid/n_updates                  per phase
    pass0/rigid/iter03/mean_shifts                              per iteration (two digits)
    hierarchical/inner/landmarks, hierarchical/inner/pass0/...  part models
    hypothesis03/init/params_global, hypothesis03/pass0/...     one multi-view hypothesis

The fit loop names stages by :class:`~clnfdiag.clnf.protocol.Where`;
:func:`key_of` turns one into its key and :func:`parse` does the reverse.
The **kind** of a key is its last component (``mean_shifts``): tolerances,
metrics and report columns are per kind.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from .clnf.protocol import Where

#: Phases in the order OpenFace runs them inside a pass.
PHASES = ("rigid", "nonrigid")
#: Key prefix of a hierarchical part model's values.
HIERARCHICAL = "hierarchical/"
#: Key prefix of one multi-view hypothesis's whole fit (``hypothesis03/pass0/response``): the
#: hypothesis index in OpenFace's order, two digits. The chosen hypothesis is also the main trace.
HYPOTHESIS = "hypothesis"
_HYPOTHESIS = re.compile(r"^hypothesis(?P<h>\d{2})/(?P<rest>.+)$")

_KEY = re.compile(r"^(?:hierarchical/(?P<part>[^/]+)/)?pass(?P<pass>\d+)/"
                  r"(?:(?P<phase>rigid|nonrigid)/)?(?:iter(?P<iter>\d{2})/)?(?P<name>[^/]+)$")


class StageKey(NamedTuple):
    """A parsed key: :class:`Where` plus the part model (None for the main model)."""

    name: str
    pass_index: int | None = None
    phase: str | None = None
    iteration: int | None = None
    part: str | None = None

    @property
    def kind(self) -> str:
        """The stage kind (``final/landmarks`` -> ``landmarks``)."""
        return kind_of(self.name)


def pass_key(pass_index: int, name: str) -> str:
    """Key of a per-pass stage: ``pass_key(0, "response")`` -> ``pass0/response``."""
    return f"pass{pass_index}/{name}"


def phase_key(pass_index: int, phase: str, name: str) -> str:
    """Key of a per-phase value: ``pass1/rigid/weights``."""
    return f"pass{pass_index}/{phase}/{name}"


def iter_key(pass_index: int, phase: str, iteration: int, name: str) -> str:
    """Key of a per-iteration value: ``pass0/nonrigid/iter04/param_update``."""
    return f"pass{pass_index}/{phase}/iter{iteration:02d}/{name}"


def key_of(where: Where) -> str:
    """The golden key of a stage of the fit loop."""
    name, k, phase, it = where
    if k is None:
        return name
    if phase is None:
        return f"pass{k}/{name}"
    if it is None:
        return f"pass{k}/{phase}/{name}"
    return f"pass{k}/{phase}/iter{it:02d}/{name}"


def parse(key: str) -> StageKey:
    """Split a key into its parts; keys outside the passes keep their whole text as ``name``.

    ``parse("pass0/rigid/iter03/shape")`` -> ``StageKey("shape", 0, "rigid", 3)``;
    ``parse("final/landmarks")`` -> ``StageKey("final/landmarks")``;
    ``parse("hierarchical/inner/landmarks")`` -> ``StageKey("landmarks", part="inner")``.
    """
    m = _KEY.match(key)
    if m is None:
        if key.startswith(HIERARCHICAL):
            rest = key[len(HIERARCHICAL):]
            part, sep, name = rest.partition("/")
            if sep and "/" not in name:
                return StageKey(name, part=part)
        return StageKey(key)
    it = m.group("iter")
    return StageKey(m.group("name"), int(m.group("pass")), m.group("phase"),
                    None if it is None else int(it), m.group("part"))


def split_part(key: str) -> tuple[str | None, str]:
    """``("inner", "pass0/response")`` for a part model's own-fit key
    ``hierarchical/inner/pass0/response`` (also ``init/...``, ``final/...``); ``(None, key)`` otherwise."""
    if key.startswith(HIERARCHICAL):
        part, sep, rest = key[len(HIERARCHICAL):].partition("/")
        own_fit = rest.split("/", 1)[0] in ("init", "final") or _KEY.match(rest) is not None
        if sep and own_fit:
            return part, rest
    return None, key


def hypothesis_prefix(index: int) -> str:
    """Key prefix of multi-view hypothesis ``index``: ``hypothesis_prefix(3)`` -> ``hypothesis03/``."""
    return f"{HYPOTHESIS}{index:02d}/"


def split_hypothesis(key: str) -> tuple[int | None, str]:
    """``(3, "pass0/response")`` for ``hypothesis03/pass0/response``; ``(None, key)`` otherwise."""
    m = _HYPOTHESIS.match(key)
    if m is None:
        return None, key
    return int(m.group("h")), m.group("rest")


def kind_of(key: str) -> str:
    """The stage kind: the last component (``pass0/rigid/iter03/mean_shifts`` -> ``mean_shifts``)."""
    return key.rsplit("/", 1)[-1]


def pass_of(key: str) -> int | None:
    """The main model's pass a key belongs to (None outside the passes and for part models)."""
    sk = parse(key)
    return sk.pass_index if sk.part is None else None


def iteration_of(key: str) -> tuple[int, str, int] | None:
    """``(pass, phase, iteration)`` of a per-iteration key of the main model, else None."""
    sk = parse(key)
    if sk.iteration is None or sk.part is not None:
        return None
    return sk.pass_index, sk.phase, sk.iteration


__all__ = ["StageKey", "PHASES", "HIERARCHICAL", "HYPOTHESIS", "hypothesis_prefix", "split_hypothesis",
           "pass_key", "phase_key",
           "iter_key", "key_of", "parse", "split_part", "kind_of", "pass_of", "iteration_of"]
