"""OpenFace model files: found where users keep them, verified, read right, and bad files reported in one line.

Expectations are read from the model files themselves with plain parsing
here, independently of ``clnfdiag.models``. Corrupted copies live in
``tmp_path`` only (OpenFace's licence: no model file in the repository).
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from clnfdiag.errors import EXIT_BAD_INPUT, ModelError
from clnfdiag.models import ModelChecksumWarning, find_model_dir, load_model
from clnfdiag.models.locate import CACHE_SUBDIR, MAIN_CONFIG, known_checksums

from _models import (HOW_TO, SHARED_MODELS, model_dir_or_fail, model_or_fail, models_root,
                     writable_copy)
from conftest import REPO

PDM_REL = "pdms/In-the-wild_aligned_PDM_68.txt"
CCNF_REL = "patch_experts/ccnf_patches_0.35_general.txt"


@pytest.fixture(scope="session")
def model():
    return model_or_fail()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return model_dir_or_fail()


@pytest.fixture
def model_copy(model_dir, tmp_path) -> Path:
    """A writable copy of the model folder, named ``model`` like OpenFace's."""
    return writable_copy(model_dir, tmp_path / "model")


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    return msg


def _load_error(folder: Path) -> str:
    """The one-line ModelError of loading a damaged copy (its checksum warning is expected, ignored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelChecksumWarning)
        with pytest.raises(ModelError) as exc:
            load_model(folder)
    return _one_line(exc.value)


# --------------------------------------------------------------------------- independent parsing

def _tokens(path: Path) -> list[str]:
    return [t for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
            for t in line.split()]


def _pdm_facts(path: Path) -> tuple[int, int]:
    """(points, modes) from the PDM text: rows of the mean shape / 3, columns of the components."""
    toks = _tokens(path)
    rows, cols = int(toks[0]), int(toks[1])
    pos = 3 + rows * cols
    return rows // 3, int(toks[pos + 1])


def _main_config_parts(path: Path) -> list[tuple[str, list[tuple[int, int]]]]:
    out = []
    for line in path.read_text().splitlines():
        toks = line.split()
        if toks and toks[0] == "LandmarkDetector_part":
            idx = [int(t) for t in toks[3:]]
            out.append((toks[2], list(zip(idx[0::2], idx[1::2]))))
    return out


def _ccnf_header(path: Path) -> tuple[float, int, int]:
    """(patch scaling, views, byte offset of the first patch expert's marker) by plain struct reads."""
    data = path.read_bytes()
    scaling, n_views = struct.unpack_from("<di", data, 0)
    off = 12

    def skip_mat(off: int) -> int:
        rows, cols, cv_type = struct.unpack_from("<3i", data, off)
        size = {4: 4, 5: 4, 6: 8}[cv_type]
        return off + 12 + rows * cols * size

    for _ in range(2 * n_views):  # view centres, then visibilities
        off = skip_mat(off)
    (n_windows,) = struct.unpack_from("<i", data, off)
    off += 4
    for _ in range(n_windows):
        _win, n_comp = struct.unpack_from("<2i", data, off)
        off += 8
        for _ in range(n_comp):
            off = skip_mat(off)
    return scaling, n_views, off


# --------------------------------------------------------------------------- locating

def _check_loaded(m, model_dir: Path) -> None:
    assert m.model_dir.resolve() == model_dir.resolve()
    assert m.main.pdm.n_points == 68


def test_found_via_env(monkeypatch, model_dir):
    monkeypatch.setenv("OPENFACE_MODELS_DIR", str(models_root()))
    monkeypatch.setenv("XDG_DATA_HOME", "/nonexistent-xdg")
    assert find_model_dir().resolve() == model_dir.resolve()
    _check_loaded(load_model(parts=False), model_dir)


def test_found_via_explicit_argument(monkeypatch, model_dir, tmp_path):
    monkeypatch.setenv("OPENFACE_MODELS_DIR", str(tmp_path / "not-here"))  # explicit wins
    _check_loaded(load_model(model_dir, parts=False), model_dir)


def test_found_via_xdg_data_home(monkeypatch, model_dir, tmp_path):
    # The cache layout under $XDG_DATA_HOME/OpenFaceModels, with $OPENFACE_MODELS_DIR unset.
    cache_root = model_dir
    for _ in CACHE_SUBDIR.parts:
        cache_root = cache_root.parent
    if (cache_root / CACHE_SUBDIR).resolve() != model_dir.resolve():
        # Models given as a plain model/ folder: build the cache layout from symlinks.
        cache_root = tmp_path / "cache"
        (cache_root / CACHE_SUBDIR).parent.mkdir(parents=True)
        (cache_root / CACHE_SUBDIR).symlink_to(model_dir, target_is_directory=True)
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (xdg / "OpenFaceModels").symlink_to(cache_root, target_is_directory=True)
    monkeypatch.delenv("OPENFACE_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    assert find_model_dir().resolve() == model_dir.resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelChecksumWarning)
        _check_loaded(load_model(), model_dir)


@pytest.mark.parametrize("how", ["folder-itself", "parent-of-model"])
def test_plain_model_folder_symlinked(how, model_dir, tmp_path):
    """OpenFace's own ``model/`` folder (here a symlink to the real one), given directly or via its parent."""
    (tmp_path / "model").symlink_to(model_dir, target_is_directory=True)
    arg = tmp_path / "model" if how == "folder-itself" else tmp_path
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelChecksumWarning)
        _check_loaded(load_model(arg), model_dir)


def test_plain_model_folder_copy(model_copy):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelChecksumWarning)
        m = load_model(model_copy)
    assert m.model_dir == model_copy.resolve()
    assert sorted(m.files) == sorted(model_or_fail().files)


