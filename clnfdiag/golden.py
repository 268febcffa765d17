"""Read, validate and write golden cases in the ``clnfdiag-golden/1`` format.

A case is a folder (see ``../shared/golden/FORMAT.md``)::

    <case>/
      manifest.json   what was run and what every array means
      image.png       the exact input (BGR when read with cv2.imread)
      stages.npz      every captured array, keyed like ``pass0/rigid/iter03/shape``

Every problem with a case is raised as :class:`~clnfdiag.errors.GoldenError`
whose one-line message names the file and, where it applies, the key.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from . import cache
from .errors import ClnfdiagError, GoldenError, InputError, OutputError
from .models.locate import sha256_file
from .keys import PHASES, iteration_of, parse, split_hypothesis, split_part
from .trace import Recorder
from .outputs import staged_folder

FORMAT = "clnfdiag-golden/1"
MANIFEST = "manifest.json"
IMAGE = "image.png"
STAGES = "stages.npz"

#: Top-level manifest keys every case must have (``producer``, ``model`` and
#: the C++ dumps' ``layout``/``bbox_convention`` are descriptive only).
REQUIRED_KEYS = ("format", "case", "image", "bbox", "preset", "parameters", "result", "stages")



# Errors numpy / zipfile / zlib raise on a truncated or corrupted archive or member.
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


# --------------------------------------------------------------------------- meanings

class StageMeanings:
    """One-line meaning of a stage key, looked up by glob pattern.

    Patterns use ``*`` for one key component part (it never crosses ``/``),
    so ``pass*/response`` matches ``pass0/response`` but not
    ``pass0/response_raw``. The first matching pattern wins.

    Parameters
    ----------
    patterns : sequence of (str, str)
        ``(pattern, meaning)`` pairs.
    """

    def __init__(self, patterns: tuple[tuple[str, str], ...]):
        self.patterns = patterns
        self._compiled = [(self._compile(p), m) for p, m in patterns]

    @staticmethod
    def _compile(pattern: str) -> re.Pattern[str]:
        return re.compile("^" + re.escape(pattern).replace(r"\*", "[^/]*") + "$")

    def get(self, key: str, default: str | None = None) -> str | None:
        """Meaning of ``key``, or ``default`` when no pattern matches."""
        for rx, meaning in self._compiled:
            if rx.match(key):
                return meaning
        return default

    def __getitem__(self, key: str) -> str:
        meaning = self.get(key)
        if meaning is None:
            raise KeyError(key)
        return meaning

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None


# Taken from the stages table of FORMAT.md (one line each).
STAGE_MEANINGS = StageMeanings((
    ("input/gray", "(H, W) uint8 grayscale image the fitter sees (OpenFace's BGR->gray conversion)"),
    ("init/params_global", "(6,) global params from the bbox: [scale, rot_x, rot_y, rot_z, t_x, t_y]"),
    ("init/params_local", "(34,) non-rigid PDM params at start (zeros)"),
    ("init/shape", "(68, 2) initial landmarks (x, y)"),
    ("pass*/window_size", "response window size (ws) of this pass"),
    ("pass*/scale_index", "index into the patch scales [0.25, 0.35, 0.5]"),
    ("pass*/view_id", "patch-expert view chosen from the current rotation"),
    ("pass*/visibilities", "(68,) 1 where a patch expert exists in this view"),
    ("pass*/params_global_in", "(6,) global params entering the pass"),
    ("pass*/params_local_in", "(34,) local params entering the pass"),
    ("pass*/landmarks_at_response", "(68, 2) landmarks around which responses are computed"),
    ("pass*/reference_shape", "(68, 2) shape at the patch scale, no rotation or translation"),
    ("pass*/sim_img_to_ref", "(2, 2) similarity, image -> reference frame"),
    ("pass*/sim_ref_to_img", "(2, 2) similarity, reference -> image frame"),
    ("pass*/reg_factor", "regularisation factor used in this pass (after refine_parameters adaptation)"),
    ("pass*/sigma", "KDE sigma used in this pass (after refine_parameters adaptation)"),
    ("pass*/weight_factor", "NU-RLMS weight factor used in this pass (after refine_parameters adaptation)"),
    ("pass*/area_of_interest", "(68, A, A) float32 image region each expert sees, warped to the reference "
                               "frame; A = window + patch - 1; zeros where invisible"),
    ("pass*/response_raw", "(68, w, w) raw: sum over neurons of 2*alpha*sigmoid(...), before Sigma"),
    ("pass*/response_sigma", "(68, w, w) post-Sigma: Sigma @ vec(raw) reshaped row-major, before the shift"),
    ("pass*/response", "(68, w, w) post-shift (final): post-Sigma minus its minimum when that minimum "
                       "is negative; nothing else"),
    ("pass*/*/weights", "(136,) diagonal of the NU-RLMS weight matrix (x rows, then y rows)"),
    ("pass*/*/n_updates", "parameter updates done in the phase"),
    ("pass*/*/iter*/shape", "(68, 2) landmarks at the start of this iteration"),
    ("pass*/*/iter*/shape_change_norm", "|shape - previous shape| (136-vector); < 0.01 ends the phase "
                                        "before an update (present from iteration 1)"),
    ("pass*/*/iter*/dxs", "(68,) landmark x position inside the response window (reference frame)"),
    ("pass*/*/iter*/dys", "(68,) landmark y position inside the response window (reference frame)"),
    ("pass*/*/iter*/mean_shifts_ref", "(68, 2) KDE mean-shift, reference frame"),
    ("pass*/*/iter*/mean_shifts", "(68, 2) mean-shift in the image frame, invisible landmarks zeroed"),
    ("pass*/*/iter*/jacobian", "(136, 6) or (136, 40) Jacobian (rigid or full), rows x0..x67 then y0..y67"),
    ("pass*/*/iter*/param_update", "(6,) or (40,) solved update delta p"),
    ("pass*/*/iter*/params_global", "(6,) global params after update and clamping"),
    ("pass*/*/iter*/params_local", "(34,) local params after update and clamping"),
    ("pass*/*/final_global", "(6,) global params at the end of the phase"),
    ("pass*/*/final_local", "(34,) local params at the end of the phase"),
    ("pass*/landmark_likelihoods", "(68,) per-landmark KDE likelihood (last pass only)"),
    ("final/landmarks", "(68, 2) final landmarks (x, y)"),
    ("final/params_global", "(6,) final global params"),
    ("final/params_local", "(34,) final local params"),
    ("final/likelihood", "model likelihood"),
    ("final/landmark_likelihoods", "(68,) per-landmark likelihood"),
    ("final/success", "1 if the fit reported success"),
    ("hierarchical/landmarks_before", "(68, 2) main-model landmarks before hierarchical refinement"),
    ("hierarchical/parts_used", "1 if the part models ran (face global scale > 0.9 x the part's patch scale)"),
    ("hierarchical/*/landmarks", "(n, 2) landmarks of this part model after its own fit"),
    ("hierarchical/*/params_global", "global params of this part model"),
    ("hierarchical/*/params_local", "local params of this part model"),
))


def stage_meaning(key: str) -> str | None:
    """One-line meaning of a stage key from FORMAT.md, or None if the key is not documented.

    A part model's own fit is traced under ``hierarchical/<part>/`` with the
    main model's keys (``hierarchical/inner/pass0/response``): those take the
    main key's meaning, marked with the part. A multi-view hypothesis's fit is traced under
    ``hypothesisNN/`` with the main keys: those take the main key's meaning, marked likewise.
    """
    hypothesis, key = split_hypothesis(key)
    if hypothesis is not None:
        meaning = stage_meaning(key)
        return None if meaning is None else f"{meaning} (multi-view hypothesis {hypothesis})"
    meaning = STAGE_MEANINGS.get(key)
    if meaning is None:
        part, main_key = split_part(key)
        if part is not None and STAGE_MEANINGS.get(main_key):
            meaning = f"{STAGE_MEANINGS.get(main_key)} (part model {part})"
    return meaning


# --------------------------------------------------------------------------- reading

class _Stages(Mapping):
    """Read-only mapping key -> array over one stages.npz, opened on first use.

    Arrays are decompressed on first access and cached, because comparators
    read the same stage several times; cached arrays are read-only so that
    in-place work on a golden value cannot change what later readers see.

    The archive is read by :func:`_zip_members` (one read of the file, members
    decompressed with zlib on demand, each checked against its CRC-32) and each
    member's ``.npy`` header by :func:`_npy_array`: ``numpy.load`` opens a
    zipfile member and evaluates a Python-literal header per array, ~0.3 ms each,
    and a golden holds ~600 small arrays. Anything those two do not recognise
    (zip64, encryption, another compression, an unusual header, a short member,
    a CRC mismatch) is left to ``numpy.load``, so a damaged archive is reported
    exactly as before.
    """

    def __init__(self, path: Path):
        self.path = path
        self._npz: np.lib.npyio.NpzFile | None = None
        self._members: dict[str, tuple[int, int, int, int, int]] | None = None
        self._raw: bytes | None = None
        self._cache: dict[str, np.ndarray] = {}

    def _files(self) -> Any:
        """Stage keys in archive order (opens the archive): a dict of members or numpy's list."""
        if self._members is not None:
            return self._members
        if self._npz is not None:
            return self._npz.files
        if not self.path.is_file():
            raise GoldenError("missing", self.path)
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise GoldenError(f"not a valid .npz archive ({exc})", self.path) from None
        members = _zip_members(raw)
        if members is not None:
            self._raw, self._members = raw, members
            return members
        return self._open().files

    def _open(self) -> np.lib.npyio.NpzFile:
        if self._npz is None:
            if not self.path.is_file():
                raise GoldenError("missing", self.path)
            if not zipfile.is_zipfile(self.path):
                # np.load would try it as a pickle and say so: misleading here.
                raise GoldenError("not a valid .npz archive (not a zip file)", self.path)
            try:
                # allow_pickle=False: a golden holds plain numeric arrays only.
                npz = np.load(self.path, allow_pickle=False)
            except _NPZ_ERRORS as exc:
                raise GoldenError(f"not a valid .npz archive ({exc})", self.path) from None
            self._npz = npz
        return self._npz

    def raw_bytes(self) -> bytes:
        """The archive's bytes (read once; for content hashes)."""
        self._files()
        return self._raw if self._raw is not None else self.path.read_bytes()

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            arr = None
            if key in self:
                if self._members is not None:
                    arr = _npy_array(_member_bytes(self._raw, self._members[key]))
                if arr is None:  # left to numpy (and its error messages)
                    try:
                        arr = self._open()[key]
                    except _NPZ_ERRORS as exc:
                        raise GoldenError(f"cannot read array ({exc})", self.path, key) from None
            else:
                raise GoldenError("no such stage", self.path, key)
            arr.flags.writeable = False
            self._cache[key] = arr
        return self._cache[key]

    def get(self, key: str, default: Any = None) -> Any:
        # Mapping.get expects KeyError; ours raises GoldenError for absent keys.
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._files()))

    def __len__(self) -> int:
        return len(self._files())

    def __contains__(self, key: object) -> bool:
        return key in self._files()

    def close(self) -> None:
        self._raw = self._members = None
        if self._npz is not None:
            self._npz.close()
            self._npz = None


