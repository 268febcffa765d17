"""Property-based fuzzing of every reader of user-supplied files: nothing but a ClnfdiagError escapes.

Readers fuzzed (each from a small valid file, then mutated: random bytes overwritten,
truncated, values replaced by arbitrary JSON/TOML/tokens):

* the golden-case manifest (``manifest.json``) and archive (``stages.npz``) through
  :func:`clnfdiag.golden.read_case` with ``verify=True``;
* the tolerances TOML (``--tolerances FILE`` and ``[tool.clnfdiag.tolerances]``);
* the model files: PDM text, CCNF binary, main and CLNF configs.

Example counts are modest so the suite stays fast (``EXAMPLES``: 740 in all, about 6 s on the
project's 2-core machine); hypothesis runs derandomized (the same examples on every run, so a
failure is reproducible) and keeps no example database in the checkout.
"""
from __future__ import annotations

import json
import shutil
import struct
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clnfdiag.cli import summary_lines
from clnfdiag.compare.tolerances import load_tolerances
from clnfdiag.errors import ClnfdiagError
from clnfdiag.golden import MANIFEST, STAGES, read_case, write_case
from clnfdiag.models.ccnf_file import read_ccnf
from clnfdiag.models.config import read_clnf_config, read_main_config
from clnfdiag.models.pdm_file import read_pdm

from conftest import PROJECT_GOLDEN

#: Examples per property (hypothesis's default is 100).
EXAMPLES = {"manifest": 120, "npz": 80, "toml": 150, "pdm": 120, "ccnf": 150, "config": 120}


def fuzz(kind: str):
    """Settings of one property: its example count, no deadline (first calls import numba/cv2),
    derandomized, no database."""
    return settings(max_examples=EXAMPLES[kind], deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def only_clnfdiag_errors(read, path: Path) -> None:
    """``read(path)`` either works or raises a ClnfdiagError (anything else fails the test)."""
    try:
        result = read(path)
    except ClnfdiagError as err:
        assert "\n" not in str(err)  # one line
        return
    close = getattr(result, "close", None)
    if close is not None:
        close()


def mutate(data: bytes, edits: list[tuple[int, bytes]], cut: int | None) -> bytes:
    """``data`` with bytes overwritten at (fractional) offsets, then truncated to ``cut`` bytes."""
    out = bytearray(data)
    for pos, chunk in edits:
        at = pos % max(1, len(out))
        out[at:at + len(chunk)] = chunk
    return bytes(out if cut is None else out[:cut % (len(out) + 1)])


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8)), max_size=4)
CUTS = st.none() | st.integers(0, 1 << 20)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                    | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


# --------------------------------------------------------------------------- golden cases

def _small_case(root: Path) -> Path:
    """A tiny valid case: the astronaut picture and three small stages."""
    with read_case(PROJECT_GOLDEN / "astronaut_default", verify=False) as g:
        stages = {"final/landmarks": np.array(g.stage("final/landmarks")),
                  "pass0/window_size": np.array(g.stage("pass0/window_size")),
                  "pass0/rigid/iter00/dxs": np.array(g.stage("pass0/rigid/iter00/dxs"))}
        return write_case(root, "small", g.image_path, g.bbox, g.preset, g.parameters, stages,
                          g.manifest["result"], "fuzz")


@pytest.fixture(scope="module")
def small_case(tmp_path_factory) -> Path:
    case = _small_case(tmp_path_factory.mktemp("fuzz-case"))
    with read_case(case, verify=True):  # the seed itself is valid
        pass
    return case


def _case_copy(small_case: Path) -> Path:
    dst = Path(tempfile.mkdtemp(prefix="clnfdiag-fuzz-"))
    shutil.copytree(small_case, dst / "small")
    return dst / "small"


def _replace_at(obj, path: list, value):
    """``obj`` with the item at ``path`` (indices into nested dicts/lists, taken modulo) replaced."""
    if not path or not isinstance(obj, (dict, list)) or not obj:
        return value
    keys = list(obj) if isinstance(obj, dict) else list(range(len(obj)))
    k = keys[path[0] % len(keys)]
    obj[k] = _replace_at(obj[k], path[1:], value)
    return obj


def _validate_and_show(case: Path) -> None:
    """What ``golden validate`` and ``golden show`` do with a case."""
    with read_case(case, verify=True) as c:
        summary_lines(c)


@fuzz("manifest")
@given(path=st.lists(st.integers(0, 50), max_size=4), value=JSON, edits=EDITS, cut=CUTS,
       as_text=st.booleans())
