"""Multi-view hypotheses: OpenFace's own multi-view fits are the oracle, bit for bit.

``shared/tracking/<seq>/reference_<preset>_<h|noh>_vidinit.json`` frame 0 is
OpenFace C++'s ``DetectLandmarksInImage`` with ``multi_view`` forced on
(FaceLandmarkVid's detector path: ``LandmarkDetectorFunc.cpp`` sets
``params.multi_view = true`` around that call), from the sequence's initial box
(returned by the stubbed detector as a ``cv::Rect_<float>``) on
``frames/frame_000.png``, with the preset's ``window_sizes_init``. No early-
termination weights ship with the CLNF model, so the C++ ran
``DetectLandmarksInImageMultiHypBasic``: all 11 rotations, the likeliest kept.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clnfdiag import keys
from clnfdiag.fitter import ROTATION_HYPOTHESES, FitResult, Fitter, read_image, to_gray
from clnfdiag.golden import TraceWriter, stage_layout, stage_meaning
from clnfdiag.parameters import PRESETS, FitParameters, preset
from clnfdiag.trace import Recorder

from _models import model_or_fail
from conftest import PROJECT_GOLDEN, SHARED, case_dirs

TRACKING = SHARED / "tracking"
RUNS = ("default_noh", "default_h", "wild_noh", "wild_h")


def _vidinit_runs() -> list[tuple[Path, str]]:
    if not TRACKING.is_dir():
        return []
    return [(seq, run) for seq in sorted(TRACKING.iterdir()) if (seq / "sequence.json").is_file()
            for run in RUNS if (seq / f"reference_{run}_vidinit.json").is_file()]


@pytest.fixture(scope="module")
def fitter() -> Fitter:
    return Fitter(model=model_or_fail())


@pytest.mark.parametrize("seq,run", _vidinit_runs(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_multi_view_fit_is_openface_multi_view_bit_for_bit(fitter: Fitter, seq: Path, run: str) -> None:
    ref = json.loads((seq / f"reference_{run}_vidinit.json").read_text())
    frame = ref["frames"][0]
    assert frame["detector_box_returned"] == 1 and frame["call"] == "DetectLandmarksInVideo(rgb)"
    p = FitParameters.from_manifest(ref["parameters"], run.split("_")[0]).with_overrides(multi_view=True)
    assert p.refine_hierarchical == run.endswith("_h")
    gray = to_gray(read_image(seq / frame["image"]))
    r = fitter.fit_gray(gray, tuple(ref["initial_box_xywh"]), p)
    # %.9g of a float32 is exact: equality below is equality of bits.
    assert np.array_equal(r.landmarks, np.array(frame["landmarks"], np.float32))
    assert np.array_equal(r.params_global, np.array(frame["params_global"], np.float32))
    assert np.array_equal(r.params_local, np.array(frame["params_local"], np.float32))
    assert np.float32(r.likelihood) == np.float32(frame["likelihood"])
    assert r.success == bool(frame["detection_success"])


def test_presets_say_how_many_starts() -> None:
    assert preset("wild").multi_view and not preset("wild-single").multi_view
    assert not preset("default").multi_view
    single = {k: v for k, v in preset("wild-single").as_dict().items() if k not in ("multi_view", "preset")}
    multi = {k: v for k, v in preset("wild").as_dict().items() if k not in ("multi_view", "preset")}
    assert single == multi
    assert set(PRESETS) >= {"default", "wild", "wild-single"}


@pytest.mark.parametrize("case_dir", case_dirs(PROJECT_GOLDEN), ids=lambda p: p.name)
def test_golden_manifests_replay_with_one_start(case_dir: Path) -> None:
    manifest = json.loads((case_dir / "manifest.json").read_text())
    assert manifest["parameters"]["multi_view"] is False
    assert not FitParameters.from_manifest(manifest["parameters"], manifest["preset"]).multi_view


def test_rotation_hypotheses_are_openfaces_list() -> None:
    # LandmarkDetectorFunc.cpp, DetectLandmarksInImage: the vector in push_back order.
    assert ROTATION_HYPOTHESES == (
        (0, 0, 0), (0, -0.5236, 0), (0, 0.5236, 0), (0, -0.96, 0), (0, 0.96, 0), (0, 0, 0.5236),
        (0, 0, -0.5236), (0, -1.57, 0), (0, 1.57, 0), (0, -1.22, 0.698), (0, 1.22, -0.698))


def _fake(lh: float | None) -> FitResult:
    """A fit whose likelihood was ``lh`` (None: stopped before the likelihood was taken)."""
    lms = np.full(68, -1e8, np.float32)
    if lh is not None:
        lms[:] = 0.5
    return FitResult(np.zeros((68, 2), np.float32), np.zeros(6, np.float32), np.zeros(34, np.float32),
                     -10.0 if lh is None else lh, lms, lh is not None, (0, 0, 10, 10),
                     preset("wild"))


@pytest.mark.parametrize("likelihoods,chosen,seen", [
    # strictly higher replaces the best; a tie keeps the earlier hypothesis (best < likelihood)
    ([0.1, 0.3, 0.3] + [0.0] * 8, 1, [0.1, 0.3, 0.3] + [0.0] * 8),
    ([0.5] * 11, 0, [0.5] * 11),
    # a hypothesis stopped before its likelihood keeps the previous one's value
    ([0.2, None, 0.1] + [0.0] * 8, 0, [0.2, 0.2, 0.1] + [0.0] * 8),
    ([None, 0.1] + [-1.0] * 9, 1, [-10.0, 0.1] + [-1.0] * 9),
])
def test_selection_rule_is_openfaces(monkeypatch, likelihoods, chosen, seen) -> None:
    fits = iter([_fake(v) for v in likelihoods])
    monkeypatch.setattr(Fitter, "_fit_from", lambda self, *a, **k: next(fits))
    r = Fitter.fit_hypotheses(object.__new__(Fitter), np.zeros((4, 4), np.uint8), (0, 0, 4, 4), preset("wild"))
    assert r.hypothesis == chosen
    assert list(r.hypothesis_likelihoods) == pytest.approx([float(np.float32(v)) for v in seen])


def test_each_hypothesis_is_traced_under_its_prefix_and_the_chosen_one_is_the_main_trace(fitter: Fitter) -> None:
    case = PROJECT_GOLDEN / "takeo_wild"
    manifest = json.loads((case / "manifest.json").read_text())
    gray = to_gray(read_image(case / "image.png"))
    p = preset("wild").with_overrides(refine_hierarchical=False)
    rec = Recorder()
    r = fitter.fit_gray(gray, tuple(manifest["bbox"]), p, rec)
    prefixes = {keys.split_hypothesis(k)[0] for k in r.stages}
    assert prefixes == {None, *range(len(ROTATION_HYPOTHESES))}
    chosen = keys.hypothesis_prefix(r.hypothesis)
    main = {k: v for k, v in r.stages.items() if keys.split_hypothesis(k)[0] is None}
    again = {k[len(chosen):]: v for k, v in r.stages.items() if k.startswith(chosen)}
    assert set(main) == set(again) | {"input/gray"}
    for k, v in again.items():
        assert np.array_equal(v, main[k]), k
    assert np.array_equal(main["final/landmarks"], r.landmarks)
    untraced = fitter.fit_gray(gray, tuple(manifest["bbox"]), p)
    assert untraced.hypothesis == r.hypothesis and np.array_equal(untraced.landmarks, r.landmarks)
    block = r.result_manifest()["multi_view"]
    assert block["chosen"] == r.hypothesis and len(block["likelihoods"]) == len(ROTATION_HYPOTHESES)


def test_hypothesis_keys_are_in_the_vocabulary() -> None:
    assert keys.hypothesis_prefix(3) == "hypothesis03/"
    assert keys.split_hypothesis("hypothesis03/pass0/rigid/iter02/mean_shifts") == (3, "pass0/rigid/iter02/mean_shifts")
    assert keys.split_hypothesis("pass0/response") == (None, "pass0/response")
    assert keys.pass_of("hypothesis03/pass0/response") is None  # not the main model's pass
    assert stage_layout("hypothesis03/pass0/response") == stage_layout("pass0/response")
    assert "hypothesis 3" in stage_meaning("hypothesis03/final/landmarks")
    w = TraceWriter("x", np.zeros((20, 20), np.uint8), (1, 1, 10, 10))
    w.record("hypothesis03/final/landmarks", np.zeros((68, 2), np.float32))
    assert "hypothesis03/final/landmarks" in w.stages


def test_fit_command_multi_view_flags() -> None:
    from click.testing import CliRunner

    from clnfdiag.cli import main
    image = str(PROJECT_GOLDEN / "takeo_wild" / "image.png")
    common = ["fit", image, "--bbox", "35.2,78.4,96.4,93.7", "--format", "json", "--no-hierarchical"]
    runs = {flags: CliRunner().invoke(main, common + list(flags))
            for flags in (("--preset", "wild"), ("--preset", "wild-single"), ("--preset", "wild", "--single-view"),
                          ("--preset", "default", "--multi-view"))}
    out = {k: json.loads(r.output) for k, r in runs.items() if r.exit_code == 0}
    assert len(out) == len(runs), {k: r.output for k, r in runs.items()}
    assert out[("--preset", "wild")]["parameters"]["multi_view"] is True
    assert out[("--preset", "wild")]["hypothesis"] is not None
    assert out[("--preset", "wild-single")]["hypothesis"] is None
    assert out[("--preset", "wild", "--single-view")]["landmarks"] == out[("--preset", "wild-single")]["landmarks"]
    assert out[("--preset", "default", "--multi-view")]["hypothesis"] is not None