#: Zip signatures and the layouts (struct formats) read by :func:`_zip_members`.
_EOCD = b"PK\x05\x06"
_CENTRAL = struct.Struct("<4s6H3I5H2I")
_LOCAL = struct.Struct("<4s5H3I2H")


def _zip_members(raw: bytes) -> dict[str, tuple[int, int, int, int, int]] | None:
    """The members of an ``.npz`` held in ``raw``, from its central directory.

    Returns
    -------
    dict or None
        ``key -> (method, crc32, compressed size, uncompressed size, data offset)``
        with ``key`` the member name without ``.npy``, in archive order; None for
        anything but a plain single-disk archive of uniquely named ``.npy``
        members, stored or deflated, unencrypted (zip64, comments holding the
        end signature, ...): those are read by ``numpy.load``.
    """
    eocd = raw.rfind(_EOCD, max(0, len(raw) - 65557))
    if eocd < 0 or eocd + 22 > len(raw):
        return None
    disk, cd_disk, n_here, n_total, cd_size, cd_offset = struct.unpack_from("<4H2I", raw, eocd + 4)
    if disk or cd_disk or n_here != n_total or cd_offset + cd_size > eocd or n_total == 0xFFFF:
        return None
    out: dict[str, tuple[int, int, int, int, int]] = {}
    pos = cd_offset
    try:
        for _ in range(n_total):
            (sig, _made, _need, flags, method, _time, _date, crc, csize, usize, nlen, xlen, clen,
             _dstart, _iattr, _eattr, local) = _CENTRAL.unpack_from(raw, pos)
            name = raw[pos + 46:pos + 46 + nlen].decode("utf-8")
            pos += 46 + nlen + xlen + clen
            if (sig != b"PK\x01\x02" or flags & 0x1 or method not in (0, 8) or not name.endswith(".npy")
                    or 0xFFFFFFFF in (csize, usize, local)):
                return None
            lsig, *_rest, lnlen, lxlen = _LOCAL.unpack_from(raw, local)
            start = local + _LOCAL.size + lnlen + lxlen
            key = name[:-4]
            if lsig != b"PK\x03\x04" or start + csize > len(raw) or key in out:
                return None
            out[key] = (method, crc, csize, usize, start)
    except (struct.error, UnicodeDecodeError):
        return None
    return out


def _member_bytes(raw: bytes, member: tuple[int, int, int, int, int]) -> bytes | None:
    """A member's uncompressed bytes, or None when they do not inflate to its size and CRC-32."""
    method, crc, csize, usize, start = member
    data = raw[start:start + csize]
    if method == 8:
        try:
            data = zlib.decompress(data, -15)
        except zlib.error:
            return None
    if len(data) != usize or zlib.crc32(data) != crc:
        return None
    return data


#: The header numpy writes for a plain array (``numpy.lib.format``): descr, order, shape.
_NPY_HEADER = re.compile(r"\{'descr': '([<>|][biuf][1-8])', 'fortran_order': False, "
                         r"'shape': \(((?:\d+, )*(?:\d+,?)?)\), \} *\n")


def _npy_array(data: bytes | None) -> np.ndarray | None:
    """The array of one ``.npy`` member (read-only view of ``data``), or None when its header
    is not the plain one numpy writes for a C-ordered numeric array of the right length."""
    if data is None or data[:6] != b"\x93NUMPY" or len(data) < 10:
        return None
    major = data[6]
    if major == 1:
        hlen, hstart = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3) and len(data) >= 12:
        hlen, hstart = int.from_bytes(data[8:12], "little"), 12
    else:
        return None
    layout = _npy_layout(data[hstart:hstart + hlen])
    if layout is None:
        return None
    dtype, shape, count = layout
    if len(data) - hstart - hlen != count * dtype.itemsize:
        return None
    return np.frombuffer(data, dtype, count, hstart + hlen).reshape(shape)


