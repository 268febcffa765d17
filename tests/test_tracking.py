"""Issue 18: OpenFace's video mode (DetectLandmarksInVideo) in clnfdiag, checked frame by frame.

The expectations come from the C++ tracking references in ``shared/tracking/`` (a plain OpenFace
2.x build, see its README): every frame's landmarks and parameters must be equal bit for bit,
and the per-frame bookkeeping (windows used, view, likelihood, failure count, detector use) too.
The failure / re-initialisation rules, which those sequences never exercise, are checked against
the arithmetic of OpenFace's own conditions. The CLI tests follow ``test_hardening.py``: bad
input gives one line and exit 2, outputs are checked before the run and written whole.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clnfdiag.cli import main
from clnfdiag.compare.sequence import (MIN_TOLERANCE_PX, SPREAD_FACTOR, find_runs, load_reference_run,
                                       tolerance_px)
from clnfdiag.fitter import Fitter, read_image, to_gray
from clnfdiag.tracking import Tracker, TrackingParameters, c_remainder

from _models import model_or_fail
from conftest import SHARED

TRACKING = SHARED / "tracking"
SEQREAL = TRACKING / "seqreal_f01_f12_f24"


def reference_files() -> list[Path]:
    """Every C++ run (box and FaceLandmarkVid-style initialisation) of every shared sequence."""
    if not TRACKING.is_dir():
        return []
    return sorted(p for seq in sorted(TRACKING.iterdir()) if (seq / "sequence.json").is_file()
                  for p in seq.glob("reference_*.json"))


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, np.float32)).view(np.uint32)


@pytest.fixture(scope="module")
def fitter() -> Fitter:
    return Fitter(model=model_or_fail())


@pytest.fixture(scope="module")
def frames_cache() -> dict:
    return {}


def _grays(run, cache: dict) -> list[np.ndarray]:
    key = tuple(map(str, run.frames))
    if key not in cache:
        cache[key] = [to_gray(read_image(f), f) for f in run.frames]
    return cache[key]


# --------------------------------------------------------------------------- bit identity

@pytest.mark.parametrize("ref_file", reference_files(), ids=_id)
def test_tracking_bit_identical_to_cpp(fitter: Fitter, frames_cache: dict, ref_file: Path) -> None:
    """Every frame's landmarks and parameters equal the C++'s bit for bit, and so does its bookkeeping."""
    run = load_reference_run(ref_file)
    raw = json.loads(ref_file.read_text())["frames"]
    params = TrackingParameters.from_preset(run.preset, hierarchical=run.hierarchical)
    boxes = [run.initial_box]
    # init "vid": the references' stubbed detector returned the initial box once (sequence.json).
    detector = (lambda gray: boxes.pop() if boxes else None) if run.init == "vid" else None
    tracker = Tracker(fitter, params, detector=detector)
    for i, gray in enumerate(_grays(run, frames_cache)):
        rec = tracker.step(gray, bbox=run.initial_box if (i == 0 and run.init == "box") else None)
        ref = raw[i]
        where = f"{_id(ref_file)} frame {i}"
        assert np.array_equal(_bits(rec.landmarks), _bits(ref["landmarks"])), where
        assert np.array_equal(_bits(rec.params_global), _bits(ref["params_global"])), where
        assert np.array_equal(_bits(rec.params_local), _bits(ref["params_local"])), where
        assert np.float32(rec.likelihood) == np.float32(ref["likelihood"]), where
        assert rec.windows == ref["windows"], where
        assert rec.view_used == ref["view_used"], where
        assert rec.detection_success == bool(ref["detection_success"]), where
        assert rec.success == bool(ref["return_value"]), where
        assert rec.failures_in_a_row == ref["failures_in_a_row"], where
        assert rec.tracking_initialised == bool(ref["tracking_initialised"]), where
        assert rec.detector_needed == bool(ref["detector_calls"]), where


def test_frame0_is_the_image_fit(fitter: Fitter, frames_cache: dict) -> None:
    """The box overload's first frame is DetectLandmarksInImage from the box (sequence.json: 'checked')."""
    files = reference_files()
    if not files:
        pytest.skip("no shared/tracking")
    run = load_reference_run(SEQREAL / "reference_wild_h.json")
    gray = _grays(run, frames_cache)[0]
    rec = Tracker(fitter, TrackingParameters.from_preset("wild")).step(gray, bbox=run.initial_box)
    # One hypothesis: the tracking branch fits from the box alone (multi_view does not apply).
    single = TrackingParameters.from_preset("wild").fit.with_overrides(multi_view=False)
    img = fitter.fit(gray, bbox=run.initial_box, parameters=single)
    assert np.array_equal(_bits(rec.landmarks), _bits(img.landmarks))


