"""Per-stage-kind tolerances: defaults, TOML overrides, the C++ noise floor.

A value is **within tolerance** when ``|candidate - golden| <= atol + rtol * scale``;
``scale`` is the golden magnitude that :mod:`clnfdiag.compare.metrics` uses for
the stage kind (a landmark's map peak, a point set's extent, max|golden| of a
vector's unit group, |golden| of a scalar). ``atol = rtol = 0`` means equal.

The defaults come from ``clnfdiag/data/default_tolerances.toml`` (shipped; the
table below is checked against it by ``tests/test_tolerances_doc.py``; ``same``:
the propagated mode uses the isolated value):

=========================  ========  ========  ==============  ==============
kind                       atol      rtol      propagated atol propagated rtol
=========================  ========  ========  ==============  ==============
default                    0         1e-05     same            same
gray                       0         0         same            same
window_size                0         0         same            same
scale_index                0         0         same            same
view_id                    0         0         same            same
visibilities               0         0         same            same
params_global_in           0         1e-05     0               0.02
params_local_in            0         1e-05     0               0.02
landmarks_at_response      0.001     0         0.01            0
reference_shape            0.001     0         same            same
sim_img_to_ref             0         1e-05     0               0.0001
sim_ref_to_img             0         1e-05     0               0.0001
reg_factor                 0         1e-05     same            same
sigma                      0         1e-05     same            same
weight_factor              0         1e-05     same            same
area_of_interest           0         0         5               0
response_raw               0         1e-05     0               0.02
response_sigma             0         1e-05     0               0.02
response                   0         1e-05     0               0.02
weights                    0         1e-05     same            same
n_updates                  0         0         same            same
shape                      0.001     0         0.2             0
shape_change_norm          0.001     0.0001    0.25            0.5
dxs                        0         0         0.1             0
dys                        0         0         0.1             0
mean_shifts_ref            0         0         0.5             0
mean_shifts                0         0         0.5             0
jacobian                   0         0.0001    0               0.005
param_update               1e-07     0.0001    0.25            0.5
params_global              0         1e-05     0               0.02
params_local               0         1e-05     0               0.02
final_global               0         1e-05     0               0.02
final_local                0         1e-05     0               0.02
landmark_likelihoods       0         0.0001    0               0.01
likelihood                 0         0.0001    0               0.01
landmarks                  0.01      0         same            same
success                    0         0         same            same
landmarks_before           0.01      0         0.01            0
parts_used                 0         0         same            same
=========================  ========  ========  ==============  ==============

These tables are for other implementations (ports, traces): clnfdiag's own fit
reproduces every golden bit for bit and is gated with :func:`exact_tolerances`
(``compare --exact``). The isolated column is float32 rounding level (profile
``exact``); ``--profile port`` (``clnfdiag/data/port_tolerances.toml``) widens
it to what a float64 port's rounding can make of each quantity, each number's
reason stated in that file. One quantity has one tolerance whatever stage it
appears in (``params_global_in``, ``params_global`` and ``final_global`` alike).

Isolated stages are recomputed from the golden's own inputs and match to
rounding, hence the tight column. In **propagated** mode a difference feeds
every later stage, and how far rounding alone spreads each stage depends on the
case: each stage is judged against the case's measured **noise envelope**
(:mod:`clnfdiag.compare.noise`, :func:`noise_tolerance`): the isolated
tolerance with its atol raised to that stage's band. ``final/landmarks`` is
judged at the largest of ``landmarks`` (0.01 px, the minimum), the envelope's
band and twice the C++ noise floor of ``CPP_FLOOR.json`` (read by case id:
:func:`landmark_floor`; :func:`landmark_tolerance`). The hand-set
``[propagated]`` column is the fallback for a stage the envelope has no band
for (a comparison run without envelopes, or a key no measured run reached).

Overrides: ``--tolerances FILE`` (TOML) or, when no file is given,
``[tool.clnfdiag.tolerances]`` of ``./pyproject.toml``; same layout as the
defaults, each entry may give ``atol``, ``rtol`` or both (the other keeps its
default)::

    response = { rtol = 1e-4 }
    [propagated]
    mean_shifts = { atol = 0.05 }

An unknown kind, an unknown field or a value that is not a finite number >= 0
is an :class:`~clnfdiag.errors.InputError` naming the file and the key.
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..errors import GoldenError, InputError

#: Modes a comparison runs in.
MODES = ("isolated", "propagated")
#: Name of the shipped defaults file in ``clnfdiag/data`` (the ``exact`` profile).
DEFAULTS_FILE = "default_tolerances.toml"
#: Tolerance profiles (``compare --profile``): name -> file in ``clnfdiag/data``. ``exact``
#: is the defaults table (clnfdiag and bit-faithful ports); ``port`` loosens the isolated
#: stages an implementation computing in float64 (or with another rounding) cannot match
#: bit for bit, each by the bound its file states; kinds it does not name keep ``exact``'s.
PROFILES = {"exact": DEFAULTS_FILE, "port": "port_tolerances.toml"}
#: File holding per-case end-to-end noise floors, looked up next to a case folder.
FLOOR_FILE = "CPP_FLOOR.json"
#: The floors of the shipped C++ goldens, packaged (``clnfdiag/data``): a case that has no
#: ``CPP_FLOOR.json`` beside it is looked up here by case id.
PACKAGED_FLOOR_FILE = "cpp_floor.json"
_FIELDS = ("atol", "rtol")


@dataclass(frozen=True)
class Tol:
    """Absolute and relative tolerance of one stage kind.

    Attributes
    ----------
    atol : float
        Absolute part (unit of the stage: px, grey levels ...).
    rtol : float
        Relative part, times the golden scale.
    """

    atol: float
    rtol: float

    def allowed(self, scale: Any) -> Any:
        """``atol + rtol * scale`` (scalar or array)."""
        return self.atol + self.rtol * scale

    @property
    def exact(self) -> bool:
        """True when the values must be equal."""
        return self.atol == 0 and self.rtol == 0


@dataclass
class Tolerances:
    """Tolerance tables of both modes.

    Attributes
    ----------
    isolated : dict[str, Tol]
        Every known kind (plus ``default``).
    propagated : dict[str, Tol]
        Kinds loosened in propagated mode; others fall back to ``isolated``.
    source : str
        Where the overrides came from (``defaults`` or a file path).
    profile : str
        The profile the table started from (:data:`PROFILES`).
    bit_exact : bool
        Every kind of both modes must be equal (:func:`exact_tolerances`); the
        final landmarks are then not loosened to the C++ noise floor.
    """

    isolated: dict[str, Tol]
    propagated: dict[str, Tol] = field(default_factory=dict)
    source: str = "defaults"
    bit_exact: bool = False
    profile: str = "exact"

    def get(self, kind: str, mode: str = "isolated") -> Tol:
        """Tolerance of ``kind`` in ``mode`` (``default`` for an unnamed kind)."""
        if mode == "propagated" and kind in self.propagated:
            return self.propagated[kind]
        return self.isolated.get(kind, self.isolated["default"])

    @property
    def kinds(self) -> list[str]:
        """Kinds that may be configured."""
        return list(self.isolated)

    def to_json(self) -> dict:
        """``{"source", "isolated": {kind: {atol, rtol}}, "propagated": {...}}``."""
        def table(t: dict[str, Tol]) -> dict:
            return {k: {"atol": v.atol, "rtol": v.rtol} for k, v in t.items()}
        return {"source": self.source, "profile": self.profile, "bit_exact": self.bit_exact,
                "isolated": table(self.isolated), "propagated": table(self.propagated)}


def _data_text(name: str) -> tuple[str, str]:
    res = resources.files("clnfdiag") / "data" / name
    return res.read_text(encoding="utf-8"), str(res)


@lru_cache(maxsize=1)
def _defaults() -> tuple[dict[str, Tol], dict[str, Tol]]:
    text, where = _data_text(DEFAULTS_FILE)
    data = _parse_toml(text, where)
    iso = {k: _tol(v, None, where, k) for k, v in data.items() if k != "propagated"}
    prop_data = data.get("propagated", {})
    prop = {k: _tol(v, iso.get(k), where, f"propagated.{k}") for k, v in prop_data.items()}
    return iso, prop


def default_tolerances() -> Tolerances:
    """The shipped defaults, profile ``exact`` (a fresh object; changing it does not change them)."""
    iso, prop = _defaults()
    return Tolerances(dict(iso), dict(prop), "defaults")


def profile_tolerances(profile: str = "exact") -> Tolerances:
    """The tolerances of a shipped profile (:data:`PROFILES`): its file merged over the defaults.

    Raises
    ------
    InputError
        Unknown profile.
    """
    if profile not in PROFILES:
        raise InputError(f"unknown tolerance profile {profile!r}; expected one of {', '.join(PROFILES)}")
    base = default_tolerances()
    if PROFILES[profile] == DEFAULTS_FILE:
        return base
    text, where = _data_text(PROFILES[profile])
    tol = apply_overrides(base, _parse_toml(text, where), where)
    tol.source, tol.profile = f"profile {profile}", profile
    return tol


#: ``source`` of :func:`exact_tolerances`.
EXACT_SOURCE = "exact (bit identity)"


def exact_tolerances() -> Tolerances:
    """Every stage kind of both modes held to equality (``compare --exact``).

    clnfdiag's own fit computes every golden stage with the C++ reference's
    operation order on any CPU, so against the shipped goldens any differing
    value, in isolated or propagated mode, is a regression.
    """
    iso, _ = _defaults()
    zero = Tol(0.0, 0.0)
    table = {k: zero for k in iso}
    return Tolerances(table, dict(table), EXACT_SOURCE, bit_exact=True)


def _parse_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML: {exc}", where) from None


def _number(value: Any, where: str, key: str) -> float:
    """A finite float >= 0, else InputError naming ``where`` and ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"must be a number, got {value!r}", where, key)
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"must be a finite number >= 0, got {value!r}", where, key)
    return value