@lru_cache(maxsize=4096)
def _npy_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """``(dtype, shape, count)`` of a plain ``.npy`` header, None for any other header.

    Remembered: a golden's ~600 members share a few dozen headers (every iteration's
    shape, mean-shifts ... have the same), and parsing one is most of a small member's
    read."""
    m = _NPY_HEADER.fullmatch(header.decode("latin1"))
    if m is None:
        return None
    shape = tuple(int(v) for v in m.group(2).replace(",", " ").split())
    return np.dtype(m.group(1)), shape, math.prod(shape)


@lru_cache(maxsize=256)
def _dtype(name: str) -> np.dtype:
    """``numpy.dtype(name)``, remembered (a manifest names a handful of dtypes ~600 times);
    TypeError for an unknown name, as numpy raises it."""
    return np.dtype(name)


@dataclass
class GoldenCase:
    """One golden case folder, with its stages read lazily.

    Attributes
    ----------
    path : Path
        The case folder.
    manifest : dict
        Parsed manifest.json.
    case_id : str
        ``manifest["case"]``.
    bbox : tuple of 4 float
        ``(x, y, width, height)`` given to the fitter, pixels.
    preset : str
        ``"default"`` or ``"wild"``.
    parameters : dict
        Every fitting parameter used (``window_sizes_init``, ``sigma`` ...).
    image_path : Path
        The input image (``image.png``).
    stages : Mapping[str, numpy.ndarray]
        All arrays of stages.npz; the archive is opened once, each array is
        decompressed on first access.
    """

    path: Path
    manifest: dict
    case_id: str
    bbox: tuple[float, float, float, float]
    preset: str
    parameters: dict
    image_path: Path
    stages: _Stages = field(repr=False)
    _image: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    # ---- stages
    def stage(self, key: str) -> np.ndarray:
        """Array stored under ``key`` (GoldenError naming stages.npz and the key if absent)."""
        return self.stages[key]

    def keys(self) -> list[str]:
        """Stage keys in manifest order (execution order of the producer)."""
        return list(self.manifest["stages"])

    def has(self, key: str) -> bool:
        """True if the case holds stage ``key``."""
        return key in self.manifest["stages"]

    def close(self) -> None:
        """Release stages.npz (arrays already read stay available)."""
        self.stages.close()

    def __enter__(self) -> "GoldenCase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- image
    def load_image(self) -> np.ndarray:
        """The input image as the fitter reads it.

        Returns
        -------
        numpy.ndarray
            (H, W, 3) uint8, BGR (``cv2.imread`` default flags), read-only: it is
            decoded once per case and shared by every mode that fits it (a PNG
            decode costs about as much as a tenth of a fit).
        """
        if self._image is None:
            img = cv2.imread(str(self.image_path))
            if img is None:
                raise GoldenError("cannot be read as an image", self.image_path)
            img.flags.writeable = False
            self._image = img
        return self._image

    # ---- structure of the fit, derived from the key names
    @property
    def is_hierarchical(self) -> bool:
        """True if the case was made with hierarchical part-model refinement."""
        return bool(self.parameters.get("refine_hierarchical")) or any(
            k.startswith("hierarchical/") for k in self.manifest["stages"])

    @property
    def n_passes(self) -> int:
        """Number of window-size passes run (``pass0`` .. ``pass{n-1}``)."""
        found = {p for k in self.manifest["stages"] if (p := _main_pass(k)) is not None}
        return max(found) + 1 if found else 0

    def phases(self, pass_index: int) -> list[tuple[str, int, int]]:
        """Phases of one pass in run order.

        Returns
        -------
        list of (str, int, int)
            ``(phase, n_iterations_entered, n_updates)``; an iteration that
            stopped on the shape-change threshold counts as entered, not as
            an update. ``n_updates`` is -1 if the case lacks ``.../n_updates``.
        """
        entered: dict[str, set[int]] = {}
        for key in self.manifest["stages"]:
            sk = parse(key)
            if sk.part is None and sk.pass_index == pass_index and sk.phase is not None and (
                    sk.iteration is not None or sk.name == "n_updates"):
                # n_updates alone still names the phase (one that entered no iteration).
                iters = entered.setdefault(sk.phase, set())
                if sk.iteration is not None:
                    iters.add(sk.iteration)
        order = sorted(entered, key=lambda p: (PHASES.index(p) if p in PHASES else len(PHASES), p))
        out = []
        for phase in order:
            key = f"pass{pass_index}/{phase}/n_updates"
            n_updates = int(self.stage(key)) if self.has(key) else -1
            out.append((phase, len(entered[phase]), n_updates))
        return out

    def iterations(self, pass_index: int, phase: str) -> list[int]:
        """Sorted iteration indices present for ``pass{pass_index}/{phase}``."""
        found = set()
        for key in self.manifest["stages"]:
            it = iteration_of(key)
            if it is not None and it[0] == pass_index and it[1] == phase:
                found.add(it[2])
        return sorted(found)


def _main_pass(key: str) -> int | None:
    sk = parse(key)
    return sk.pass_index if sk.part is None else None