# --------------------------------------------------------------------------- failure rules

def test_c_remainder_follows_cpp() -> None:
    """OpenFace's ``failures % reinit`` is C++'s remainder (sign of the dividend)."""
    assert c_remainder(-1, 2) == -1 and (-1) % 2 == 1
    assert c_remainder(0, 12) == 0 and c_remainder(3, 2) == 1 and c_remainder(4, 2) == 0


def test_failures_count_and_reinit_every_two(fitter: Fitter) -> None:
    """A face too small to fit fails every frame: the count goes 0, 1, 2, ..., the windows stay
    window_sizes_init, and the detector runs when ``failures % reinit_video_every == 0``
    (OpenFace's condition with reinit_video_every 2): frames 0, 2, 4."""
    gray = to_gray(read_image(TRACKING / "takeo_synth" / "frames" / "frame_000.png")) if TRACKING.is_dir() \
        else np.full((240, 320), 128, np.uint8)
    calls: list[int] = []

    def detector(g):
        calls.append(len(calls))
        return None

    tracker = Tracker(fitter, TrackingParameters.from_preset("default", hierarchical=False), detector=detector)
    recs = [tracker.step(gray, bbox=(100, 100, 12, 12) if i == 0 else None) for i in range(5)]
    assert [r.detection_success for r in recs] == [False] * 5
    assert [r.failures_in_a_row for r in recs] == [0, 1, 2, 3, 4]
    assert [r.detector_needed for r in recs] == [True, False, True, False, True]
    assert len(calls) == 3
    assert all(r.windows == [11, 9, 7, 5] for r in recs)
    assert all(r.tracking_initialised for r in recs)


def test_untracked_detector_every_twelve_frames(fitter: Fitter) -> None:
    """Before any face: the detector runs when ``(failures + 1) % (6 * reinit) == 0``: frames 0 and 12."""
    gray = np.full((60, 80), 128, np.uint8)
    tracker = Tracker(fitter, TrackingParameters.from_preset("default"), detector=lambda g: None)
    recs = [tracker.step(gray) for _ in range(14)]
    assert [r.frame for r in recs if r.detector_needed] == [0, 12]
    assert [r.windows for r in recs] == [None] * 14
    assert recs[-1].failures_in_a_row == -1 + 14  # one more failure per untracked frame


# --------------------------------------------------------------------------- the CLI