def _tol(entry: Any, base: Tol | None, where: str, key: str) -> Tol:
    """One ``{atol, rtol}`` entry merged over ``base`` (missing fields default to base, else 0)."""
    if not isinstance(entry, dict):
        raise InputError("must be a table like { atol = 0.0, rtol = 1e-5 }", where, key)
    for name in entry:
        if name not in _FIELDS:
            raise InputError(f"unknown field {name!r} (expected atol, rtol)", where, f"{key}.{name}")
    values = {n: _number(entry[n], where, f"{key}.{n}") for n in _FIELDS if n in entry}
    start = base or Tol(0.0, 0.0)
    return Tol(values.get("atol", start.atol), values.get("rtol", start.rtol))


def apply_overrides(base: Tolerances, data: Mapping, where: str, prefix: str = "") -> Tolerances:
    """Tolerances with the entries of a parsed TOML table merged over ``base``.

    Parameters
    ----------
    base : Tolerances
        Values entries are merged over.
    data : mapping
        ``{kind: {atol, rtol}, "propagated": {kind: {...}}}``.
    where : str
        File named in error messages.
    prefix : str
        Key prefix named in error messages (``tool.clnfdiag.tolerances.``).

    Raises
    ------
    InputError
        Unknown kind or field, or a value that is not a finite number >= 0.
    """
    known = set(base.isolated)
    iso = dict(base.isolated)
    prop = dict(base.propagated)
    for kind, entry in data.items():
        if kind == "propagated":
            if not isinstance(entry, dict):
                raise InputError("must be a table of kinds", where, f"{prefix}propagated")
            for pkind, pentry in entry.items():
                _check_kind(pkind, known, where, f"{prefix}propagated.{pkind}")
                start = prop.get(pkind, iso.get(pkind))
                prop[pkind] = _tol(pentry, start, where, f"{prefix}propagated.{pkind}")
            continue
        _check_kind(kind, known, where, f"{prefix}{kind}")
        iso[kind] = _tol(entry, iso[kind], where, f"{prefix}{kind}")
    return Tolerances(iso, prop, where)