def read_json(path: Path, error: type[ClnfdiagError] = GoldenError, missing: str = "missing") -> Any:
    """Parse a JSON file, or raise ``error`` naming the file and, for bad JSON, line and column."""
    if not path.is_file():
        raise error(missing, path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text ({exc.reason})", path) from None
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON: {exc.msg}", path, f"line {exc.lineno}, column {exc.colno}") from None


def _load_manifest(case_dir: Path) -> dict:
    path = case_dir / MANIFEST
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise GoldenError("top level is not a JSON object", path)
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(m: dict, path: Path) -> None:
    """Structure checks on the keys GoldenCase relies on (GoldenError naming the key)."""
    for key in REQUIRED_KEYS:
        if key not in m:
            raise GoldenError("required key missing", path, key)
    if m["format"] != FORMAT:
        raise GoldenError(f"unsupported format {m['format']!r}, expected {FORMAT!r}", path, "format")
    if not isinstance(m["case"], str) or not m["case"]:
        raise GoldenError("must be a non-empty string", path, "case")
    image = m["image"]
    if not isinstance(image, dict):
        raise GoldenError("must be an object", path, "image")
    for sub in ("file", "sha256"):
        if not isinstance(image.get(sub), str) or not image[sub]:
            raise GoldenError("must be a non-empty string", path, f"image.{sub}")
    parts = Path(image["file"]).parts
    if Path(image["file"]).is_absolute() or ".." in parts or "\0" in image["file"]:
        # A case is a self-contained folder: its picture is inside it.
        raise GoldenError("must name a file inside the case folder", path, "image.file")
    _check_bbox(m["bbox"], path)
    if not isinstance(m["preset"], str):
        raise GoldenError("must be a string", path, "preset")
    for key in ("parameters", "result", "stages"):
        if not isinstance(m[key], dict):
            raise GoldenError("must be an object", path, key)
    for key, entry in m["stages"].items():
        _check_stage_entry(key, entry, path)


def _check_bbox(bbox: Any, path: Path) -> None:
    """4 finite numbers with a positive width and height (the fitter refuses any other box)."""
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise GoldenError("must be 4 finite numbers [x, y, width, height]", path, "bbox")
    if not (bbox[2] > 0 and bbox[3] > 0):
        raise GoldenError(f"width and height must be > 0, got {bbox[2]!r} x {bbox[3]!r}", path, "bbox")


def _check_stage_entry(key: str, entry: Any, path: Path) -> None:
    where = f"stages.{key}"
    if not isinstance(entry, dict):
        raise GoldenError("must be an object with shape and dtype", path, where)
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise GoldenError("shape must be a list of non-negative integers", path, where)
    dtype = entry.get("dtype")
    if not isinstance(dtype, str):
        raise GoldenError("dtype must be a string", path, where)
    try:
        _dtype(dtype)
    except TypeError:
        raise GoldenError(f"unknown dtype {dtype!r}", path, where) from None


def _check_image(case_dir: Path, manifest: dict) -> Path:
    image_path = case_dir / manifest["image"]["file"]
    if not image_path.is_file():
        raise GoldenError("missing", image_path)
    expected = manifest["image"]["sha256"].lower()
    found = sha256_file(image_path)
    if found != expected:
        raise GoldenError(f"SHA-256 mismatch: expected {expected}, found {found}", image_path)
    return image_path


def _verify_stages(case: GoldenCase, finite: bool = True) -> None:
    """Every npz array matches its manifest entry: same key set, shape, dtype; floats finite
    unless ``finite`` is False."""
    npz_path = case.stages.path
    described = case.manifest["stages"]
    stored = set(case.stages)
    for key in described:
        if key not in stored:
            raise GoldenError("described in manifest.json but missing", npz_path, key)
    for key in case.stages:
        if key not in described:
            raise GoldenError("not described in manifest.json", npz_path, key)
    for key, entry in described.items():
        arr = case.stage(key)
        shape = tuple(entry["shape"])
        if arr.shape != shape:
            raise GoldenError(f"shape mismatch: expected {shape}, found {arr.shape}", npz_path, key)
        if arr.dtype != _dtype(entry["dtype"]):
            raise GoldenError(f"dtype mismatch: expected {entry['dtype']}, found {arr.dtype}", npz_path, key)
        if finite:
            _check_finite(arr, npz_path, key)
    _check_gray_matches_image(case)


def _check_finite(arr: np.ndarray, path: Path, key: str) -> None:
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise GoldenError(f"{n_bad} NaN/inf value(s)", path, key)


def _check_gray_matches_image(case: GoldenCase) -> None:
    # The manifest's image size and the fitter's gray image must agree; a
    # mismatch means image.png and stages.npz come from different runs.
    image = case.manifest["image"]
    if not case.has("input/gray") or "width" not in image or "height" not in image:
        return
    h, w = case.manifest["stages"]["input/gray"]["shape"][:2]
    if (w, h) != (image["width"], image["height"]):
        raise GoldenError(f"input/gray is {w}x{h} but image is {image['width']}x{image['height']}",
                          case.path / MANIFEST, "image")


#: The cache (:mod:`clnfdiag.cache`) of verified goldens, and the version of what
#: :func:`_verify_stages` checks: bump it when the checks change, so that no older marker is trusted.
VERIFIED_CACHE = "verified"
VERIFY_VERSION = "verify-1"


def _verified_key(case: GoldenCase, finite: bool) -> str:
    """Content key of a verification: the manifest's and the archive's bytes, the checks' version.

    Verification is a function of exactly these bytes (the image is checked on every
    read), so a marker under this key says the same checks passed on the same bytes.
    Hashing them (SHA-256, ~2 ms for a 2 MB golden) costs a tenth of verifying them.
    """
    return cache.content_key([VERIFY_VERSION, f"finite={bool(finite)}", (case.path / MANIFEST).read_bytes(),
                              case.stages.raw_bytes()])


def read_case(path: str | os.PathLike, verify: bool = True, finite: bool = True) -> GoldenCase:
    """Open a golden case folder.

    Always checked: manifest.json (valid JSON, required keys, format),
    the image (exists, SHA-256 as in the manifest) and that stages.npz is a
    readable archive. With ``verify``, every array is also read and checked
    against its manifest entry (key sets equal, shape, dtype, no NaN/inf), once
    per content: a case whose manifest and archive bytes passed these checks
    before (a marker under their SHA-256 in ``$XDG_CACHE_HOME/clnfdiag/verified``,
    :mod:`clnfdiag.cache`) is not checked again, and its arrays are then read
    only when asked for.

    Parameters
    ----------
    path : str or PathLike
        The case folder (or its manifest.json).
    verify : bool
        Check every array (reads the whole npz, ~20 ms per case, unless these bytes were
        verified before).
    finite : bool
        With ``verify``, also refuse NaN/inf values. A golden must be finite;
        a candidate trace may hold NaN, which is then judged as a divergence.

    Returns
    -------
    GoldenCase

    Raises
    ------
    GoldenError
        One line naming the file and the key of the first problem found.
    """
    case_dir = Path(path)
    if case_dir.name == MANIFEST and case_dir.is_file():
        case_dir = case_dir.parent
    if not case_dir.is_dir():
        raise GoldenError("not a folder", case_dir)
    manifest = _load_manifest(case_dir)
    image_path = _check_image(case_dir, manifest)
    stages = _Stages(case_dir / STAGES)
    stages._files()  # missing or corrupt archive is reported now, not at first use
    case = GoldenCase(
        path=case_dir,
        manifest=manifest,
        case_id=manifest["case"],
        bbox=tuple(float(v) for v in manifest["bbox"]),
        preset=manifest["preset"],
        parameters=manifest["parameters"],
        image_path=image_path,
        stages=stages,
    )
    if verify:
        try:
            key = _verified_key(case, finite)
            if not cache.has_marker(VERIFIED_CACHE, key):
                _verify_stages(case, finite)
                cache.put_marker(VERIFIED_CACHE, key)
        except GoldenError:
            case.close()  # the caller never gets the case, so release the archive here
            raise
    return case


def find_cases(paths: str | os.PathLike | list[str | os.PathLike]) -> list[Path]:
    """Case folders named by ``paths``.

    Parameters
    ----------
    paths : path or list of paths
        Each is a case folder (holds manifest.json), a case's manifest.json,
        or a folder whose sub-folders are cases (``golden/``).

    Returns
    -------
    list of Path
        Sorted, without duplicates.

    Raises
    ------
    GoldenError
        A path that is none of the above.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.name == MANIFEST:
            found.add(p.parent)
        elif (p / MANIFEST).is_file():
            found.add(p)
        elif p.is_dir():
            cases = {sub for sub in p.iterdir() if (sub / MANIFEST).is_file()}
            if not cases:
                raise GoldenError("not a golden case and holds no case folders (no manifest.json)", p)
            found |= cases
        else:
            raise GoldenError("no such case or folder", p)
    return sorted(found)


# --------------------------------------------------------------------------- writing

def json_default(obj: Any) -> Any:
    """``json.dump`` fallback for numpy scalars and arrays and paths."""
    # numpy scalars/arrays reach the manifest through parameters and result.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _write_image(case_dir: Path, image: np.ndarray | str | os.PathLike) -> tuple[Path, np.ndarray]:
    """Write image.png; returns its path and the decoded pixels (for width/height)."""
    target = case_dir / IMAGE
    tmp = case_dir / (IMAGE + ".tmp")
    src = Path(image) if isinstance(image, (str, os.PathLike)) else None
    if src is not None:
        pixels = cv2.imread(str(src))
        if pixels is None:
            raise GoldenError("cannot be read as an image", src)
    else:
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
            raise GoldenError(f"image must be uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}", target)
    if src is not None and src.suffix.lower() == ".png":
        # Keep the exact bytes: the golden's SHA-256 is then the input's.
        shutil.copyfile(src, tmp)
    else:
        # Encode in memory: cv2.imwrite would pick the codec from the ".tmp" name.
        ok, buf = cv2.imencode(".png", pixels)
        if not ok:
            raise GoldenError("cannot encode PNG", target)
        tmp.write_bytes(buf.tobytes())
    os.replace(tmp, target)
    return target, pixels


def _prepare_stages(stages: dict[str, Any], npz_path: Path, finite: bool = True) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for key, value in stages.items():
        if not isinstance(key, str) or not key or key.startswith("/") or ".." in key.split("/"):
            raise GoldenError("stage key must be a relative name like 'pass0/response'", npz_path, str(key))
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise GoldenError(f"unsupported dtype {arr.dtype} (numeric arrays only)", npz_path, key)
        if finite:
            _check_finite(arr, npz_path, key)
        arrays[key] = arr
    return arrays


def is_plain_case_id(case_id: Any) -> bool:
    """True for a case id that can be a folder name (the format names the case folder after it)."""
    return (isinstance(case_id, str) and bool(case_id) and "/" not in case_id and "\0" not in case_id
            and case_id not in (".", ".."))


def is_case_folder(folder: Path) -> bool:
    """True for an empty folder or a ``clnfdiag-golden/1`` case folder (one that may be rewritten whole)."""
    folder = Path(folder)
    if not any(folder.iterdir()):
        return True
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _write_npz(case_dir: Path, arrays: dict[str, np.ndarray]) -> Path:
    target = case_dir / STAGES
    tmp = case_dir / (STAGES + ".tmp")
    with open(tmp, "wb") as f:  # a file object stops numpy appending ".npz"
        np.savez_compressed(f, **arrays)
    # Keys with '/' become zip sub-paths; make sure np.load gives them back unchanged.
    with np.load(tmp, allow_pickle=False) as npz:
        back = list(npz.files)
    if back != list(arrays):
        lost = sorted(set(arrays) - set(back))
        tmp.unlink()
        raise GoldenError(f"stage keys do not round-trip through .npz: {lost[:3]}", target)
    os.replace(tmp, target)
    return target


def write_case(
    out_dir: str | os.PathLike,
    case_id: str,
    image_bgr_or_path: np.ndarray | str | os.PathLike,
    bbox: tuple[float, float, float, float] | list[float],
    preset: str,
    parameters: dict,
    stages: dict[str, np.ndarray],
    result: dict,
    producer: str,
    model_files: dict[str, str] | None = None,
    meanings: dict[str, str] | None = None,
    *,
    source: str = "",
    model_root: str | None = None,
    finite: bool = True,
    option: str = "case folder",
) -> Path:
    """Write a case folder ``out_dir/case_id`` in the ``clnfdiag-golden/1`` format.

    The folder is built aside and moved into place whole
    (:func:`clnfdiag.outputs.staged_folder`): an error or an interrupt leaves
    the previous ``out_dir/case_id`` (or none), never a half-written case.

    Parameters
    ----------
    out_dir : path
        Parent folder (created when missing); the case goes to
        ``out_dir/case_id`` (the format wants the folder name to be the case
        id). An existing case folder there is replaced whole; a folder holding
        anything else is refused (OutputError).
    case_id : str
        Case id, also the folder name.
    image_bgr_or_path : numpy.ndarray or path
        (H, W, 3) uint8 BGR or (H, W) uint8 pixels, written losslessly as
        image.png; or an image file (a .png is copied byte for byte).
    bbox : 4 floats
        ``[x, y, width, height]`` given to the fitter.
    preset : str
        ``"default"`` or ``"wild"``.
    parameters : dict
        Fitting parameters (same names as the C++ goldens).
    stages : dict[str, numpy.ndarray]
        Stage arrays (e.g. ``Recorder.stages``), keys like ``pass0/response``;
        stored in this order. Numeric, and finite unless ``finite`` is False.
    result : dict
        ``success``, ``likelihood``, ``phases`` as in the C++ goldens.
    producer : str
        What made the dump (program, version, dtype).
    model_files : dict[str, str], optional
        Model file path (relative to ``model_root``) -> SHA-256.
    meanings : dict[str, str], optional
        Meanings overriding :data:`STAGE_MEANINGS` for some keys.
    source : str, optional
        Where the picture comes from.
    model_root : str, optional
        Folder the model file paths are relative to.
    finite : bool
        Refuse NaN/inf stage values (a golden); False for a candidate trace,
        whose NaN the comparator judges as a divergence.
    option : str
        What names the output in error messages (``--trace-out``).

    Returns
    -------
    Path
        The case folder; :func:`read_case` accepts it.

    Raises
    ------
    GoldenError
        A bad case id, stage key or value, or box (nothing is written).
    OutputError
        ``out_dir`` or the case folder cannot be written.
    """
    if not is_plain_case_id(case_id):
        raise GoldenError("case id must be a plain folder name", out_dir, repr(case_id))
    case_dir = Path(out_dir) / case_id
    arrays = _prepare_stages(stages, case_dir / STAGES, finite)
    bbox_list = [float(v) for v in bbox]
    _check_bbox(bbox_list, case_dir / MANIFEST)
    try:
        case_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option}: cannot create the folder ({exc.strerror or exc})", case_dir.parent) from None
    with staged_folder(case_dir, option, is_case_folder, f"a {FORMAT} case") as build:
        _write_case_files(build, case_id, image_bgr_or_path, bbox_list, preset, parameters, arrays, result,
                          producer, model_files, meanings, source, model_root)
    return case_dir


def _write_case_files(case_dir: Path, case_id: str, image_bgr_or_path, bbox_list: list[float], preset: str,
                      parameters: dict, arrays: dict[str, np.ndarray], result: dict, producer: str,
                      model_files: dict[str, str] | None, meanings: dict[str, str] | None, source: str,
                      model_root: str | None) -> None:
    """image.png, stages.npz and manifest.json of :func:`write_case` into ``case_dir``."""
    image_path, pixels = _write_image(case_dir, image_bgr_or_path)
    _write_npz(case_dir, arrays)
    meanings = meanings or {}
    manifest = {
        "format": FORMAT,
        "case": case_id,
        "producer": producer,
        "image": {
            "file": IMAGE,
            "sha256": sha256_file(image_path),
            "width": int(pixels.shape[1]),
            "height": int(pixels.shape[0]),
            "source": source,
        },
        "bbox": bbox_list,
        "preset": preset,
        "parameters": parameters,
        "model": {"root": model_root, "files": dict(model_files or {})},
        "result": result,
        "layout": TRACE_LAYOUT,
        "stages": {
            key: {
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "meaning": meanings.get(key) or stage_meaning(key) or "not described in FORMAT.md",
            }
            for key, arr in arrays.items()
        },
    }
    (case_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, default=json_default) + "\n",
                                     encoding="utf-8")


# --------------------------------------------------------------------------- recording for ports

class StageLayout(NamedTuple):
    """Shape and dtype of one stage kind of a golden (an entry of :data:`STAGE_LAYOUTS`).

    ``shape`` holds ints and dimension names: ``n`` the model's points,
    ``2n`` twice that, ``m`` its non-rigid modes, ``6+m`` all its parameters,
    ``w`` the pass's response window, ``A`` the side of its areas of interest,
    ``H`` and ``W`` the image's height and width.
    """

    shape: tuple[int | str, ...]
    dtype: str


_F32, _F64, _I32, _U8 = "float32", "float64", "int32", "uint8"

#: Shape and dtype of every stage key, by the same glob patterns as
#: :data:`STAGE_MEANINGS`: shapes from FORMAT.md's stages table, dtypes as the
#: C++ goldens store them. A part model's own-fit keys
#: (``hierarchical/<part>/pass0/response``) take the main key's row with the
#: part's ``n`` and ``m``. The one shape/dtype table of the format: the reader
#: checks a case against its own manifest, :class:`TraceWriter` against this.
STAGE_LAYOUTS = StageMeanings((
    ("input/gray", StageLayout(("H", "W"), _U8)),
    ("init/params_global", StageLayout((6,), _F32)),
    ("init/params_local", StageLayout(("m",), _F32)),
    ("init/shape", StageLayout(("n", 2), _F32)),
    ("pass*/window_size", StageLayout((), _I32)),
    ("pass*/scale_index", StageLayout((), _I32)),
    ("pass*/view_id", StageLayout((), _I32)),
    ("pass*/visibilities", StageLayout(("n",), _I32)),
    ("pass*/params_global_in", StageLayout((6,), _F32)),
    ("pass*/params_local_in", StageLayout(("m",), _F32)),
    ("pass*/landmarks_at_response", StageLayout(("n", 2), _F32)),
    ("pass*/reference_shape", StageLayout(("n", 2), _F32)),
    ("pass*/sim_img_to_ref", StageLayout((2, 2), _F32)),
    ("pass*/sim_ref_to_img", StageLayout((2, 2), _F32)),
    ("pass*/reg_factor", StageLayout((), _F32)),
    ("pass*/sigma", StageLayout((), _F32)),
    ("pass*/weight_factor", StageLayout((), _F32)),
    ("pass*/area_of_interest", StageLayout(("n", "A", "A"), _F32)),
    ("pass*/response_raw", StageLayout(("n", "w", "w"), _F32)),
    ("pass*/response_sigma", StageLayout(("n", "w", "w"), _F32)),
    ("pass*/response", StageLayout(("n", "w", "w"), _F32)),
    ("pass*/*/weights", StageLayout(("2n",), _F32)),
    ("pass*/*/n_updates", StageLayout((), _I32)),
    ("pass*/*/iter*/shape", StageLayout(("n", 2), _F32)),
    ("pass*/*/iter*/shape_change_norm", StageLayout((), _F64)),
    ("pass*/*/iter*/dxs", StageLayout(("n",), _F32)),
    ("pass*/*/iter*/dys", StageLayout(("n",), _F32)),
    ("pass*/*/iter*/mean_shifts_ref", StageLayout(("n", 2), _F32)),
    ("pass*/*/iter*/mean_shifts", StageLayout(("n", 2), _F32)),
    ("pass*/rigid/iter*/jacobian", StageLayout(("2n", 6), _F32)),
    ("pass*/nonrigid/iter*/jacobian", StageLayout(("2n", "6+m"), _F32)),
    ("pass*/rigid/iter*/param_update", StageLayout((6,), _F32)),
    ("pass*/nonrigid/iter*/param_update", StageLayout(("6+m",), _F32)),
    ("pass*/*/iter*/params_global", StageLayout((6,), _F32)),
    ("pass*/*/iter*/params_local", StageLayout(("m",), _F32)),
    ("pass*/*/final_global", StageLayout((6,), _F32)),
    ("pass*/*/final_local", StageLayout(("m",), _F32)),
    ("pass*/landmark_likelihoods", StageLayout(("n",), _F32)),
    ("final/landmarks", StageLayout(("n", 2), _F32)),
    ("final/params_global", StageLayout((6,), _F32)),
    ("final/params_local", StageLayout(("m",), _F32)),
    ("final/likelihood", StageLayout((), _F32)),
    ("final/landmark_likelihoods", StageLayout(("n",), _F32)),
    ("final/success", StageLayout((), _I32)),
    ("hierarchical/landmarks_before", StageLayout(("n", 2), _F32)),
    ("hierarchical/parts_used", StageLayout((), _I32)),
    ("hierarchical/*/landmarks", StageLayout(("n", 2), _F32)),
    ("hierarchical/*/params_global", StageLayout((6,), _F32)),
    ("hierarchical/*/params_local", StageLayout(("m",), _F32)),
))

#: Points and non-rigid modes of the main model (FORMAT.md: landmarks (68, 2), params_local (34,)).
MAIN_POINTS, MAIN_MODES = 68, 34
#: The part models of the hierarchical cases and their points (FORMAT.md: inner face 51, eyes 28).
PART_POINTS = {"inner": 51, "left_eye_28": 28, "right_eye_28": 28}
#: ``pass0`` .. ``pass2``: one pass per patch scale 0.25, 0.35, 0.5 (FORMAT.md).
N_PASSES = 3
#: Stages of a part model itself (``hierarchical/<part>/landmarks``), not of its own fit.
_PART_RESULTS = ("landmarks", "params_global", "params_local")
#: Dimension name -> (dimension, factor, offset): the size is ``factor * dimension + offset``.
_DIMS = {"n": ("n", 1, 0), "2n": ("n", 2, 0), "m": ("m", 1, 0), "6+m": ("m", 1, 6),
         "w": ("w", 1, 0), "A": ("A", 1, 0), "H": ("H", 1, 0), "W": ("W", 1, 0)}
_PASS_FIELD = re.compile(r"pass(0|[1-9][0-9]*)")
_ITER_FIELD = re.compile(r"iter([0-9]{2})")

#: The manifest's ``layout`` block of every case :func:`write_case` writes (traces of
#: :class:`TraceWriter` and ``fit --trace-out``);
#: ``iterations`` word for word as in the C++ goldens' manifests (FORMAT.md: the last
#: iteration of a phase that stopped early has only ``shape_change_norm``).
TRACE_LAYOUT = {
    "points": "arrays of landmarks are (68, 2) with columns (x, y) (a part model's: (n, 2), n its points)",
    "passes": "passN is the N-th window-size pass actually run (scales with window size 0 are skipped)",
    "iterations": "passN/{rigid|nonrigid}/iterKK: every loop iteration entered; an iteration that stops "
                  "on shape_change_norm < 0.01 has only shape_change_norm (no update)",
}


def stage_layout(key: str) -> StageLayout | None:
    """Shape and dtype of stage ``key`` (:data:`STAGE_LAYOUTS`), or None if FORMAT.md has no such key.

    Only the kind is looked up here (``pass7/...`` finds the per-pass row):
    :meth:`TraceWriter.record` also checks the pass and iteration fields. A multi-view
    hypothesis's key (``hypothesis03/pass0/response``) has its main key's layout.
    """
    key = split_hypothesis(key)[1]
    layout = STAGE_LAYOUTS.get(key)
    if layout is None:
        part, main_key = split_part(key)
        if part is not None:
            layout = STAGE_LAYOUTS.get(main_key)
    return layout


def _kinds_beside(lookup: str) -> list[str]:
    """Stage kinds FORMAT.md has next to ``lookup`` (same folder): for the 'expected' of a message."""
    folder = lookup.rpartition("/")[0]
    names: list[str] = []
    for pattern, _ in STAGE_LAYOUTS.patterns:
        pfolder, _, name = pattern.rpartition("/")
        if StageMeanings._compile(pfolder).match(folder) and name not in names:
            names.append(name)
    return names


def _trace_key(key: str) -> tuple[str | None, int | None, StageLayout]:
    """``(part, pass, layout)`` of a key a golden can hold, else InputError naming the key.

    The grammar: ``input/gray``, ``init/<kind>``, ``final/<kind>``,
    ``passN/<kind>``, ``passN/{rigid|nonrigid}/<kind>``,
    ``passN/{rigid|nonrigid}/iterKK/<kind>`` (N in 0..2 without leading zeros, KK exactly
    two digits, ``shape_change_norm`` from KK = 01), ``hierarchical/landmarks_before``,
    ``hierarchical/parts_used``, ``hierarchical/<part>/{landmarks|params_global|params_local}``
    and a part model's own fit ``hierarchical/<part>/{init/..|passN/..|final/..}``,
    with ``<part>`` one of :data:`PART_POINTS`; kinds as in :data:`STAGE_LAYOUTS`. Any of these
    may follow ``hypothesisNN/`` (one multi-view hypothesis's fit, :func:`clnfdiag.keys.hypothesis_prefix`).
    """
    if not isinstance(key, str):
        raise InputError(f"stage key must be a string like 'pass0/response', got {type(key).__name__}")
    hypothesis, rest = split_hypothesis(key)
    if hypothesis is not None:
        return _trace_key(rest)
    part, lookup = None, key
    if key.startswith("hierarchical/") and key.count("/") >= 2:
        part, _, rest = key[len("hierarchical/"):].partition("/")
        if part not in PART_POINTS:
            raise InputError(f"{key!r}: unknown part model {part!r}; expected one of "
                             f"{', '.join(PART_POINTS)} (FORMAT.md, hierarchical cases)")
        if rest not in _PART_RESULTS:
            lookup = rest
            if rest.split("/", 1)[0] not in ("init", "final") and not rest.startswith("pass"):
                raise InputError(f"{key!r} is not a stage key of the golden format (see FORMAT.md); "
                                 f"expected hierarchical/{part}/ followed by {', '.join(_PART_RESULTS)}, "
                                 "or a main-model init/, passN/ or final/ key (the part's own fit)")
    pass_index = None
    segs = lookup.split("/")
    if segs[0].startswith("pass"):
        m = _PASS_FIELD.fullmatch(segs[0])
        if m is None or int(m.group(1)) >= N_PASSES:
            raise InputError(f"{key!r}: pass field {segs[0]!r} is malformed or out of range; expected "
                             f"{', '.join(f'pass{k}' for k in range(N_PASSES))} (FORMAT.md: one pass per "
                             "patch scale 0.25, 0.35, 0.5)")
        pass_index = int(m.group(1))
        if len(segs) >= 3 and segs[1] not in PHASES:
            raise InputError(f"{key!r}: {segs[1]!r} is not a phase; expected {segs[0]}/rigid/... or "
                             f"{segs[0]}/nonrigid/...")
        if len(segs) >= 4:
            it = _ITER_FIELD.fullmatch(segs[2])
            if it is None:
                raise InputError(f"{key!r}: iteration field {segs[2]!r} is malformed or out of range; "
                                 "expected iter00 .. iter99 (FORMAT.md's iterKK: exactly two digits, "
                                 "as clnfdiag.keys.iter_key writes it)")
            if segs[3] == "shape_change_norm" and int(it.group(1)) == 0:
                raise InputError(f"{key!r}: iteration 00 has no shape_change_norm; expected it from "
                                 "iter01 on (FORMAT.md: the change from the previous iteration's shape)")
    layout = STAGE_LAYOUTS.get(lookup)
    if layout is None:
        beside = _kinds_beside(lookup)
        expected = (f"expected one of: {', '.join(beside)}" if beside else
                    "expected a key of FORMAT.md's stages table: input/gray, init/<kind>, passN/<kind>, "
                    "passN/<phase>/<kind>, passN/<phase>/iterKK/<kind>, final/<kind> or hierarchical/...")
        raise InputError(f"{key!r} is not a stage key of the golden format (see FORMAT.md); {expected}")
    return part, pass_index, layout


class TraceWriter(Recorder):
    """The recorder for other CLNF ports: call it at each stage, then save a golden-format case.

    Every :meth:`record` is checked at once against the golden format
    (``../shared/golden/FORMAT.md``), so a typo or a layout slip fails where it
    is made (:class:`~clnfdiag.errors.InputError`, one line naming the key, the
    problem and what was expected) instead of silently leaving a stage
    uncompared. A port records what it has; stages it does not record are
    reported as missing by ``clnfdiag compare``, never as wrong — except
    ``final/landmarks``, which every trace needs.

    **Keys** (the only ones a golden can hold, so the only ones ``compare``
    can match)::

        input/gray   init/<kind>   final/<kind>
        passN/<kind>   passN/<phase>/<kind>   passN/<phase>/iterKK/<kind>
        hierarchical/landmarks_before   hierarchical/parts_used
        hierarchical/<part>/{landmarks,params_global,params_local}
        hierarchical/<part>/<init/..., passN/... or final/... key>   (a part's own fit)

    ``N`` is 0, 1 or 2 (one pass per patch scale, no leading zero); ``<phase>``
    is ``rigid`` or ``nonrigid``; ``KK`` is exactly two digits, ``00`` .. ``99``
    (:func:`clnfdiag.keys.iter_key`); ``<part>`` is ``inner``, ``left_eye_28``
    or ``right_eye_28``; ``<kind>`` is one FORMAT.md lists at that place.
    ``shape_change_norm`` exists from ``iter01`` on. **Early stop:** the last
    iteration of a phase that stopped early has only ``shape_change_norm``
    (FORMAT.md; the manifest's ``layout.iterations`` says the same): record
    just that key for it (a fit loop driving this recorder does so by
    :meth:`discard`-ing the stopped iteration's ``shape``).

    **Shapes and dtypes** come from :data:`STAGE_LAYOUTS` (FORMAT.md's shapes,
    the C++ goldens' dtypes): landmarks ``(n, 2)``, per-landmark vectors
    ``(n,)``, maps ``(n, w, w)``, areas ``(n, A, A)``, ``weights`` ``(2n,)``,
    Jacobians ``(2n, 6)`` rigid / ``(2n, 6+m)`` non-rigid, ``param_update``
    ``(6,)`` / ``(6+m,)``, global parameters ``(6,)``, local ``(m,)``, scalars
    0-d (a ``(1,)`` or ``(1, 1)`` array is refused), ``input/gray`` the image's
    ``(H, W)``. float32 everywhere except ``shape_change_norm`` (float64),
    int32 for counts, indices and flags (``window_size``, ``scale_index``,
    ``view_id``, ``visibilities``, ``n_updates``, ``success``, ``parts_used``)
    and uint8 for ``input/gray``. ``n`` and ``m`` are 68 and 34 for the main
    model (FORMAT.md); a part model's ``n`` is FORMAT.md's (51 inner, 28 per
    eye) and its ``m`` is fixed by the first of its arrays that shows it. A
    pass's ``w`` is fixed by its ``window_size`` or its first map, whichever is
    recorded first, and everything else of that pass must agree; ``A >= w``.

    **Casting:** a value is stored in the golden's dtype, as the ``dtype``
    argument of :meth:`Recorder.record` has always meant. Any real numeric
    value is cast to a float stage (float64 landmarks become float32, rounded
    to nearest; beyond float32's range they become inf); integer and bool
    values whose range fits are cast to an integer stage. Refused: floats for
    an integer stage (``11.0`` for ``window_size``), bool for a float stage,
    complex, strings, objects, ragged lists, and a ``dtype`` argument other
    than the golden's. NaN and inf are kept: a port's NaN is what the
    comparison is for.

    Examples
    --------
    >>> from clnfdiag.golden import TraceWriter
    >>> from clnfdiag.keys import iter_key
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
        # Dimensions fixed so far, shared with scoped() writers: scope -> {dim: (size, fixed by)}.
        # Scopes: ("model", part) holds n and m, ("pass", part, k) holds w and A.
        self._dims: dict[tuple, dict[str, tuple[int, str]]] = {
            ("model", None): {"n": (MAIN_POINTS, "FORMAT.md"), "m": (MAIN_MODES, "FORMAT.md")},
            **{("model", p): {"n": (n, "FORMAT.md")} for p, n in PART_POINTS.items()},
        }
        self._image_hw: dict[str, tuple[int, int] | None] = {}  # read once, on input/gray

    def record(self, key: str, value: Any, dtype: Any = None) -> None:
        """Check ``prefix + key`` and ``value`` against the golden format, store a copy in the golden dtype.

        Raises
        ------
        InputError
            A key no golden can hold, a value of the wrong shape, or a value
            whose dtype cannot become the golden's without loss (see the class
            docstring); nothing is stored then.
        """
        full = self.prefix + key if isinstance(key, str) else key
        part, k, layout = _trace_key(full)
        golden = np.dtype(layout.dtype)
        arr = _golden_kind(full, value, dtype, golden)
        found = self._bindings(full, part, k, layout, arr)
        if full.rsplit("/", 1)[-1] == "window_size":
            found = self._window_size(full, part, k, int(arr), found)
        with np.errstate(over="ignore", invalid="ignore"):
            stored = arr.astype(golden)  # always a copy
        for dim, size in found.items():
            scope = ("model", part) if dim in ("n", "m") else ("pass", part, k)
            self._dims.setdefault(scope, {})[dim] = (size, full)
        self.stages[full] = stored

    def scoped(self, prefix: str) -> "TraceWriter":
        """A writer into the same trace under an extra prefix (a part model's fit), checked alike."""
        child = copy.copy(self)  # shares stages and the fixed dimensions
        child.prefix = self.prefix + prefix
        return child

    def _known(self, part: str | None, k: int | None, layout: StageLayout) -> dict[str, tuple[int, str]]:
        known = dict(self._dims.get(("model", part), {}))
        if k is not None:
            known.update(self._dims.get(("pass", part, k), {}))
        if "H" in layout.shape:
            size = self._image_size()
            if size is not None:
                known["H"], known["W"] = (size[0], "the image"), (size[1], "the image")
        return known

    def _image_size(self) -> tuple[int, int] | None:
        """(height, width) of the trace's picture, None if it cannot be read (save() reports that)."""
        if "hw" not in self._image_hw:
            if isinstance(self.image, (str, os.PathLike)):
                pixels = cv2.imread(str(self.image))
            else:
                pixels = np.asarray(self.image)
            ok = pixels is not None and pixels.ndim in (2, 3)
            self._image_hw["hw"] = (int(pixels.shape[0]), int(pixels.shape[1])) if ok else None
        return self._image_hw["hw"]

    def _bindings(self, key: str, part: str | None, k: int | None, layout: StageLayout,
                  arr: np.ndarray) -> dict[str, int]:
        """Dimensions ``arr`` newly fixes; InputError if its shape does not fit ``layout``."""
        known = self._known(part, k, layout)
        found: dict[str, int] = {}
        if not _fits(layout.shape, arr.shape, known, found):
            raise InputError(f"{key!r}: shape {tuple(arr.shape)} is wrong; expected "
                             f"{_expected(layout, known)}")
        w = found.get("w", known.get("w", (None,))[0])
        a = found.get("A", known.get("A", (None,))[0])
        if w is not None and a is not None and a < w:
            raise InputError(f"{key!r}: area of interest side {a} is smaller than the window {w}; "
                             f"expected A = window + patch - 1 >= {w} (FORMAT.md)")
        return found

    def _window_size(self, key: str, part: str | None, k: int | None, ws: int,
                     found: dict[str, int]) -> dict[str, int]:
        """The window a ``window_size`` value fixes for its pass, checked against the pass's maps."""
        if ws < 1:
            raise InputError(f"{key!r}: window size {ws}; expected >= 1 (a scale with window 0 is not run, "
                             "so it has no pass)")
        pass_dims = self._dims.get(("pass", part, k), {})
        if "w" in pass_dims and pass_dims["w"][0] != ws:
            size, src = pass_dims["w"]
            raise InputError(f"{key!r}: window size {ws}, but the pass's window is {size} (fixed by {src!r}); "
                             f"expected {size}")
        if "A" in pass_dims and pass_dims["A"][0] < ws:
            size, src = pass_dims["A"]
            raise InputError(f"{key!r}: window size {ws} exceeds the area of interest side {size} of "
                             f"{src!r}; expected at most {size} (FORMAT.md: A = window + patch - 1)")
        return {**found, "w": ws}

    def save(self, out_dir, result: dict | None = None) -> Path:
        """Write ``out_dir/<case_id>/`` (manifest.json, image.png, stages.npz).

        The manifest's ``layout`` block is :data:`TRACE_LAYOUT` (its
        ``iterations`` as in the C++ goldens: a phase's early-stopped last
        iteration has only ``shape_change_norm``).
        """
        if "final/landmarks" not in self.stages:
            raise InputError("a trace needs final/landmarks before it can be saved")
        # finite=False: a port's NaN is what the comparison is for (judged as a divergence).
        return write_case(out_dir, self.case_id, self.image, self.bbox, self.preset,
                          self.parameters, self.stages, result or {}, self.producer, finite=False)


def _golden_kind(key: str, value: Any, dtype: Any, golden: np.dtype) -> np.ndarray:
    """``value`` as an array whose dtype can become ``golden`` without loss of kind, else InputError."""
    want = f"{golden} (the golden's dtype{'' if golden.kind == 'f' else ': integer or bool values'})"
    if dtype is not None:
        try:
            asked = np.dtype(dtype)
        except TypeError:
            raise InputError(f"{key!r}: dtype {dtype!r} is not a numpy dtype; expected {want}") from None
        if asked != golden:
            raise InputError(f"{key!r}: dtype {asked} asked; expected {want} or no dtype")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{key!r}: not a numeric array ({exc}); expected {want}") from None
    kind = arr.dtype.kind
    if kind not in "biufc":
        raise InputError(f"{key!r}: {arr.dtype} values are not numeric; expected {want}")
    allowed = "iuf" if golden.kind == "f" else "biu"
    if kind not in allowed:
        raise InputError(f"{key!r}: {arr.dtype} values cannot become {golden} without loss; expected {want}")
    if kind in "iu" and golden.kind in "iu" and arr.size:
        info = np.iinfo(golden)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise InputError(f"{key!r}: values {lo} .. {hi} do not fit {golden}; expected {want}, "
                             f"{info.min} .. {info.max}")
    return arr


def _fits(spec: tuple[int | str, ...], shape: tuple[int, ...], known: dict[str, tuple[int, str]],
          found: dict[str, int]) -> bool:
    """True if ``shape`` fits ``spec`` with the ``known`` dimensions; adds the ones it fixes to ``found``."""
    if len(shape) != len(spec):
        return False
    for want, got in zip(spec, shape):
        if isinstance(want, int):
            if got != want:
                return False
            continue
        dim, factor, offset = _DIMS[want]
        size = found[dim] if dim in found else known[dim][0] if dim in known else None
        if size is None:
            size, r = divmod(got - offset, factor)
            if r or size < 0:
                return False
            found[dim] = size
        if got != factor * size + offset:
            return False
    return True


def _expected(layout: StageLayout, known: dict[str, tuple[int, str]]) -> str:
    """``(68, 11, 11) float32 (w = 11 from 'pass0/window_size')``: a layout with the dimensions known."""
    sizes, notes = [], []
    for want in layout.shape:
        if isinstance(want, int):
            sizes.append(str(want))
            continue
        dim, factor, offset = _DIMS[want]
        if dim in known:
            size, src = known[dim]
            sizes.append(str(factor * size + offset))
            note = f"{dim} = {size} from {src if src in ('FORMAT.md', 'the image') else repr(src)}"
            if note not in notes:
                notes.append(note)
        else:
            sizes.append(want)
    shape = "(" + ", ".join(sizes) + ("," if len(sizes) == 1 else "") + ")"
    return f"{shape} {layout.dtype}" + (f" ({'; '.join(notes)})" if notes else "")