def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result, kind: str = "input error") -> str:
    lines = result.stderr.strip().splitlines() if hasattr(result, "stderr") else result.output.splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith(f"clnfdiag: {kind}: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


@pytest.mark.parametrize("make, kind", [
    (lambda d: [d / "missing"], "input error"),
    (lambda d: [d], "input error"),                                        # empty folder
    (lambda d: [(d / "bad.png").write_text("no image") and d / "bad.png"], "input error"),
])
def test_track_bad_frames(tmp_path: Path, make, kind) -> None:
    line = _one_line(_invoke("track", *make(tmp_path), "--bbox", "1,1,10,10"), kind)
    assert str(tmp_path) in line


@pytest.mark.parametrize("bbox", ["nan,1,10,10", "1,2,3", "5000,5000,10,10", "1,1,0,10"])
def test_track_bad_box(bbox: str) -> None:
    if not SEQREAL.is_dir():
        pytest.skip("no shared/tracking")
    _one_line(_invoke("track", SEQREAL / "frames", "--bbox", bbox))


def test_track_unusable_outputs(tmp_path: Path) -> None:
    if not SEQREAL.is_dir():
        pytest.skip("no shared/tracking")
    (tmp_path / "file").write_text("x")
    _one_line(_invoke("track", SEQREAL / "frames", "--bbox", "136.5,168.7,208.8,203", "--trace-out",
                      tmp_path / "file"), "output error")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    _one_line(_invoke("track", SEQREAL / "frames", "--bbox", "136.5,168.7,208.8,203", "--overlay",
                      tmp_path / "foreign"), "output error")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_track_cli_json_trace_and_compare(tmp_path: Path, monkeypatch) -> None:
    """``track --format json`` prints the C++'s bits; its trace compares identical, and a traced
    sequence moved on one frame is caught at that frame (within the C++ spread when the move is
    below its tolerance, beyond when above)."""
    if not SEQREAL.is_dir():
        pytest.skip("no shared/tracking")
    model_or_fail()
    ref_file = SEQREAL / "reference_default_noh.json"
    ref = json.loads(ref_file.read_text())
    res = _invoke("track", SEQREAL / "frames", "--bbox", ",".join(map(str, ref["initial_box_xywh"])),
                  "--no-hierarchical", "--format", "json", "--trace-out", tmp_path / "tr",
                  "--overlay", tmp_path / "ov")
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [r["frame"] for r in recs] == [0, 1, 2]
    for r, f in zip(recs, ref["frames"]):
        assert np.array_equal(_bits(r["landmarks"]), _bits(f["landmarks"]))
        assert np.array_equal(_bits(r["params_local"]), _bits(f["params_local"]))
        assert r["windows"] == f["windows"] and r["detector_needed"] is False
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == ["frame_000.png", "frame_001.png",
                                                                   "frame_002.png"]
    assert (tmp_path / "tr" / "frame_002" / "stages.npz").is_file()

    res = _invoke("compare", ref_file, "--candidate", tmp_path / "tr", "--exact")
    assert res.exit_code == 0, res.output
    assert "identical" in res.stdout

    # Move frame 1's landmark 30 by a fraction of that frame's tolerance, then by twice it.
    tol = tolerance_px(load_reference_run(ref_file).spread_px[1], exact=False)
    doc = json.loads((tmp_path / "tr" / "track.json").read_text())
    for factor, code, word in ((0.5, 0, "within C++ spread"), (2.0, 1, "beyond")):
        moved = json.loads(json.dumps(doc))
        moved["frames"][1]["landmarks"][30][0] += factor * tol
        (tmp_path / "tr" / "track.json").write_text(json.dumps(moved))
        res = _invoke("compare", ref_file, "--candidate", tmp_path / "tr", "--json", tmp_path / "c.json")
        assert res.exit_code == code, res.output
        out = json.loads((tmp_path / "c.json").read_text())["runs"][0]
        assert out["outcome"] == word
        assert out["first_differing_frame"] == 1
        assert out["frames"][1]["landmark_px"][30] == pytest.approx(factor * tol, rel=1e-3)
        assert out["first_beyond_frame"] == (1 if code else None)


def test_spread_tolerance_is_derived() -> None:
    """Per-frame tolerance: the comparator's floor or twice the C++'s spread, whichever is larger."""
    assert tolerance_px(None, exact=False) == MIN_TOLERANCE_PX
    assert tolerance_px(0.1, exact=False) == SPREAD_FACTOR * 0.1
    assert tolerance_px(0.001, exact=False) == MIN_TOLERANCE_PX
    assert tolerance_px(0.1, exact=True) == 0.0


def test_compare_sequences_exact_and_drift_report(tmp_path: Path) -> None:
    """``compare <reference folder> --exact --report`` passes on clnfdiag and writes the drift page."""
    if not SEQREAL.is_dir():
        pytest.skip("no shared/tracking")
    model_or_fail()
    res = _invoke("compare", SEQREAL, "--exact", "--report", tmp_path / "rep", "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["runs"]) == len(find_runs([SEQREAL])) == 8
    assert all(r["outcome"] == "identical" and r["first_differing_frame"] is None for r in doc["runs"])
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count("<img") == 8 and "Drift per frame" in page
    assert (tmp_path / "rep" / "drift.csv").read_text().count("\n") == 1 + 8 * 3
    # A second run replaces its own report; a foreign folder is refused before any tracking.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    res = _invoke("compare", SEQREAL / "reference_default_h.json", "--report", tmp_path / "other")
    assert res.exit_code == 2 and "output error" in res.output


def test_compare_bad_sequence_inputs(tmp_path: Path) -> None:
    """A corrupt run file or a frame whose bytes changed: one line, exit 2."""
    if not SEQREAL.is_dir():
        pytest.skip("no shared/tracking")
    seq = tmp_path / "seq"
    (seq / "frames").mkdir(parents=True)
    (seq / "sequence.json").write_text((SEQREAL / "sequence.json").read_text())
    for f in (SEQREAL / "frames").iterdir():
        (seq / "frames" / f.name).write_bytes(f.read_bytes())
    (seq / "reference_default_noh.json").write_text("{ not json")
    res = _invoke("compare", seq / "reference_default_noh.json")
    assert res.exit_code == 2 and "not valid JSON" in res.output and "Traceback" not in res.output
    (seq / "reference_default_noh.json").write_text((SEQREAL / "reference_default_noh.json").read_text())
    (seq / "frames" / "frame_001.png").write_bytes((SEQREAL / "frames" / "frame_002.png").read_bytes())
    res = _invoke("compare", seq / "reference_default_noh.json")
    assert res.exit_code == 2 and "frame_001.png" in res.output and "SHA-256" in res.output


def test_face_template_shift_recovers_a_known_motion(fitter: Fitter) -> None:
    """``CorrectGlobalParametersVideo`` on a frame moved by (7, -4) px: at a model scale where no
    shrinking happens (0.3 / scale >= 1) the match is exact and the shift is the motion plus the
    fraction the integer template box dropped (OpenFace truncates the box to whole pixels)."""
    from clnfdiag.tracking import TrackerState, face_template, template_shift

    rng = np.random.default_rng(18)
    frame_a = rng.integers(0, 256, (240, 320), dtype=np.uint8)
    frame_a = np.asarray(__import__("cv2").GaussianBlur(frame_a, (5, 5), 1.5))
    pdm = fitter.main.pdm
    g = np.array([0.25, 0, 0, 0, 160.3, 120.6], np.float32)
    state = TrackerState(g, pdm.zero_local(), np.zeros((68, 2), np.float32))
    state.face_template = face_template(frame_a, pdm, state)
    dx, dy = 7, -4
    frame_b = np.roll(np.roll(frame_a, dy, axis=0), dx, axis=1)
    sx, sy, _ = template_shift(frame_b, pdm, state, 0.3)
    bx, by = (float(v) for v in pdm.calc_bounding_box(g, state.params_local)[:2])
    assert sx == float(np.float32(np.float32(int(bx) + dx) - np.float32(bx)))
    assert sy == float(np.float32(np.float32(int(by) + dy) - np.float32(by)))


def test_readme_row_lists_the_track_options() -> None:
    """The README's Commands row of ``track`` names exactly the command's options."""
    import re

    from conftest import REPO

    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| `clnfdiag track "))
    first = re.split(r"(?<!\\)\|", row)[1]
    track = main.commands["track"]
    options = {o for p in track.params for o in p.opts if o.startswith("--") and o != "--help"}
    assert set(re.findall(r"--[a-z][a-z-]+", first)) == options


def test_pyclnf_video_frame0_is_the_ports_image_fit(fitter: Fitter, frames_cache: dict) -> None:
    """pyclnf's video mode on the CCNF path (``--port pyclnf`` on a sequence): its first frame is
    the port's single-image fit from the box, bit for bit (the same stages from the same start),
    and the run is judged frame by frame against the C++."""
    pytest.importorskip("pyclnf")
    if not SEQREAL.is_dir():
        pytest.skip("no shared/tracking")
    from clnfdiag.compare.sequence import compare_frames, records_to_arrays
    from clnfdiag.ports.pyclnf_video import port_fitter

    run = load_reference_run(SEQREAL / "reference_default_noh.json")
    pf = port_fitter(fitter)
    gray = _grays(run, frames_cache)[0]
    rec = Tracker(pf, TrackingParameters.from_preset("default", hierarchical=False)).step(
        gray, bbox=run.initial_box)
    img = pf.fit(gray, bbox=run.initial_box, parameters="default", hierarchical=False)
    assert np.array_equal(_bits(rec.landmarks), _bits(img.landmarks))
    cmp = compare_frames(run, records_to_arrays([rec]), "port pyclnf")
    assert cmp.frames[0].landmark_px.shape == (68,)
    assert cmp.frames[0].max_px == pytest.approx(
        float(np.max(np.hypot(*(img.landmarks.astype(np.float64) - run.landmarks[0]).T))))
