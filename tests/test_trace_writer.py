"""TraceWriter is strict at record time: only keys, shapes and dtypes a golden can hold.

Every expectation here is FORMAT.md's (``../shared/golden/FORMAT.md``) or a
golden's: keys ``passN`` with N in 0..2 (one pass per patch scale),
``iterKK`` with two digits, ``shape_change_norm`` from KK = 1, landmarks
``(68, 2)``, maps ``(68, w, w)``, parameters ``(6,)`` / ``(34,)``, Jacobians
``(136, 6)`` rigid / ``(136, 40)`` non-rigid, part models inner (51 points) and
the eyes (28); dtypes as the C++ goldens store them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT_GOLDEN, case_dirs, project_cases, shared_cases, SHARED_GOLDEN_H
from clnfdiag.errors import InputError
from clnfdiag.golden import (STAGE_LAYOUTS, STAGE_MEANINGS, TraceWriter, read_case, stage_layout,
                             stage_meaning)
from clnfdiag.keys import split_part

GRAY = np.zeros((8, 10), np.uint8)  # the trace's picture: H = 8, W = 10
F32, F64, I32 = np.float32, np.float64, np.int32


def _writer(**kw) -> TraceWriter:
    return TraceWriter("tw", GRAY, (1, 1, 6, 6), **kw)


def _golden_manifest(case_dir: Path) -> dict:
    return json.loads((case_dir / "manifest.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- rejected keys

BAD_KEYS = [
    # iterKK is exactly two digits (FORMAT.md; keys.iter_key pads it)
    "pass0/rigid/iter0/mean_shifts",
    "pass0/rigid/iter3/shape",
    "pass0/rigid/iter100/mean_shifts",
    "pass0/rigid/iter003/shape",
    "pass0/rigid/it03/shape",
    "pass0/rigid/iterAB/shape",
    # passN: 0, 1, 2 for the three patch scales (FORMAT.md), written without padding
    "pass3/response",
    "pass99/response",
    "pass-1/response",
    "pass01/response",
    "pass/response",
    "passX/response",
    "pass1000000000/rigid/iter00/shape",
    # phases rigid | nonrigid, between the pass and the iteration
    "pass0/Rigid/weights",
    "pass0/nonrigid2/iter01/shape",
    "pass0/iter00/shape",
    # shape_change_norm is present from KK = 1 (FORMAT.md)
    "pass0/rigid/iter00/shape_change_norm",
    # unknown kinds, or kinds in the wrong place
    "pass0/respones",
    "pass0/rigid/response",
    "pass0/rigid/iter00/weights",
    "pass0/shape",
    "pass0/rigid",
    "pass0/rigid/iter00",
    "pass0/rigid/iter00/extra/shape",
    "final/landmark",
    "init/landmarks",
    "final",
    "gray",
    "input/grey",
    "/final/landmarks",
    "final/landmarks/",
    "",
    # hierarchical: FORMAT.md's parts are inner, left_eye_28, right_eye_28
    "hierarchical/mouth/landmarks",
    "hierarchical/Inner/landmarks",
    "hierarchical/inner/input/gray",
    "hierarchical/inner/landmarks_before",
    "hierarchical/inner/pass3/response",
    "hierarchical/inner/pass0/rigid/iter1/shape",
    "hierarchical/landmarks",
    "hierarchical/inner",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_no_golden_holds_are_refused_naming_the_key(key):
    rec = _writer()
    with pytest.raises(InputError) as info:
        rec.record(key, np.zeros((68, 2), F32))
    msg = str(info.value)
    assert repr(key) in msg and "\n" not in msg
    assert "expected" in msg
    assert rec.stages == {}


def test_key_messages_say_what_is_wrong():
    rec = _writer()
    cases = {
        "pass0/rigid/iter0/mean_shifts": "iter00 .. iter99",
        "pass0/rigid/iter100/mean_shifts": "iter00 .. iter99",
        "pass3/response": "pass0, pass1, pass2",
        "pass0/Rigid/weights": "rigid",
        "pass0/rigid/iter00/shape_change_norm": "iter01",
        "pass0/respones": "not a stage key",  # the phrase tests/test_port_api.py relies on
        "hierarchical/mouth/landmarks": "inner, left_eye_28, right_eye_28",
    }
    for key, words in cases.items():
        with pytest.raises(InputError, match=words.replace(".", r"\.")):
            rec.record(key, np.zeros((68, 2), F32))


def test_non_string_key_is_refused():
    with pytest.raises(InputError, match="string"):
        _writer().record(3, np.zeros(()))


# --------------------------------------------------------------------------- rejected values

BAD_VALUES = [
    # wrong shapes (FORMAT.md's stages table)
    ("final/landmarks", np.zeros((2, 68), F32)),          # (68, 2) with columns (x, y)
    ("final/landmarks", np.zeros(136, F32)),              # OpenFace's column vector, not reshaped
    ("final/landmarks", np.zeros((68, 3), F32)),
    ("final/landmarks", np.zeros((67, 2), F32)),
    ("init/shape", np.zeros((1, 68, 2), F32)),
    ("init/params_global", np.zeros(7, F32)),
    ("init/params_local", np.zeros(40, F32)),             # (34,)
    ("pass0/params_local_in", np.zeros((34, 1), F32)),
    ("pass0/visibilities", np.zeros(136, I32)),           # (68,)
    ("pass0/sim_img_to_ref", np.zeros((2, 3), F32)),      # (2, 2)
    ("pass0/response", np.zeros((68, 11, 9), F32)),       # (68, w, w)
    ("pass0/response", np.zeros((11, 11, 68), F32)),
    ("pass0/response", np.zeros((68, 121), F32)),
    ("pass0/area_of_interest", np.zeros((68, 21, 20), F32)),
    ("pass0/rigid/weights", np.zeros(68, F32)),           # (136,)
    ("pass0/rigid/iter00/jacobian", np.zeros((136, 40), F32)),     # rigid: (136, 6)
    ("pass0/nonrigid/iter00/jacobian", np.zeros((136, 6), F32)),   # non-rigid: (136, 40)
    ("pass0/nonrigid/iter00/jacobian", np.zeros((68, 40), F32)),
    ("pass0/rigid/iter00/param_update", np.zeros(40, F32)),        # rigid: (6,)
    ("pass0/nonrigid/iter00/param_update", np.zeros(6, F32)),      # non-rigid: (40,)
    ("pass0/rigid/iter00/dxs", np.zeros((68, 1), F32)),
    ("pass0/rigid/final_local", np.zeros(6, F32)),
    ("hierarchical/landmarks_before", np.zeros((51, 2), F32)),     # main model: (68, 2)
    ("hierarchical/inner/landmarks", np.zeros((68, 2), F32)),      # inner face: 51 points
    ("hierarchical/left_eye_28/landmarks", np.zeros((51, 2), F32)),  # eyes: 28 points
    ("hierarchical/right_eye_28/params_global", np.zeros(34, F32)),
    ("hierarchical/inner/pass0/response", np.zeros((68, 11, 11), F32)),  # the part's n
    ("input/gray", np.zeros((10, 8), np.uint8)),          # the image is 8 x 10 (H x W)
    ("input/gray", np.zeros((8, 10, 3), np.uint8)),
    # scalars are 0-d
    ("final/likelihood", np.zeros((1, 1), F32)),
    ("final/likelihood", np.zeros(1, F32)),
    ("pass0/window_size", np.array([11])),
    ("pass0/sigma", [1.5]),
    ("pass0/rigid/n_updates", np.zeros((1, 1), I32)),
    ("pass0/rigid/iter01/shape_change_norm", np.zeros((1, 1))),
    # kinds that cannot become the golden's dtype without loss
    ("final/landmarks", np.zeros((68, 2), np.complex64)),
    ("final/landmarks", np.zeros((68, 2), bool)),
    ("final/landmarks", np.zeros((68, 2), object)),
    ("final/landmarks", np.full((68, 2), "1.0")),
    ("final/landmarks", "landmarks"),
    ("final/landmarks", None),
    ("final/landmarks", [[1.0, 2.0], [3.0]]),
    ("final/likelihood", 1 + 2j),
    ("final/success", 1.0),                               # int32 flag
    ("final/success", np.float32(1)),
    ("pass0/window_size", 11.0),
    ("pass0/visibilities", np.ones(68, F32)),
    ("pass0/rigid/n_updates", np.array(2**40)),           # does not fit int32
    ("input/gray", np.full((8, 10), 256)),                # does not fit uint8
    ("input/gray", np.full((8, 10), -1)),
    ("input/gray", np.zeros((8, 10), F32)),
    ("pass0/window_size", 0),                             # a window-0 scale is not run
]


@pytest.mark.parametrize("key,value", BAD_VALUES,
                         ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD_VALUES)])
def test_values_of_the_wrong_shape_or_kind_are_refused_naming_the_key(key, value):
    rec = _writer()
    with pytest.raises(InputError) as info:
        rec.record(key, value)
    msg = str(info.value)
    assert repr(key) in msg and "expected" in msg and "\n" not in msg
    assert rec.stages == {}


def test_shape_message_gives_the_expected_shape_and_dtype():
    rec = _writer()
    with pytest.raises(InputError, match=r"\(68, 2\) float32"):
        rec.record("final/landmarks", np.zeros((2, 68)))
    with pytest.raises(InputError, match=r"\(136, 40\) float32"):
        rec.record("pass1/nonrigid/iter02/jacobian", np.zeros((136, 6)))
    with pytest.raises(InputError, match=r"\(\) float32"):
        rec.record("final/likelihood", np.zeros((1, 1)))
    with pytest.raises(InputError, match="int32"):
        rec.record("final/success", 1.0)


def test_a_dtype_argument_other_than_the_goldens_is_refused():
    rec = _writer()
    with pytest.raises(InputError, match="'final/landmarks'.*float32"):
        rec.record("final/landmarks", np.zeros((68, 2)), np.float64)
    with pytest.raises(InputError, match="'pass1/rigid/iter01/shape_change_norm'.*float64"):
        rec.record("pass1/rigid/iter01/shape_change_norm", 0.5, np.float32)
    with pytest.raises(InputError, match="'final/success'"):
        rec.record("final/success", 1, "no such dtype")
    rec.record("final/landmarks", np.zeros((68, 2)), np.float32)       # the golden's: fine
    rec.record("pass1/rigid/iter01/shape_change_norm", 0.5, np.float64)
    assert rec.stages["final/landmarks"].dtype == F32


def test_a_pass_keeps_one_window():
    # (68, w, w) for response_raw, response_sigma and response, w the pass's window_size.
    rec = _writer()
    rec.record("pass0/window_size", 11)
    with pytest.raises(InputError, match=r"'pass0/response_raw'.*\(68, 11, 11\).*'pass0/window_size'"):
        rec.record("pass0/response_raw", np.zeros((68, 9, 9), F32))
    rec.record("pass0/response_raw", np.zeros((68, 11, 11), F32))
    rec.record("pass1/response", np.zeros((68, 9, 9), F32))            # another pass, another window
    with pytest.raises(InputError, match=r"'pass1/response_sigma'.*\(68, 9, 9\)"):
        rec.record("pass1/response_sigma", np.zeros((68, 11, 11), F32))
    with pytest.raises(InputError, match="'pass1/window_size'.*9"):
        rec.record("pass1/window_size", 11)                             # maps came first
    rec.record("pass1/window_size", 9)
    # A = window + patch - 1 >= window
    with pytest.raises(InputError, match="'pass1/area_of_interest'"):
        rec.record("pass1/area_of_interest", np.zeros((68, 5, 5), F32))
    rec.record("pass1/area_of_interest", np.zeros((68, 19, 19), F32))
    # a part model's pass is its own
    rec.record("hierarchical/inner/pass0/response", np.zeros((51, 3, 3), F32))
    assert rec.stages["pass0/response_raw"].shape == (68, 11, 11)


def test_a_part_models_modes_are_fixed_by_its_first_array():
    rec = _writer()
    rec.record("hierarchical/inner/params_local", np.zeros(32, F32))
    rec.record("hierarchical/inner/pass0/nonrigid/iter00/jacobian", np.zeros((102, 38), F32))
    rec.record("hierarchical/inner/pass0/nonrigid/iter00/param_update", np.zeros(38, F32))
    with pytest.raises(InputError, match=r"'hierarchical/inner/pass0/rigid/final_local'.*\(32,\)"):
        rec.record("hierarchical/inner/pass0/rigid/final_local", np.zeros(34, F32))
    rec.record("hierarchical/left_eye_28/params_local", np.zeros(10, F32))  # each part its own m
    rec.record("hierarchical/left_eye_28/pass0/rigid/iter00/jacobian", np.zeros((56, 6), F32))
    with pytest.raises(InputError, match="'hierarchical/right_eye_28/pass0/rigid/weights'"):
        rec.record("hierarchical/right_eye_28/pass0/rigid/weights", np.zeros(136, F32))  # (2n,) = (56,)


def test_scoped_writers_are_checked_too():
    rec = _writer()
    inner = rec.scoped("hierarchical/inner/")
    assert isinstance(inner, TraceWriter)
    inner.record("pass0/response", np.zeros((51, 3, 3), F32))
    with pytest.raises(InputError, match="'hierarchical/inner/pass0/response_raw'"):
        inner.record("pass0/response_raw", np.zeros((68, 3, 3), F32))
    with pytest.raises(InputError, match="'hierarchical/inner/pass0/rigid/iter0/shape'"):
        inner.record("pass0/rigid/iter0/shape", np.zeros((51, 2), F32))
    assert list(rec.stages) == ["hierarchical/inner/pass0/response"]   # one trace


# --------------------------------------------------------------------------- accepted values

def test_accepted_values_are_cast_to_the_golden_dtype_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    lm64 = rng.normal(100, 20, (68, 2))
    lm64[3, 1] = np.nan                      # a port's NaN is kept: the comparison judges it
    lm64[5, 0] = np.inf
    rec = _writer(parameters={"window_sizes_init": [11, 9, 7, 5]})
    values = {
        "input/gray": np.arange(80).reshape(8, 10),                 # int64 -> uint8
        "init/params_global": [1.0, 0.0, 0.0, 0.0, 50, 60],         # list -> float32
        "init/params_local": np.zeros(34, np.int64),                # int -> float32
        "init/shape": lm64,                                         # float64 -> float32
        "pass0/window_size": 11,                                    # int -> int32
        "pass0/scale_index": np.int64(0),
        "pass0/view_id": np.uint8(0),
        "pass0/visibilities": np.ones(68, bool),                    # bool -> int32
        "pass0/sigma": 1.5,
        "pass0/response": rng.random((68, 11, 11)),
        "pass0/rigid/iter00/shape": lm64,
        "pass0/rigid/iter01/shape_change_norm": np.float32(0.25),   # float32 -> float64
        "final/landmarks": lm64,
        "final/likelihood": np.float64(0.5),
        "final/success": True,                                      # bool -> int32
    }
    for key, value in values.items():
        rec.record(key, value)
    out = rec.save(tmp_path)
    with read_case(out, verify=True, finite=False) as case:
        assert case.keys() == list(values)
        m = _golden_manifest(PROJECT_GOLDEN / "astronaut_default")["stages"]
        for key, value in values.items():
            got = case.stage(key)
            want = np.asarray(value).astype(m[key]["dtype"])   # the C++ golden's dtype for the key
            assert got.dtype == want.dtype, key
            np.testing.assert_array_equal(got, want, err_msg=key)
            assert got.dtype == rec.stages[key].dtype
        assert np.isnan(case.stage("final/landmarks")[3, 1])
        assert np.isinf(case.stage("final/landmarks")[5, 0])


def test_recorded_values_are_copies():
    rec = _writer()
    lm = np.zeros((68, 2), F32)
    rec.record("final/landmarks", lm)
    lm[:] = 7
    assert not rec.stages["final/landmarks"].any()


def test_an_early_stopped_iteration_with_only_shape_change_norm(tmp_path):
    """FORMAT.md: the last iteration of a phase that stopped early has only shape_change_norm."""
    # golden/astronaut_wild is such a case: pass1/nonrigid stopped at its 8th iteration.
    case_dir = PROJECT_GOLDEN / "astronaut_wild"
    golden_keys = list(_golden_manifest(case_dir)["stages"])
    stopped = [k for k in golden_keys if k.startswith("pass1/nonrigid/iter07/")]
    assert stopped == ["pass1/nonrigid/iter07/shape_change_norm"]
    with read_case(case_dir) as golden:
        rec = TraceWriter(golden.case_id, golden.image_path, golden.bbox, golden.preset, golden.parameters)
        for key in golden_keys:
            if key.startswith("pass1/nonrigid/") or key == "final/landmarks":
                rec.record(key, golden.stage(key))
        out = rec.save(tmp_path)
        with read_case(out, finite=False) as back:
            assert [k for k in back.keys() if k.startswith("pass1/nonrigid/iter07/")] == stopped
            assert back.iterations(1, "nonrigid") == golden.iterations(1, "nonrigid")
            # the trace's manifest says it as the C++ goldens' manifests do
            assert back.manifest["layout"]["iterations"] == golden.manifest["layout"]["iterations"]
            assert "has only shape_change_norm" in back.manifest["layout"]["iterations"]
    assert "has only ``shape_change_norm``" in " ".join(TraceWriter.__doc__.split())


def test_save_still_needs_final_landmarks(tmp_path):
    rec = _writer()
    rec.record("pass0/response", np.zeros((68, 11, 11), F32))
    with pytest.raises(InputError, match="final/landmarks"):
        rec.save(tmp_path)


# --------------------------------------------------------------------------- the goldens themselves

ALL_CASES = project_cases() + shared_cases()


def _case_id(case_dir: Path) -> str:
    return f"{'project' if case_dir.parent == PROJECT_GOLDEN else 'shared'}/{case_dir.name}"


@pytest.mark.parametrize("case_dir", ALL_CASES, ids=_case_id)
def test_every_golden_round_trips_through_the_writer_unchanged(case_dir, tmp_path):
    """Every key, shape and dtype of the C++ goldens is accepted and comes back bit for bit."""
    with read_case(case_dir) as golden:
        rec = TraceWriter(golden.case_id, golden.image_path, golden.bbox, golden.preset, golden.parameters)
        for key in golden.keys():
            rec.record(key, golden.stage(key))
        out = rec.save(tmp_path)
        with read_case(out, verify=True, finite=False) as back:
            assert back.keys() == golden.keys()
            for key in golden.keys():
                a, b = golden.stage(key), back.stage(key)
                assert a.dtype == b.dtype and a.shape == b.shape, key
                np.testing.assert_array_equal(a, b, err_msg=key)


def test_the_layout_table_documents_the_same_keys_as_the_meanings():
    assert [p for p, _ in STAGE_MEANINGS.patterns] == list(dict.fromkeys(
        p.replace("/rigid/", "/*/").replace("/nonrigid/", "/*/") for p, _ in STAGE_LAYOUTS.patterns))
    for case_dir in ALL_CASES:
        for key, entry in _golden_manifest(case_dir)["stages"].items():
            layout = stage_layout(key)
            assert layout is not None and stage_meaning(key) is not None, key
            assert layout.dtype == entry["dtype"], key
            assert len(layout.shape) == len(entry["shape"]), key
            for want, got in zip(layout.shape, entry["shape"]):
                assert not isinstance(want, int) or want == got, key


# --------------------------------------------------------------------------- clnfdiag's own fit

@pytest.fixture(scope="module")
def fitter():
    from _models import model_or_fail
    from clnfdiag.fitter import Fitter
    return Fitter(model_or_fail())


# astronaut_wild has an early-stopped phase; seq001_default_h (shared/) runs the part models.
SHARED_H_PARTS = [d for d in case_dirs(SHARED_GOLDEN_H) if d.name == "seq001_default_h"]


@pytest.mark.parametrize("case_dir", [PROJECT_GOLDEN / "astronaut_wild", *SHARED_H_PARTS], ids=_case_id)
def test_an_isolated_trace_of_clnfdiag_is_accepted_in_full(fitter, case_dir, tmp_path):
    from clnfdiag.compare.isolated import isolated_trace
    with read_case(case_dir) as golden:
        stages = isolated_trace(golden, fitter)
        rec = TraceWriter(golden.case_id, golden.image_path, golden.bbox, golden.preset, golden.parameters,
                          producer="clnfdiag (isolated)")
        for key, value in stages.items():
            rec.record(key, value)
        out = rec.save(tmp_path)
        with read_case(out, verify=True, finite=False) as back:
            assert back.keys() == list(stages)
            # the golden's keys, plus (parts used) the part models' own fits, which the C++ does not dump
            assert set(golden.keys()) <= set(back.keys())
            extra = set(back.keys()) - set(golden.keys())
            assert all(split_part(k)[0] in ("inner", "left_eye_28", "right_eye_28") for k in extra), extra
            for key, value in stages.items():
                if golden.has(key):
                    assert back.stage(key).dtype == golden.stage(key).dtype, key
                np.testing.assert_array_equal(back.stage(key), value, err_msg=key)


FIT_CASES = [PROJECT_GOLDEN / "astronaut_default", PROJECT_GOLDEN / "astronaut_default_h", *SHARED_H_PARTS]


@pytest.mark.parametrize("case_dir", FIT_CASES, ids=_case_id)
def test_the_writer_as_the_fit_loops_hook_accepts_every_stage(fitter, case_dir, tmp_path):
    """TraceWriter driven by the fit loop itself: every stage, the part models' own fits through
    scoped(), the stopped iterations through discard()."""
    from clnfdiag.compare.propagated import case_parameters
    from clnfdiag.fitter import to_gray
    with read_case(case_dir) as golden:
        rec = TraceWriter(golden.case_id, golden.image_path, golden.bbox, golden.preset, golden.parameters,
                          producer="clnfdiag")
        gray = to_gray(golden.load_image(), golden.image_path)
        fitter.fit_gray(gray, golden.bbox, case_parameters(golden), rec)
        reference = fitter.fit(golden.load_image(), golden.bbox, case_parameters(golden), trace=True).stages
        assert list(rec.stages) == list(reference)
        for key in golden.keys():                           # every golden key, as the golden stores it
            assert rec.stages[key].dtype == golden.stage(key).dtype, key
            assert rec.stages[key].shape == golden.stage(key).shape, key
        if golden.has("hierarchical/parts_used") and int(golden.stage("hierarchical/parts_used")):
            # the parts' own fits went through scoped() writers: inner face 51 points (FORMAT.md)
            maps = [k for k in rec.stages if k.startswith("hierarchical/inner/pass") and k.endswith("/response")]
            assert maps and all(rec.stages[k].shape[0] == 51 for k in maps)
        out = rec.save(tmp_path)
        with read_case(out, verify=True, finite=False) as back:
            for key, value in reference.items():
                np.testing.assert_array_equal(back.stage(key), value, err_msg=key)
