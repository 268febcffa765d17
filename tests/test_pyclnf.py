"""The pyclnf port (clnfdiag/ports/pyclnf.py): pyclnf 0.4.1's CCNF path in clnfdiag's fit loop.

Skipped without pyclnf (``pip install 'clnfdiag[pyclnf]'``). What is checked:

* the adapter loads offline (no socket, no urllib, none of pyclnf's download
  functions called) and converts OpenFace's files once, into a cache keyed by
  their content, reused afterwards;
* propagated: the port's trace holds exactly the stages the module docstring
  says pyclnf produces, and its final landmarks differ from the golden's by a
  plausible amount; with pyclnf's two deviations that matter on a default case
  patched (its own 0.1-px KDE grid, the current local parameters in the
  reference shape) the fit lands within the C++ builds' own spread;
* isolated: pyclnf's raw CCNF responses on the golden areas of interest equal
  the golden's within float32 rounding (bound derived per pixel below), and its
  KDE mean-shift on the golden responses is the exact-kernel one.

pyclnf's CCNF path is pure Python (one numpy correlation per neuron and window
position): a default-preset fit takes ~9 s, model loading ~7 s; the fixtures
are module-scoped so each runs once.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyclnf")

from _models import model_or_fail
from conftest import REPO
from clnfdiag import faults
from clnfdiag.compare.propagated import propagated_trace
from clnfdiag.errors import InputError
from clnfdiag.fitter import Fitter
from clnfdiag.golden import read_case
from clnfdiag.keys import kind_of
from clnfdiag.ports import METHOD_KINDS, PORTS, load_port, port_trace, produced_kinds
from clnfdiag.ports import pyclnf as port

CASE = REPO / "golden" / "astronaut_default"
#: float32 unit roundoff.
U = 2.0 ** -24

#: The stage kinds the module docstring says pyclnf produces, and those it does not.
PRODUCED = {"view_id", "visibilities", "landmarks_at_response", "reference_shape", "sim_img_to_ref",
            "sim_ref_to_img", "area_of_interest", "response_raw", "response_sigma", "response",
            "weights", "shape", "jacobian", "shape_change_norm", "dxs", "dys", "mean_shifts_ref",
            "mean_shifts", "param_update", "params_global", "params_local"}
NOT_PRODUCED = {"landmark_likelihoods", "likelihood"}


def _block_network(mp: pytest.MonkeyPatch, calls: list) -> None:
    """Every way out to the network, and pyclnf's own download entry points, raise and are logged."""
    import pyclnf.models
    import pyclnf.models._derive
    import pyclnf.models._store

    def refuse(name):
        def _refuse(*args, **kwargs):
            calls.append(name)
            raise OSError(f"network access in a test: {name}")
        return _refuse

    mp.setattr(socket.socket, "connect", refuse("socket.connect"))
    mp.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    mp.setattr(socket, "create_connection", refuse("socket.create_connection"))
    mp.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    mp.setattr(urllib.request, "urlopen", refuse("urllib.request.urlopen"))
    mp.setattr(pyclnf.models, "ensure_models", refuse("pyclnf.models.ensure_models"))
    mp.setattr(pyclnf.models._derive, "ensure_models", refuse("pyclnf.models._derive.ensure_models"))
    mp.setattr(pyclnf.models._store, "download_all", refuse("pyclnf.models._store.download_all"))


@pytest.fixture(scope="module")
def model():
    return model_or_fail()