def test_plain_model_folder_of_file_symlinks(model_dir, tmp_path):
    dst = tmp_path / "model"
    for f in model_dir.rglob("*"):
        if f.is_file():
            link = dst / f.relative_to(model_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelChecksumWarning)
        _check_loaded(load_model(dst), dst)


# --------------------------------------------------------------------------- what is read

def test_main_model_matches_files(model, model_dir):
    n_points, n_modes = _pdm_facts(model_dir / PDM_REL)
    assert (n_points, n_modes) == (68, 34)
    pdm = model.main.pdm
    assert (pdm.n_points, pdm.n_modes) == (n_points, n_modes)
    assert pdm.mean_shape.shape == (3 * n_points,) and pdm.mean_shape.dtype == np.float32
    assert pdm.princ_comp.shape == (3 * n_points, n_modes)
    toks = _tokens(model_dir / PDM_REL)
    np.testing.assert_array_equal(pdm.mean_shape[:5], np.array(toks[3:8], dtype=np.float32))

    ccnf = [model_dir / t.split(None, 1)[1] for t in (model_dir / "clnf_general.txt")
            .read_text().splitlines() if t.startswith("PatchesCCNF")]
    headers = [_ccnf_header(p) for p in ccnf]
    assert [h[0] for h in headers] == [0.25, 0.35, 0.5]
    assert [h[1] for h in headers] == [7, 7, 7]
    assert model.main.patch_scales == [0.25, 0.35, 0.5]
    assert [s.n_views for s in model.main.scales] == [7, 7, 7]
    for s in model.main.scales:
        assert s.visibility.shape == (7, 68)
        assert sorted(s.sigma_components) == [7, 9, 11, 15]
        assert len(s.experts) == 7 and all(len(v) == 68 for v in s.experts)
        # frontal view: every landmark has an expert
        assert s.visibility[0].all()


def test_parts_match_main_config(model, model_dir):
    parts = _main_config_parts(model_dir / MAIN_CONFIG)
    assert [name for name, _ in parts] == ["inner", "left_eye_28", "right_eye_28"]
    assert [len(pairs) for _, pairs in parts] == [51, 6, 6]
    assert [p.name for p in model.parts] == [name for name, _ in parts]
    for part, (_, pairs) in zip(model.parts, parts):
        np.testing.assert_array_equal(part.mapping, np.array(pairs))
    assert [p.model.pdm.n_points for p in model.parts] == [51, 28, 28]


# --------------------------------------------------------------------------- checksums

def _sha256sums() -> dict[str, str]:
    path = SHARED_MODELS / "SHA256SUMS"
    if not path.is_file():
        pytest.fail(f"{path} is missing; {HOW_TO}", pytrace=False)
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(None, 1)
            out[rel.strip().removeprefix("./lib/local/LandmarkDetector/model/")] = digest
    return out


def test_known_checksums_match_shared_sha256sums():
    sums = _sha256sums()
    known = known_checksums()
    assert len(sums) == 21
    for rel, digest in sums.items():
        assert known.get(rel) == digest, rel
    assert set(known) == set(sums)


def test_loaded_files_have_known_digests(model):
    known = known_checksums()
    assert len(model.files) == 20  # every file but tris_68.txt is read
    for rel, digest in model.files.items():
        assert known[rel] == digest, rel


def _modify_pdm_digit(model_copy: Path) -> Path:
    pdm = model_copy / PDM_REL
    data = pdm.read_bytes()
    assert b"-73.393523" in data
    pdm.write_bytes(data.replace(b"-73.393523", b"-73.393524", 1))
    return pdm