def test_manifest_reader(small_case, path, value, edits, cut, as_text):
    case = _case_copy(small_case)
    try:
        manifest = json.loads((case / MANIFEST).read_text())
        if as_text:  # damaged JSON text
            data = mutate((case / MANIFEST).read_bytes(), edits, cut)
        else:        # valid JSON, any value anywhere
            data = json.dumps(_replace_at(manifest, path, value)).encode()
        (case / MANIFEST).write_bytes(data)
        only_clnfdiag_errors(_validate_and_show, case)
    finally:
        shutil.rmtree(case.parent)


@fuzz("npz")
@given(edits=EDITS, cut=CUTS, junk=st.none() | st.binary(max_size=64))
def test_npz_reader(small_case, edits, cut, junk):
    case = _case_copy(small_case)
    try:
        data = (case / STAGES).read_bytes()
        (case / STAGES).write_bytes(junk if junk is not None else mutate(data, edits, cut))
        only_clnfdiag_errors(read_case, case)
        only_clnfdiag_errors(lambda p: read_case(p, verify=True, finite=False), case)
    finally:
        shutil.rmtree(case.parent)


# --------------------------------------------------------------------------- tolerances TOML

TOML_KEYS = st.sampled_from(["response", "mean_shifts", "landmarks", "propagated", "atol", "rtol", "tool",
                             "clnfdiag", "tolerances", "nonsense"])
TOML_VALUES = st.recursive(st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True)
                           | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TOML_KEYS, inner, max_size=3),
                           max_leaves=10)


def _toml(value) -> str:
    """TOML text of a nested dict (inline tables); values TOML cannot hold become strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if value != value else repr(value))
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _nested(*keys: str, leaf) -> st.SearchStrategy:
    """Values at each level of ``tool.clnfdiag.tolerances``: the expected table or anything else."""
    if not keys:
        return leaf
    return TOML_VALUES | st.fixed_dictionaries({keys[0]: _nested(*keys[1:], leaf=leaf)})


TABLES = st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=4)


@fuzz("toml")
@given(table=TABLES, tool=_nested("clnfdiag", "tolerances", leaf=TABLES), text=st.none() | st.text(max_size=80),
       pyproject=st.booleans())
def test_tolerances_reader(table, tool, text, pyproject):
    with tempfile.TemporaryDirectory(prefix="clnfdiag-fuzz-") as tmp:
        body = text if text is not None else "\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in table.items())
        if pyproject:
            path = Path(tmp) / "pyproject.toml"
            path.write_text(body if text is not None else f"tool = {_toml(tool)}\n", encoding="utf-8")
            only_clnfdiag_errors(lambda p: load_tolerances(None, cwd=p.parent), path)
        else:
            path = Path(tmp) / "tol.toml"
            path.write_text(body, encoding="utf-8")
            only_clnfdiag_errors(load_tolerances, path)


def test_toml_fuzz_seed_is_valid_toml():
    """The generator writes TOML tomllib reads back (else the property tests only the parser's errors)."""
    text = f'"response" = {_toml({"atol": 0.5, "rtol": 1e-5})}\n"propagated" = {_toml({"landmarks": {"atol": 1}})}'
    assert tomllib.loads(text) == {"response": {"atol": 0.5, "rtol": 1e-5}, "propagated": {"landmarks": {"atol": 1}}}
    assert load_tolerances(_write_tmp(text)).get("response").atol == 0.5


def _write_tmp(text: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="clnfdiag-fuzz-")) / "tol.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- model files

def _mat_text(a: np.ndarray, cv_type: int = 6) -> str:
    rows, cols = a.shape
    return f"{rows}\n{cols}\n{cv_type}\n" + "\n".join(" ".join(repr(float(v)) for v in row) for row in a) + "\n"


PDM_TEXT = ("# mean\n" + _mat_text(np.arange(6.0).reshape(6, 1)) + "# pcs\n" + _mat_text(np.ones((6, 2)))
            + "# eig\n" + _mat_text(np.array([[1.0], [2.0]])))


class _Binary:
    """Builds a binary model file and remembers where its int32 fields (counts, sizes, markers) are."""

    def __init__(self) -> None:
        self.data = b""
        self.int_fields: list[int] = []

    def ints(self, *values: int) -> "_Binary":
        for v in values:
            self.int_fields.append(len(self.data))
            self.data += struct.pack("<i", v)
        return self

    def doubles(self, *values: float) -> "_Binary":
        self.data += struct.pack(f"<{len(values)}d", *values)
        return self

    def mat(self, a: np.ndarray, cv_type: int) -> "_Binary":
        self.ints(a.shape[0], a.shape[1], cv_type)
        self.data += np.ascontiguousarray(a, {4: "<i4", 5: "<f4", 6: "<f8"}[cv_type]).tobytes()
        return self