def _check_kind(kind: str, known: set[str], where: str, key: str) -> None:
    if kind not in known:
        raise InputError(f"unknown stage kind {kind!r}; known kinds: {', '.join(sorted(known))}", where, key)


def load_tolerances(path: str | Path | None = None, cwd: str | Path | None = None,
                    profile: str = "exact") -> Tolerances:
    """Tolerances from ``path``, else from ``cwd/pyproject.toml``, else the profile's table.

    Parameters
    ----------
    profile : str
        The table the overrides are merged over (:data:`PROFILES`).
    path : path, optional
        A TOML file laid out like the defaults file.
    cwd : path, optional
        Folder searched for ``pyproject.toml`` (default: the current directory);
        only its ``[tool.clnfdiag.tolerances]`` table is used.

    Returns
    -------
    Tolerances

    Raises
    ------
    InputError
        Missing or unreadable file, invalid TOML, unknown kind or field, bad value.
    """
    base = profile_tolerances(profile)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("no such tolerances file", path)
        return _with_profile(apply_overrides(base, _parse_toml(_read(path), str(path)), str(path)), profile)
    pyproject = Path(cwd or ".") / "pyproject.toml"
    if not pyproject.is_file():
        return base
    table: Any = _parse_toml(_read(pyproject), str(pyproject))
    where = ""
    for key in ("tool", "clnfdiag", "tolerances"):
        # Another tool's pyproject may hold anything; only a table on the path is ours to judge.
        if not isinstance(table, dict) or key not in table:
            return base
        table, where = table[key], f"{where}{key}"
        if not isinstance(table, dict):
            raise InputError("must be a table", pyproject, where)
        where += "."
    return _with_profile(apply_overrides(base, table, str(pyproject), where), profile)