def test_modified_file_warns(model_copy):
    pdm = _modify_pdm_digit(model_copy)
    with pytest.warns(ModelChecksumWarning) as rec:
        m = load_model(model_copy)
    msgs = [str(w.message) for w in rec if issubclass(w.category, ModelChecksumWarning)]
    assert len(msgs) == 1, msgs
    assert str(pdm) in msgs[0] and "differs from OpenFace 2.2.0" in msgs[0]
    assert m.main.pdm.mean_shape[0] == np.float32(-73.393524)  # still parses, value changed


def test_modified_file_strict_is_error(model_copy):
    pdm = _modify_pdm_digit(model_copy)
    with pytest.raises(ModelError) as exc:
        load_model(model_copy, strict=True)
    msg = _one_line(exc.value)
    assert str(pdm) in msg and "differs from OpenFace 2.2.0" in msg


# --------------------------------------------------------------------------- bad input

def test_model_folder_missing(tmp_path, monkeypatch):
    missing = tmp_path / "absent"
    with pytest.raises(ModelError) as exc:
        load_model(missing)
    msg = _one_line(exc.value)
    assert str(missing) in msg and "does not exist" in msg and "OPENFACE_MODELS_DIR" in msg

    monkeypatch.setenv("OPENFACE_MODELS_DIR", str(missing))
    with pytest.raises(ModelError) as exc:
        load_model()
    msg = _one_line(exc.value)
    assert str(missing) in msg and "$OPENFACE_MODELS_DIR" in msg


def test_nothing_configured_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENFACE_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    with pytest.raises(ModelError) as exc:
        load_model()
    msg = _one_line(exc.value)
    assert str(tmp_path / "OpenFaceModels") in msg and "OPENFACE_MODELS_DIR" in msg


def test_main_config_missing(model_copy):
    (model_copy / MAIN_CONFIG).unlink()
    msg = _load_error(model_copy)
    assert str(model_copy) in msg and MAIN_CONFIG in msg


def test_ccnf_missing(model_copy):
    (model_copy / CCNF_REL).unlink()
    msg = _load_error(model_copy)
    assert str(model_copy / CCNF_REL) in msg and "missing" in msg


def _byte_offset(msg: str) -> int:
    m = re.search(r"\(byte (\d+)\)", msg)
    assert m, msg
    return int(m.group(1))


def test_ccnf_truncated(model_copy):
    path = model_copy / CCNF_REL
    data = path.read_bytes()
    cut = len(data) // 2
    path.write_bytes(data[:cut])
    msg = _load_error(model_copy)
    assert str(path) in msg and "truncated" in msg
    offset = _byte_offset(msg)
    # The item that crosses the cut starts before it; the largest item there is a neuron (< 1 kB).
    assert cut - 1024 <= offset <= cut


@pytest.mark.parametrize("which", ["patch-expert", "neuron"])
def test_ccnf_wrong_type_marker(model_copy, which):
    path = model_copy / CCNF_REL
    data = bytearray(path.read_bytes())
    _, _, off = _ccnf_header(path)
    assert struct.unpack_from("<i", data, off)[0] == 5
    expected = 5
    if which == "neuron":
        width, height, n_neurons = struct.unpack_from("<3i", data, off + 4)
        assert (width, height) == (11, 11) and n_neurons > 0
        off += 16
        assert struct.unpack_from("<i", data, off)[0] == 2
        expected = 2
    struct.pack_into("<i", data, off, 7)
    path.write_bytes(bytes(data))
    msg = _load_error(model_copy)
    assert str(path) in msg and "wrong type marker" in msg
    assert f"expected {expected}, found 7" in msg
    assert _byte_offset(msg) == off


def test_pdm_not_a_number(model_copy):
    path = model_copy / PDM_REL
    lines = path.read_text().splitlines(keepends=True)
    lineno = next(i for i, line in enumerate(lines, 1) if line.strip() == "-72.775014")
    lines[lineno - 1] = lines[lineno - 1].replace("-72.775014", "-72.77x014")
    path.write_text("".join(lines))
    msg = _load_error(model_copy)
    assert str(path) in msg and "expected a number" in msg and "'-72.77x014'" in msg
    assert f"(line {lineno})" in msg


def test_pdm_truncated(model_copy):
    path = model_copy / PDM_REL
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    msg = _load_error(model_copy)
    assert str(path) in msg and "ends early" in msg and "principal components" in msg


# --------------------------------------------------------------------------- CLI