def _ccnf() -> _Binary:
    """A valid CCNF file: 1 view, 2 landmarks (one without expert), window 3, 3x3 experts, 1 neuron."""
    b = _Binary().doubles(0.25).ints(1)
    b.mat(np.zeros((3, 1)), 6).mat(np.array([[1], [0]]), 4)
    b.ints(1, 3, 1).mat(np.eye(9), 5)
    b.ints(5, 3, 3, 1).ints(2, 0).doubles(1.0, 0.1, 2.0).mat(np.ones((3, 3)), 6).doubles(0.5, 0.9)
    return b.ints(5, 3, 3, 0).ints(0)


def _ccnf_bytes() -> bytes:
    return _ccnf().data


MAIN_CONFIG = "LandmarkDetector clnf_general.txt\nLandmarkDetector_part part.txt inner 17 0 18 1\nDetectionValidator x\n"
CLNF_CONFIG = "PDM pdm.txt\nTriangulations tris.txt\nPatchesCCNF ccnf_0.25.txt\n"


@pytest.fixture(scope="module")
def model_seeds(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz-models")
    (d / "pdm.txt").write_text(PDM_TEXT)
    (d / "ccnf.txt").write_bytes(_ccnf_bytes())
    (d / "main.txt").write_text(MAIN_CONFIG)
    (d / "clnf.txt").write_text(CLNF_CONFIG)
    # The seeds are valid, so the mutations start from files the readers accept.
    assert read_pdm(d / "pdm.txt").n_modes == 2
    scale = read_ccnf(d / "ccnf.txt")
    assert scale.n_points == 2 and scale.experts[0][0].n_neurons == 1 and scale.experts[0][1].empty
    assert read_main_config(d / "main.txt").parts[0].mapping == ((17, 0), (18, 1))
    assert len(read_clnf_config(d / "clnf.txt").ccnf_files) == 1
    return d


def _fuzz_file(seed: Path, data: bytes, read) -> None:
    with tempfile.TemporaryDirectory(prefix="clnfdiag-fuzz-") as tmp:
        path = Path(tmp) / seed.name
        path.write_bytes(data)
        only_clnfdiag_errors(read, path)


TOKENS = st.sampled_from(["0", "-1", "3", "6", "5", "4", "1e308", "nan", "inf", "x", "#", "2147483647", "-7"])


@fuzz("pdm")
@given(edits=EDITS, cut=CUTS, at=st.integers(0, 200), tokens=st.lists(TOKENS, max_size=5))
def test_pdm_reader(model_seeds, edits, cut, at, tokens):
    words = PDM_TEXT.split("\n")
    words[at % len(words)] = " ".join(tokens)  # a line of plausible but wrong tokens
    data = mutate("\n".join(words).encode(), edits, cut)
    _fuzz_file(model_seeds / "pdm.txt", data, read_pdm)


INT32 = st.sampled_from([-2**31, -3, -1, 0, 1, 2, 3, 4, 5, 6, 9, 1000, 2**20 + 1, 2**31 - 1]) | st.integers(-2**31,
                                                                                                      2**31 - 1)


@fuzz("ccnf")
@given(edits=EDITS, cut=CUTS,
       ints=st.lists(st.tuples(st.sampled_from(_ccnf().int_fields), INT32), max_size=3),
       doubles=st.lists(st.tuples(st.integers(0, 1 << 12), st.sampled_from([float("nan"), float("inf"), -1.0, 1e308,
                                                                           0.0])), max_size=2))
def test_ccnf_reader(model_seeds, edits, cut, ints, doubles):
    data = bytearray(_ccnf_bytes())
    for at, value in ints:  # counts, sizes and markers replaced by arbitrary int32 values
        data[at:at + 4] = struct.pack("<i", value)
    for pos, value in doubles:  # and values by extreme ones
        at = (pos * 4) % (len(data) - 7)
        data[at:at + 8] = struct.pack("<d", value)
    _fuzz_file(model_seeds / "ccnf.txt", mutate(bytes(data), edits, cut), read_ccnf)


@fuzz("config")
@given(edits=EDITS, cut=CUTS, line=st.lists(st.sampled_from(["LandmarkDetector", "LandmarkDetector_part", "PDM",
                                                            "PatchesCCNF", "Triangulations", "x", "1", "-1",
                                                            "a b", "\x00", "é"]), max_size=6),
       main=st.booleans())
def test_config_readers(model_seeds, edits, cut, line, main):
    text = (MAIN_CONFIG if main else CLNF_CONFIG) + " ".join(line) + "\n"
    seed = model_seeds / ("main.txt" if main else "clnf.txt")
    _fuzz_file(seed, mutate(text.encode(), edits, cut), read_main_config if main else read_clnf_config)
