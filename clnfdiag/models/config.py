"""Readers for OpenFace's model config files.

* main config (``main_clnf_general.txt``): ``LandmarkDetector <clnf file>`` and
  ``LandmarkDetector_part <main file of part> <name> <main idx> <part idx> ...``
  lines (``DetectionValidator`` and unknown lines are ignored, as OpenFace does);
* CLNF config (``clnf_general.txt``): ``PDM``, ``Triangulations`` and one
  ``PatchesCCNF`` line per patch scale, in order.

Paths in a config are relative to the folder of that config file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from .matio import read_text


@dataclass(frozen=True)
class PartEntry:
    """A ``LandmarkDetector_part`` line: where the part model is and how its points map."""

    name: str
    main_file: Path
    mapping: tuple[tuple[int, int], ...]  # (index in main model, index in part model)


@dataclass(frozen=True)
class MainConfig:
    path: Path
    clnf_file: Path
    parts: tuple[PartEntry, ...] = ()


@dataclass(frozen=True)
class CLNFConfig:
    path: Path
    pdm_file: Path
    ccnf_files: tuple[Path, ...]
    triangulation_file: Path | None = None
    other: dict[str, str] = field(default_factory=dict)


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    out = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        toks = line.split()
        if toks and not toks[0].startswith("#"):
            out.append((lineno, toks))
    return out


def read_main_config(path: str | Path) -> MainConfig:
    """Read a main model config (the file OpenFace's ``-mloc`` points at)."""
    p = Path(path)
    root = p.parent
    clnf_file = None
    parts = []
    for lineno, toks in _lines(p):
        module = toks[0]
        if module == "LandmarkDetector":
            if len(toks) < 2:
                raise ModelError("LandmarkDetector line names no file", p, f"line {lineno}")
            clnf_file = root / toks[1]
        elif module == "LandmarkDetector_part":
            if len(toks) < 3 or (len(toks) - 3) % 2:
                raise ModelError("LandmarkDetector_part needs a file, a name and index pairs",
                                 p, f"line {lineno}")
            try:
                idx = [int(t) for t in toks[3:]]
            except ValueError:
                raise ModelError("landmark mapping must be integers", p, f"line {lineno}") from None
            pairs = tuple(zip(idx[0::2], idx[1::2]))
            parts.append(PartEntry(toks[2], root / toks[1], pairs))
    if clnf_file is None:
        raise ModelError("no LandmarkDetector line: not an OpenFace main model config", p)
    return MainConfig(p, clnf_file, tuple(parts))


def read_clnf_config(path: str | Path) -> CLNFConfig:
    """Read a CLNF config (PDM, triangulation and CCNF patch experts, in order)."""
    p = Path(path)
    root = p.parent
    pdm = tri = None
    ccnf: list[Path] = []
    other: dict[str, str] = {}
    for lineno, toks in _lines(p):
        module, rest = toks[0], " ".join(toks[1:])
        if not rest:
            raise ModelError(f"{module} line names no file", p, f"line {lineno}")
        if module == "PDM":
            pdm = root / rest
        elif module == "Triangulations":
            tri = root / rest
        elif module == "PatchesCCNF":
            ccnf.append(root / rest)
        else:
            # SVR/CEN experts and early termination belong to other OpenFace detectors.
            other[module] = rest
    if pdm is None:
        raise ModelError("no PDM line in the CLNF config", p)
    if not ccnf:
        raise ModelError("no PatchesCCNF line: clnfdiag implements the CCNF patch experts only", p)
    return CLNFConfig(p, pdm, tuple(ccnf), tri, other)