def _cli(*args: str, env_models: str | None = None, tmp_path: Path | None = None):
    """Run ``clnfdiag models ...`` through the real root command in a subprocess."""
    env = dict(os.environ)
    env.pop("OPENFACE_MODELS_DIR", None)
    if env_models is not None:
        env["OPENFACE_MODELS_DIR"] = env_models
    if tmp_path is not None:
        env["XDG_DATA_HOME"] = str(tmp_path / "empty-xdg")
    return subprocess.run([sys.executable, "cli.py", "models", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Warning:" not in stderr and "warnings.warn" not in stderr, stderr


def test_cli_check_ok(model_dir):
    r = _cli("check", "--models", str(model_dir))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = r.stdout
    assert f"model folder  {model_dir}" in out
    for rel in model_or_fail().files:
        assert re.search(rf"^  ok +{re.escape(rel)}$", out, re.M), rel
    assert "68 points, 34 modes, patch scales 0.25 0.35 0.5, views per scale 7 7 7" in out
    for name in ("inner", "left_eye_28", "right_eye_28"):
        assert f"part {name}" in out
    assert "21 checked: 21 ok, 0 modified, 0 unknown" in out


def test_cli_check_via_env(model_dir, tmp_path):
    r = _cli("check", env_models=str(model_dir), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli("where", env_models=str(model_dir), tmp_path=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == str(model_dir.resolve())


def test_cli_check_modified(model_copy):
    pdm = _modify_pdm_digit(model_copy)
    r = _cli("check", "--models", str(model_copy))
    assert r.returncode == 0, r.stderr
    _assert_clean_stderr(r.stderr)
    assert re.search(rf"^  modified +{re.escape(PDM_REL)}$", r.stdout, re.M)
    assert "1 modified" in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clnfdiag: warning: {pdm}: differs from OpenFace")

    r = _cli("check", "--strict", "--models", str(model_copy))
    assert r.returncode == EXIT_BAD_INPUT
    _assert_clean_stderr(r.stderr)
    err = r.stderr.splitlines()
    assert err[-1].startswith("clnfdiag: model error: --strict:") and str(pdm) in err[-1]


def test_cli_check_unknown_file(model_copy):
    # Point the CLNF config at a renamed PDM: the config is modified, the PDM unknown.
    (model_copy / PDM_REL).rename(model_copy / "pdms/renamed_PDM_68.txt")
    cfg = model_copy / "clnf_general.txt"
    cfg.write_text(cfg.read_text().replace("In-the-wild_aligned_PDM_68.txt", "renamed_PDM_68.txt"))
    r = _cli("check", "--models", str(model_copy))
    assert r.returncode == 0, r.stderr
    _assert_clean_stderr(r.stderr)
    assert re.search(r"^  unknown +pdms/renamed_PDM_68\.txt$", r.stdout, re.M)
    assert re.search(r"^  modified +clnf_general\.txt$", r.stdout, re.M)
    r = _cli("check", "--strict", "--models", str(model_copy))
    assert r.returncode == EXIT_BAD_INPUT


@pytest.mark.parametrize("damage", ["truncated-ccnf", "missing-folder", "missing-main-config"])
def test_cli_check_bad_input(model_copy, tmp_path, damage):
    target = model_copy
    if damage == "truncated-ccnf":
        path = model_copy / CCNF_REL
        path.write_bytes(path.read_bytes()[:1000])
        expect = [str(path), "truncated", "(byte "]
    elif damage == "missing-folder":
        target = tmp_path / "absent"
        expect = [str(target), "does not exist"]
    else:
        (model_copy / MAIN_CONFIG).unlink()
        expect = [str(model_copy), MAIN_CONFIG]
    r = _cli("check", "--models", str(target))
    assert r.returncode == EXIT_BAD_INPUT, r.stdout + r.stderr
    _assert_clean_stderr(r.stderr)
    lines = r.stderr.splitlines()
    # A damaged file is also a modified one: its warning line may come first.
    assert all(line.startswith("clnfdiag: warning: ") for line in lines[:-1]), r.stderr
    assert len(lines) == (2 if damage == "truncated-ccnf" else 1), r.stderr
    assert lines[-1].startswith("clnfdiag: model error: ")
    for e in expect:
        assert e in lines[-1]


def test_cli_where(model_dir, tmp_path):
    r = _cli("where", "--models", str(model_dir))
    assert r.returncode == 0 and r.stdout.strip() == str(model_dir.resolve())
    r = _cli("where", tmp_path=tmp_path)  # nothing configured
    assert r.returncode == EXIT_BAD_INPUT and r.stdout == ""
    _assert_clean_stderr(r.stderr)
    assert len(r.stderr.splitlines()) == 1 and "OPENFACE_MODELS_DIR" in r.stderr