def _counting_conversions(mp: pytest.MonkeyPatch, converted: list) -> None:
    real = port.convert_openface_models

    def convert(clnf, out):
        converted.append(out)
        return real(clnf, out)

    mp.setattr(port, "convert_openface_models", convert)


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    """The adapter, built from an empty cache with the network blocked; what tried to reach the
    network, and the conversions it made."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    calls: list = []
    converted: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        _block_network(mp, calls)
        _counting_conversions(mp, converted)
        ops = port.PyclnfOps(model.main)
    return types.SimpleNamespace(ops=ops, calls=calls, converted=converted, cache=cache)


@pytest.fixture(scope="module")
def ops(built):
    return built.ops


@pytest.fixture(scope="module")
def case():
    return read_case(CASE)


@pytest.fixture(scope="module")
def fitter(model, ops):
    return Fitter(model, main_ops=lambda clnf: ops)


@pytest.fixture(scope="module")
def propagated(case, fitter, ops):
    return port_trace(propagated_trace(case, fitter), ops)


def _final_error(trace, case) -> np.ndarray:
    return np.linalg.norm(np.asarray(trace["final/landmarks"], np.float64)
                          - case.stage("final/landmarks"), axis=1)


# -------------------------------------------------------------- (a) offline, (b) cache
def test_loads_offline_without_downloading(built):
    ops = built.ops
    assert built.calls == []                             # nothing tried the network
    assert len(built.converted) == 1                     # the empty cache was filled, offline
    assert ops.producer == "pyclnf 0.4.1"
    assert ops.model_dir.parent == built.cache / "clnfdiag" / "pyclnf"
    assert sorted(ops.ccnf.scale_models) == [0.25, 0.35, 0.5]


def test_named_port_and_missing_pyclnf(monkeypatch):
    assert load_port("pyclnf") is port.PyclnfOps
    monkeypatch.setitem(sys.modules, "pyclnf", None)     # "not installed"
    with pytest.raises(InputError, match=r"pyclnf is not installed: pip install 'clnfdiag\[pyclnf\]'"):
        port._import_pyclnf()


def test_clnfdiag_imports_without_pyclnf():
    code = ("import sys; sys.modules['pyclnf'] = None; import clnfdiag, clnfdiag.ports, "
            "clnfdiag.ports.pyclnf, clnfdiag.compare.producers; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_second_construction_uses_the_cache(built, model, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(built.cache))
    calls: list = []
    _block_network(monkeypatch, calls)
    folder = built.ops.model_dir
    stamp = json.loads((folder / port.STAMP).read_text())
    assert stamp["key"] == port.conversion_key(model.main) and stamp["key"].startswith(folder.name)
    assert stamp["pyclnf"] == "0.4.1"
    for sub in ("exported_ccnf_0.25", "exported_ccnf_0.35", "exported_ccnf_0.5",
                "sigma_components", "exported_pdm"):
        assert (folder / sub).is_dir(), sub
    # built aside and renamed into place: no temporary folder is left next to it
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    monkeypatch.setattr(port, "convert_openface_models",
                        lambda clnf, out: pytest.fail("converted again"))
    again = port.PyclnfOps(model.main)
    assert again.model_dir == folder and calls == []
    assert sorted(again.ccnf.scale_models) == sorted(built.ops.ccnf.scale_models)


def test_cache_key_follows_file_contents(model, tmp_path):
    main = model.main
    copies = {}
    for name, src in [("pdm", main.pdm.path)] + [(s.patch_scaling, s.path) for s in main.scales]:
        dst = tmp_path / f"{name}_{Path(src).name}"
        dst.write_bytes(Path(src).read_bytes())
        copies[name] = dst

    def fake():
        return types.SimpleNamespace(
            pdm=types.SimpleNamespace(path=copies["pdm"]),
            scales=[types.SimpleNamespace(path=copies[s.patch_scaling], patch_scaling=s.patch_scaling)
                    for s in main.scales])

    assert port.conversion_key(fake()) == port.conversion_key(main)     # same bytes, same key
    data = bytearray(copies[0.35].read_bytes())
    data[-1] ^= 1
    copies[0.35].write_bytes(bytes(data))
    assert port.conversion_key(fake()) != port.conversion_key(main)


# -------------------------------------------------------------- (c) propagated
def test_produced_stages_are_the_documented_ones(ops):
    assert produced_kinds(ops) == frozenset(PRODUCED)
    # the module's own lists say the same
    assert {k for m in port.PRODUCED_METHODS for k in METHOD_KINDS[m]} == PRODUCED
    assert {k for m in port.NOT_PRODUCED for k in METHOD_KINDS[m]} == NOT_PRODUCED
    assert set(port.PRODUCED_METHODS) | set(port.NOT_PRODUCED) == set(METHOD_KINDS)
    for name in port.PRODUCED_METHODS:                    # each documented in the docstring table
        assert f"\n{name} " in port.__doc__, name


def test_propagated_trace_has_the_produced_stages(propagated, case):
    kinds = {kind_of(k) for k in propagated}
    assert PRODUCED <= kinds
    assert not NOT_PRODUCED & kinds                     # computed by clnfdiag: left out
    unproduced = [k for k in case.keys() if kind_of(k) in NOT_PRODUCED]
    assert unproduced and not any(k in propagated for k in unproduced)
    # pyclnf never selects a view: view 0, every landmark visible in it
    assert all(int(propagated[f"pass{k}/view_id"]) == 0 for k in range(3))
    assert all(np.asarray(propagated[f"pass{k}/visibilities"]).all() for k in range(3))


def test_propagated_final_landmarks_plausibly_off(propagated, case):
    err = _final_error(propagated, case)
    assert np.isfinite(err).all()
    floor = json.loads((CASE.parent / "CPP_FLOOR.json").read_text())["cases"][case.case_id]
    # Beyond the spread of faithful C++ builds: pyclnf's exact-kernel KDE and mean-shape
    # reference are algorithmic differences, not rounding.
    assert err.max() > floor
    # Yet the same face: every landmark within a small fraction of how far the golden fit
    # itself moved it from the box's initial shape (the fit's own corrections).
    moved = np.linalg.norm(case.stage("final/landmarks") - case.stage("init/shape"), axis=1)
    assert err.mean() < 0.05 * moved.mean()


def test_fixing_pyclnfs_deviations_removes_the_error(case, fitter, ops, propagated, monkeypatch):
    """The deviation points are patchable: with pyclnf's own 0.1-px KDE grid (its non-default
    ``use_direct_kde=False`` path) and the current local parameters in the reference shape, the
    end-to-end error falls to the C++ builds' own spread (weights play no part here: the
    default preset's weight factor is 0, so OpenFace's weights are uniform too)."""
    assert float(case.stage("pass0/weight_factor")) == 0.0
    monkeypatch.setattr(ops.optimizer, "use_direct_kde", False)
    monkeypatch.setattr(ops, "_reference_local", lambda params_local: params_local)
    fixed = port_trace(propagated_trace(case, fitter), ops)
    floor = json.loads((CASE.parent / "CPP_FLOOR.json").read_text())["cases"][case.case_id]
    before, after = _final_error(propagated, case), _final_error(fixed, case)
    assert after.max() <= floor < before.max()


# -------------------------------------------------------------- (d), (e) isolated
def _raw_bound(expert, area: np.ndarray, window: int) -> np.ndarray:
    """Per-pixel bound on |pyclnf - golden| for one landmark's raw map, from float32 rounding.

    A neuron is ``2 alpha sigmoid(nw * corr + b)``, ``corr`` the normalised correlation of an
    ``n = h*w`` patch with the filter. Both implementations form ``corr`` in float32 from the same
    float32 area; a sum of n float32 terms errs by ~sqrt(n) u relative to the sum of magnitudes
    (rounding errors add like a random walk; the worst case n u is ~sqrt(n) times larger and never
    reached). The correlation's three sums (centring, cross term, norms) give 3 such errors; the
    centring cancels ``|mean| / std`` digits of the patch (kappa). Two implementations: times 2.
    The error reaches the response through the sigmoid's slope: 2 alpha s (1 - s) |nw| per
    neuron, s taken from a float64 evaluation; plus the float32 sum of the neuron terms (~8 u).
    """
    from numpy.lib.stride_tricks import sliding_window_view
    h, w = expert.height, expert.width
    n = h * w
    patches = sliding_window_view(area.astype(np.float64), (h, w))[:window, :window]
    centred = patches - patches.mean(axis=(2, 3), keepdims=True)
    norm = np.sqrt((centred ** 2).sum(axis=(2, 3)))
    kappa = np.abs(patches.mean(axis=(2, 3))) * np.sqrt(n) / np.maximum(norm, 1e-30)
    d_corr = 2 * np.sqrt(n) * U * (3 + 2 * kappa)
    bound = np.zeros((window, window))
    total = np.zeros((window, window))
    for k in range(expert.n_neurons):
        alpha = expert.alphas[k]
        if alpha < 1e-4:                                 # skipped by both
            continue
        f = expert.weights[k].astype(np.float64)
        fc = f - f.mean()
        corr = (centred * fc).sum(axis=(2, 3)) / np.maximum(norm * np.sqrt((fc ** 2).sum()), 1e-30)
        s = 1.0 / (1.0 + np.exp(-(corr * expert.norm_weights[k] + expert.biases[k])))
        bound += 2 * alpha * s * (1 - s) * abs(expert.norm_weights[k]) * d_corr
        total += 2 * alpha * s
    return bound + 8 * U * total


def test_isolated_raw_response_matches_the_golden(ops, case, model):
    """CCNF neurons are the same maths in pyclnf and OpenFace: on the golden's own areas of
    interest, pyclnf's raw maps equal the golden's within float32 rounding."""
    areas = case.stage("pass0/area_of_interest")
    golden = case.stage("pass0/response_raw")
    scale, view = int(case.stage("pass0/scale_index")), int(case.stage("pass0/view_id"))
    raw = ops.response_raw(areas, scale, view)
    assert raw.dtype == np.float32 and raw.shape == golden.shape
    experts = model.main.scales[scale].experts[view]
    window = golden.shape[-1]
    worst = 0.0
    for i in range(golden.shape[0]):
        bound = _raw_bound(experts[i], areas[i], window)
        err = np.abs(raw[i].astype(np.float64) - golden[i])
        worst = max(worst, float((err / bound).max()))
        assert (err <= bound).all(), (i, float(err.max()), float(bound.min()))
    # not the golden itself: pyclnf's own float32 arithmetic
    assert not np.array_equal(raw, golden)
    assert worst > 0


def _golden_mean_shift_inputs(case, it: int):
    pre = f"pass0/rigid/iter{it:02d}/"
    return (case.stage("pass0/response"), case.stage(pre + "dxs"), case.stage(pre + "dys"),
            case.stage("pass0/visibilities").astype(bool), float(case.stage("pass0/sigma")),
            case.stage(pre + "mean_shifts_ref"))


def _mean_shift_rounding_bound(window: int) -> float:
    """|pyclnf - exact-kernel fault| bound (reference px): both form the centroid
    sum(r k j) / sum(r k) of n = w^2 float32 terms (pyclnf numpy's pairwise sums, the fault
    OpenFace's sequential ones; expf either way), a ratio of two sums each good to n u relative
    worst case, of a quantity in [0, w - 1]; then minus dx."""
    n = window * window
    return 2 * (2 * n * U + 4 * U) * (window - 1)


def test_isolated_mean_shift_is_the_exact_kernel(ops, case):
    """pyclnf's default KDE (its vectorised fast path) evaluates the Gaussian at the exact
    offset, OpenFace at the offset rounded to its 0.1-px table: the same as clnfdiag's
    exact-kernel fault, and off the golden by a kernel shift of at most half a grid step."""
    resp, dxs, dys, vis, sigma, golden = _golden_mean_shift_inputs(case, 1)
    window = resp.shape[-1]
    ms = ops.mean_shifts_ref(resp, dxs, dys, vis, sigma)
    exact = faults.mean_shift_exact_kernel(resp, dxs, dys, vis, sigma)
    tol = _mean_shift_rounding_bound(window)
    assert np.abs(ms - exact).max() <= tol
    # iteration 1 sits off the grid: the deviation is far above the rounding ...
    off = np.abs(ms.astype(np.float64) - golden).max()
    assert off > 10 * tol
    # ... and no larger than moving a Gaussian's centre by up to half a grid step (0.05 px) per
    # axis can make it: the weighted centroid moves with the centre by (co)variance / sigma^2,
    # each at most ((w - 1) / 2)^2 on a w-wide window, for both axes' shifts.
    assert off <= (0.05 + 0.05) * ((window - 1) / 2) ** 2 / sigma ** 2
    # at iteration 0 every landmark is at its window centre, a grid point: no deviation
    resp, dxs, dys, vis, sigma, golden = _golden_mean_shift_inputs(case, 0)
    assert np.allclose(dxs, (window - 1) / 2) and np.allclose(dys, (window - 1) / 2)
    ms0 = ops.mean_shifts_ref(resp, dxs, dys, vis, sigma)
    assert np.abs(ms0.astype(np.float64) - golden).max() <= tol


def test_pyclnfs_grid_kde_path_matches_the_golden(ops, case, monkeypatch):
    """The deviation's patch point: pyclnf's own 0.1-px table (``use_direct_kde=False``,
    ``NURLMSOptimizer._kde_mean_shift``) reproduces OpenFace's mean-shift up to rounding."""
    monkeypatch.setattr(ops.optimizer, "use_direct_kde", False)
    resp, dxs, dys, vis, sigma, golden = _golden_mean_shift_inputs(case, 1)
    ms = ops.mean_shifts_ref(resp, dxs, dys, vis, sigma)
    assert np.abs(ms.astype(np.float64) - golden).max() <= _mean_shift_rounding_bound(resp.shape[-1])


def test_pyclnf_is_looked_up_at_call_time(ops, case, monkeypatch):
    """A patch on pyclnf's class reaches the adapter: it holds no copied references."""
    import pyclnf.core.optimizer as optimizer
    seen = []
    real = optimizer.NURLMSOptimizer._compute_mean_shift_vectorized

    def spy(self, *args, **kwargs):
        seen.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(optimizer.NURLMSOptimizer, "_compute_mean_shift_vectorized", spy)
    resp, dxs, dys, vis, sigma, _ = _golden_mean_shift_inputs(case, 1)
    ops.mean_shifts_ref(resp, dxs, dys, vis, sigma)
    assert seen == [ops.optimizer]


def test_stage_pieces_compose_to_pyclnfs_own_functions(ops, case):
    """The adapter's stage split is pyclnf's computation: area -> raw -> Sigma -> shift equals
    ``NURLMSOptimizer._compute_response_map`` for a landmark, and offsets -> mean-shift ->
    image frame equals ``_compute_mean_shift``."""
    opt = ops.optimizer
    g, loc = case.stage("pass0/params_global_in"), case.stage("pass0/params_local_in")
    lm = ops.shape_2d(loc, g)
    ref = ops.reference_shape(loc, 0)
    i2r, r2i = ops.similarity(lm, ref)
    gray = case.stage("input/gray").astype(np.float32)
    params = np.concatenate([g, loc]).astype(np.float64)
    lm64 = ops.pyclnf_pdm.params_to_landmarks_2d(params)
    ref64 = ops.pyclnf_pdm.get_reference_shape(0.25, np.zeros(ops.n_modes))
    i2r64 = port._import_pyclnf().core.utils.align_shapes_with_scale(lm64, ref64)
    r2i64 = port._import_pyclnf().core.utils.invert_similarity_transform(i2r64)
    areas = ops.area_of_interest(gray, lm, r2i, 0, 0, 11)
    resp = ops.response(ops.response_sigma(ops.response_raw(areas, 0, 0), 0, 0), 0, 0)
    experts = ops._experts(0, 0)
    own = {}
    for i in (0, 30, 36):
        own[i] = opt._compute_response_map(gray, lm64[i, 0], lm64[i, 1], experts[i], 11, i2r64,
                                           r2i64, ops.ccnf.sigma_components, i, 0)
        assert np.array_equal(resp[i], own[i].astype(np.float32)), i
    # mean-shift after a small move, through the protocol vs pyclnf's function
    moved = (lm64 + np.array([0.37, -0.21])).astype(np.float32)    # the same input for both
    dxs, dys = ops.window_offsets(moved, lm, i2r, 11)
    moved = moved.astype(np.float64)
    opt._current_sigma = 1.5
    vis = np.zeros(ops.n_points, bool)
    vis[list(own)] = True
    ms = ops.mean_shifts(ops.mean_shifts_ref(resp, dxs, dys, vis, 1.5), r2i, vis)
    full = opt._compute_mean_shift(moved, lm64, own, experts, 11, i2r64, r2i64)
    n = ops.n_points
    assert np.allclose(ms[:, 0], full[:n], rtol=0, atol=1e-6)
    assert np.allclose(ms[:, 1], full[n:], rtol=0, atol=1e-6)


def test_registered_in_ports():
    assert PORTS["pyclnf"] == "clnfdiag.ports.pyclnf:PyclnfOps"


# -------------------------------------------------------------- the diagnosis is right
WILD_CASE = REPO / "golden" / "takeo_wild"


def test_fixing_the_top_ranked_cause_moves_the_landmarks_by_its_impact(model, ops, fitter, monkeypatch):
    """Issue 12's proof that the ranking is a diagnosis: on takeo_wild (wild preset, weight factor
    > 0) the top-ranked cause of pyclnf's isolated trace is its uniform NU-RLMS weights, named after
    the known fault. Patching pyclnf to weight each landmark by its expert's confidence (the fix)
    moves its end-to-end landmarks by what the cause's replayed impact said, and its error falls.

    Margin: the impact runs pyclnf's weights inside OpenFace's fit, the fix removes them from
    pyclnf's own fit, which still has its other deviations; the two moves can differ by at most what
    those other deviations move (the other causes' impacts, triangle inequality), plus the case's
    rounding noise on each of the two fits."""
    from clnfdiag.compare.comparator import compare_traces
    from clnfdiag.compare.isolated import isolated_trace
    from clnfdiag.compare.producers import Replays

    from clnfdiag.compare.impact import fit_impact
    from clnfdiag.compare.tolerances import profile_tolerances
    from clnfdiag.ports import SwappedOps, methods_of

    own = Fitter(model)
    replays = Replays(fitter=own)

    def cause_impact(keys):
        """As compare --port ranks causes: the port's methods of the kind in clnfdiag's fit."""
        kind = kind_of(keys if isinstance(keys, str) else keys[0])
        methods = methods_of(kind)
        if not methods:
            raise NotImplementedError(kind)
        swapped = SwappedOps(own.main, ops, methods)
        return fit_impact(case, Fitter(model, main_ops=lambda clnf: swapped))

    with read_case(WILD_CASE) as case:
        assert float(case.stage("pass0/weight_factor")) > 0
        trace = port_trace(isolated_trace(case, fitter), ops)
        cmp = compare_traces(case, trace, "isolated", profile_tolerances("port"),
                             impact=lambda k: replays.impact(case, trace, k),
                             envelope=replays.envelope(case), signature=lambda k: replays.signature(case, trace, k),
                             causes=True, cause_impact=cause_impact)
        top, others = cmp.causes[0], cmp.causes[1:]
        assert top.stage_kind == "weights" and top.known_fault == "uniform-weights" and top.beyond_noise

        before = port_trace(propagated_trace(case, fitter), ops)["final/landmarks"]

        def confidences(scale, view):
            bank = ops.experts.bank(scale, view)    # the experts' confidences, from OpenFace's files
            conf = np.zeros(ops.n_points)
            conf[bank.landmarks] = bank.confidence
            return conf

        monkeypatch.setattr(ops, "_landmark_weights", confidences)
        after = port_trace(propagated_trace(case, fitter), ops)["final/landmarks"]
        golden = case.stage("final/landmarks")
    move = float(np.linalg.norm(np.asarray(after, np.float64) - before, axis=1).max())
    margin = sum(c.landmarks_impact_px or 0.0 for c in others) + 2 * cmp.noise_floor_px
    assert abs(move - top.landmarks_impact_px) <= margin, (move, top.landmarks_impact_px, margin)
    err_before = np.linalg.norm(np.asarray(before, np.float64) - golden, axis=1).max()
    err_after = np.linalg.norm(np.asarray(after, np.float64) - golden, axis=1).max()
    assert err_after < err_before - top.landmarks_impact_px + margin
