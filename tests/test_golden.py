"""Golden-case format: the real cases validate, corrupted copies fail with one clear line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clnfdiag.cli import main
from clnfdiag.errors import GoldenError
from clnfdiag.golden import STAGE_MEANINGS, find_cases, read_case, stage_meaning, write_case

from conftest import PROJECT_GOLDEN, REPO, SHARED_GOLDEN, SHARED_GOLDEN_H, project_cases, shared_cases

COMMITTED = ["astronaut_default", "astronaut_default_h", "astronaut_wild", "einstein_default",
             "takeo_default", "takeo_wild"]
ALL_CASES = project_cases() + shared_cases()


def _case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _manifest(case_dir: Path) -> dict:
    return json.loads((case_dir / "manifest.json").read_text())


# --------------------------------------------------------------------------- real cases

def test_committed_cases_present():
    assert [p.name for p in project_cases()] == COMMITTED


@pytest.mark.parametrize("case_dir", ALL_CASES, ids=_case_id)
def test_case_validates(case_dir):
    m = _manifest(case_dir)
    with read_case(case_dir, verify=True) as case:
        assert case.case_id == m["case"] == case_dir.name
        assert case.keys() == list(m["stages"])
        assert case.bbox == tuple(m["bbox"])
        assert case.is_hierarchical == m["parameters"]["refine_hierarchical"]
        # The phase helpers agree with the C++ summary in result.phases.
        assert case.n_passes == len({p["pass"] for p in m["result"]["phases"]})
        for p in m["result"]["phases"]:
            phases = {name: (entered, updates) for name, entered, updates in case.phases(p["pass"])}
            entered, updates = phases[p["phase"]]
            assert updates == p["updates"]
            assert entered == len(case.iterations(p["pass"], p["phase"])) >= updates
        assert case.load_image().shape[:2] == (m["image"]["height"], m["image"]["width"])


@pytest.mark.parametrize("case_dir", ALL_CASES, ids=_case_id)
def test_every_stage_key_has_a_meaning(case_dir):
    undocumented = [k for k in _manifest(case_dir)["stages"] if stage_meaning(k) is None]
    assert undocumented == []


def _shared_original(name: str) -> Path:
    return SHARED_GOLDEN_H / name if name.endswith("_h") else SHARED_GOLDEN / name


@pytest.mark.parametrize("name", [n for n in COMMITTED if _shared_original(n).is_dir()])
def test_committed_copy_is_identical_to_shared(name):
    for f in ("manifest.json", "image.png", "stages.npz"):
        assert (PROJECT_GOLDEN / name / f).read_bytes() == (_shared_original(name) / f).read_bytes(), f


def test_stage_meaning_patterns_do_not_cross_components():
    assert "post-shift" in STAGE_MEANINGS["pass0/response"]
    assert "raw" in STAGE_MEANINGS["pass2/response_raw"]
    assert "mean-shift" in STAGE_MEANINGS["pass1/nonrigid/iter07/mean_shifts"]
    assert stage_meaning("pass0/rigid/iter00/extra/shape") is None
    assert "nothing/here" not in STAGE_MEANINGS


def test_find_cases(tmp_path):
    expected = [PROJECT_GOLDEN / n for n in COMMITTED]
    assert find_cases([PROJECT_GOLDEN]) == expected
    one = PROJECT_GOLDEN / "takeo_wild"
    assert find_cases([one, one / "manifest.json", PROJECT_GOLDEN]) == expected
    with pytest.raises(GoldenError, match="no such case or folder"):
        find_cases([tmp_path / "nope"])
    with pytest.raises(GoldenError, match="no manifest.json"):
        find_cases([tmp_path])


# --------------------------------------------------------------------------- corrupted copies

@pytest.fixture
def case_copy(tmp_path) -> Path:
    dst = tmp_path / "astronaut_default"
    shutil.copytree(PROJECT_GOLDEN / "astronaut_default", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def _rewrite_npz(case_dir: Path, change) -> None:
    with np.load(case_dir / "stages.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    with open(case_dir / "stages.npz", "wb") as f:
        np.savez_compressed(f, **arrays)


def _rewrite_manifest(case_dir: Path, change) -> None:
    m = _manifest(case_dir)
    change(m)
    (case_dir / "manifest.json").write_text(json.dumps(m))


def _set_nan(arrays):
    a = arrays["pass1/response"].copy()
    a[3, 2, 2] = np.nan
    arrays["pass1/response"] = a


# name -> (corruption, file named in the message, fragments the message must contain)
CORRUPTIONS = {
    "missing_stage_key": (lambda d: _rewrite_npz(d, lambda a: a.pop("pass1/response_sigma")),
                          "stages.npz", ["pass1/response_sigma", "missing"]),
    "undescribed_stage_key": (lambda d: _rewrite_npz(d, lambda a: a.update({"pass9/extra": np.zeros(3)})),
                              "stages.npz", ["pass9/extra", "not described"]),
    "wrong_shape": (lambda d: _rewrite_npz(d, lambda a: a.update({"init/shape": a["init/shape"][:67]})),
                    "stages.npz", ["init/shape", "shape mismatch", "(68, 2)", "(67, 2)"]),
    "wrong_dtype": (lambda d: _rewrite_npz(d, lambda a: a.update(
                        {"pass0/response": a["pass0/response"].astype(np.float64)})),
                    "stages.npz", ["pass0/response", "dtype mismatch", "float32", "float64"]),
    "nan_value": (lambda d: _rewrite_npz(d, _set_nan), "stages.npz", ["pass1/response", "NaN"]),
    "wrong_image_hash": (lambda d: _rewrite_manifest(d, lambda m: m["image"].update({"sha256": "0" * 64})),
                         "image.png", ["SHA-256 mismatch", "expected " + "0" * 64]),
    "changed_image": (lambda d: (d / "image.png").write_bytes((d / "image.png").read_bytes() + b"x"),
                      "image.png", ["SHA-256 mismatch"]),
    "malformed_manifest": (lambda d: (d / "manifest.json").write_text('{"format": "clnfdiag-golden/1",'),
                           "manifest.json", ["invalid JSON", "line 1"]),
    "manifest_without_stages": (lambda d: _rewrite_manifest(d, lambda m: m.pop("stages")),
                                "manifest.json", ["(stages)", "required key missing"]),
    "wrong_format": (lambda d: _rewrite_manifest(d, lambda m: m.update({"format": "other/2"})),
                     "manifest.json", ["(format)", "other/2"]),
    "missing_stages_npz": (lambda d: (d / "stages.npz").unlink(), "stages.npz", ["missing"]),
    "stages_npz_not_a_zip": (lambda d: (d / "stages.npz").write_bytes(b"not a zip at all"),
                             "stages.npz", ["not a valid .npz"]),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupted_case_is_reported_in_one_line(case_copy, name):
    corrupt, filename, fragments = CORRUPTIONS[name]
    corrupt(case_copy)
    with pytest.raises(GoldenError) as info:
        read_case(case_copy)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(case_copy / filename) in msg
    for fragment in fragments:
        assert fragment in msg

    result = CliRunner().invoke(main, ["golden", "validate", str(case_copy), str(PROJECT_GOLDEN / "takeo_wild")])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # One line per case, the good one still checked after the bad one.
    lines = result.stdout.splitlines()
    assert lines[0] == f"BAD {case_copy}  golden error: {msg}"
    assert lines[1].startswith(f"ok  {PROJECT_GOLDEN / 'takeo_wild'}  (")
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("clnfdiag: golden error: ")


def test_show_on_bad_case_prints_one_error_line(case_copy):
    CORRUPTIONS["manifest_without_stages"][0](case_copy)
    result = CliRunner().invoke(main, ["golden", "show", str(case_copy)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"clnfdiag: golden error: {case_copy / 'manifest.json'} (stages): required key missing\n"


def test_launcher_reports_without_traceback(case_copy):
    CORRUPTIONS["wrong_dtype"][0](case_copy)
    proc = subprocess.run([sys.executable, "cli.py", "golden", "validate", str(case_copy)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("clnfdiag: golden error: ")
    assert "pass0/response" in proc.stdout and "dtype mismatch" in proc.stdout

    proc = subprocess.run([sys.executable, "cli.py", "golden", "show", str(case_copy / "nothing")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_usage_error_exits_2():
    result = CliRunner().invoke(main, ["golden", "validate"])
    assert result.exit_code == 2


# --------------------------------------------------------------------------- writing

def test_write_case_round_trip(tmp_path):
    src = read_case(PROJECT_GOLDEN / "astronaut_wild")
    m = src.manifest
    stages = {k: np.array(src.stage(k)) for k in src.keys()}
    out = write_case(tmp_path, "rt", src.image_path, src.bbox, src.preset, src.parameters, stages,
                     m["result"], "test", model_files=m["model"]["files"],
                     source=m["image"]["source"], model_root=m["model"]["root"])
    assert out == tmp_path / "rt"
    back = read_case(out, verify=True)
    assert back.keys() == src.keys()
    for k in src.keys():
        a, b = src.stage(k), back.stage(k)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), k
    bm = back.manifest
    for key in ("bbox", "preset", "parameters", "result", "model"):
        assert bm[key] == m[key], key
    for key in ("sha256", "width", "height", "source"):
        assert bm["image"][key] == m["image"][key], key
    assert bm["case"] == "rt" and bm["producer"] == "test"
    for k, entry in m["stages"].items():
        assert bm["stages"][k]["shape"] == entry["shape"] and bm["stages"][k]["dtype"] == entry["dtype"]
        assert bm["stages"][k]["meaning"] == STAGE_MEANINGS[k]
    assert back.phases(1) == src.phases(1)


def test_write_case_from_pixels(tmp_path):
    src = read_case(PROJECT_GOLDEN / "takeo_default", verify=False)
    pixels = src.load_image()
    stages = {"final/landmarks": np.zeros((68, 2), np.float32), "pass0/rigid/iter00/shape": np.ones((68, 2))}
    out = write_case(tmp_path, "px", pixels, [1, 2, 3, 4], "default", {}, stages,
                     {"success": True, "likelihood": 0.5}, "test", meanings={"final/landmarks": "mine"})
    back = read_case(out)
    assert np.array_equal(back.load_image(), pixels)
    assert back.bbox == (1.0, 2.0, 3.0, 4.0)
    assert back.manifest["stages"]["final/landmarks"]["meaning"] == "mine"
    assert back.stage("pass0/rigid/iter00/shape").dtype == np.float64


def test_write_case_rejects_non_finite(tmp_path):
    with pytest.raises(GoldenError, match=r"\(final/likelihood\).*NaN"):
        write_case(tmp_path, "bad", np.zeros((4, 4, 3), np.uint8), [0, 0, 4, 4], "default", {},
                   {"final/likelihood": np.float32(np.nan)}, {}, "test")


def test_golden_arrays_are_read_only():
    case = read_case(PROJECT_GOLDEN / "takeo_default", verify=False)
    with pytest.raises(ValueError):
        case.stage("init/shape")[0, 0] = 1.0


# --------------------------------------------------------------------------- show

def test_show_astronaut_default():
    case_dir = PROJECT_GOLDEN / "astronaut_default"
    m = _manifest(case_dir)
    result = CliRunner().invoke(main, ["golden", "show", str(case_dir)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert m["case"] in out
    assert m["preset"] in out
    for v in m["bbox"]:
        assert repr(float(v)) in out
    assert repr(m["result"]["likelihood"]) in out
    assert f"success={m['result']['success']}" in out
    for p in m["parameters"]["window_sizes_init"][:3]:
        assert f"window={p}" in out
    assert out.count("updates=5") == 6


def test_damaged_npz_member_is_reported(case_copy):
    # Overwrite bytes inside the compressed data: the zip directory is intact,
    # so the damage shows only when an array is read (verify reads them all).
    path = case_copy / "stages.npz"
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(GoldenError) as info:
        read_case(case_copy)
    assert str(info.value).startswith(f"{path} (")


def test_part_model_stages_take_the_main_meaning():
    m = stage_meaning("hierarchical/left_eye_28/pass1/rigid/iter02/mean_shifts")
    assert m is not None and "mean-shift" in m and "left_eye_28" in m
    assert stage_meaning("hierarchical/left_eye_28/pass1/nonsense") is None


def test_project_copies_have_their_originals_noise_floor():
    """golden/CPP_FLOOR.json: a copy in golden/ is judged with its shared original's C++ floor."""
    from clnfdiag.compare.tolerances import landmark_floor
    from conftest import SHARED_GOLDEN, SHARED_GOLDEN_H, project_cases
    for d in project_cases():
        assert landmark_floor(d, d.name)[0] is not None, d.name
        for shared in (SHARED_GOLDEN, SHARED_GOLDEN_H):
            if (shared / d.name / "manifest.json").is_file():
                assert landmark_floor(d, d.name)[0] == landmark_floor(shared / d.name, d.name)[0], d.name