def _with_profile(tol: Tolerances, profile: str) -> Tolerances:
    tol.profile = profile
    return tol


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read ({exc})", path) from None


def landmark_floor(case_dir: str | Path, case_id: str) -> tuple[float | None, str | None]:
    """The case's end-to-end C++ noise floor (px) and the file it came from, found by case id.

    Looked up in ``CPP_FLOOR.json`` next to the case folder, then inside it, then
    in the floors packaged with clnfdiag (those of the shipped C++ goldens): a
    copy of a shipped case is judged with its floor wherever it lives.

    Returns
    -------
    (float or None, str or None)
        ``cases[case_id]`` and the file; ``(None, None)`` when no file names the case.
    """
    case_dir = Path(case_dir).resolve()
    for path in (case_dir.parent / FLOOR_FILE, case_dir / FLOOR_FILE):
        try:
            st = path.stat()
        except OSError:
            continue
        value = _read_floors(str(path), st.st_mtime_ns, st.st_size).get(case_id)
        if value is not None:
            return float(value), str(path)
    res = resources.files("clnfdiag") / "data" / PACKAGED_FLOOR_FILE
    value = _packaged_floors().get(case_id)
    return (None, None) if value is None else (float(value), str(res))


@lru_cache(maxsize=1)
def _packaged_floors() -> dict[str, float]:
    text, where = _data_text(PACKAGED_FLOOR_FILE)
    return {str(k): float(v) for k, v in json.loads(text)["cases"].items()}


@lru_cache(maxsize=16)
def _read_floors(path: str, mtime_ns: int, size: int) -> dict[str, float]:
    """``cases`` of a CPP_FLOOR.json (cached per file version)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        cases = data["cases"]
        return {str(k): float(v) for k, v in cases.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GoldenError(f"malformed noise-floor file ({type(exc).__name__}: {exc})", p) from None


#: Impact: a change of the first mean-shifts after a stage below this (px) is float32
#: rounding, not an effect (rescaling a map, which cannot move a weighted centroid, moves
#: the float result by up to 2e-5 px). Separate from the isolated tolerance of the
#: ``mean_shifts`` stage, which is exact because clnfdiag reproduces it bit for bit.
IMPACT_MEAN_SHIFT_PX = 1e-4

#: The noise floor is one observed distance between two C++ builds. A third build as faithful
#: as either can land that far from both on the other side, so an end-to-end fit is allowed
#: twice the floor (by the triangle inequality) before it is called different.
FLOOR_FACTOR = 2.0


def landmark_tolerance(tolerances: Tolerances, mode: str, floor: float | None,
                       band: float | None = None) -> Tol:
    """Tolerance of ``final/landmarks``.

    ``landmarks`` of the mode (0.01 px, the minimum); in propagated mode its atol
    is raised to the case's measured envelope band (``band``, a candidate faithful
    to rounding lands within it of the golden) and to ``FLOOR_FACTOR`` x the C++
    noise floor of ``CPP_FLOOR.json`` (a lower bound), whichever is largest.
    """
    tol = tolerances.get("landmarks", mode)
    if tolerances.bit_exact or mode != "propagated":
        return tol
    atol = max(tol.atol, band or 0.0, FLOOR_FACTOR * (floor or 0.0))
    return Tol(atol, tol.rtol)


def noise_tolerance(tol: Tol, band: float | None) -> Tol:
    """A propagated stage's tolerance from its envelope band: the isolated (rounding-level)
    tolerance, its atol raised to the band. A difference within that is what rounding
    alone makes of this stage on this case."""
    if band is None:
        return tol
    return Tol(max(tol.atol, band), tol.rtol)
