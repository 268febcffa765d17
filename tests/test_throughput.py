"""The gate's fast paths give exactly what the plain paths give.

* batched stage comparison (:func:`clnfdiag.compare.comparator._compare_keys`) against
  :func:`~clnfdiag.compare.comparator.compare_stage` key by key, on every golden with
  candidates that are the golden moved by known amounts (identical, within and beyond
  tolerance, NaN, other shapes, other dtypes): every field bit for bit;
* the golden archive reader against ``numpy.load``; verification cached by content;
* content-hash caches invalidated by a changed golden; ``clnfdiag cache``;
* parallel workers: results in input order; one envelope measured once by workers that
  need it at once (the per-entry lock);
* ``compare --json`` streamed case by case: the text of the whole-document dump, nothing
  left behind when interrupted; the summary from the kept briefs equals the full one.

Speed itself is measured by ``bench/compare_scaling.py``, not here.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import project_cases, shared_cases
from clnfdiag.compare.comparator import FINAL_LANDMARKS, _compare_key, _compare_keys
from clnfdiag.compare.tolerances import default_tolerances, exact_tolerances, landmark_tolerance
from clnfdiag.golden import read_case

CASES = project_cases() + shared_cases()
IDS = [f"{p.parent.name}/{p.name}" for p in CASES]


def _same(a, b) -> bool:
    """Equal to the bit: floats by their bits (NaN == NaN), arrays by dtype, shape and bytes."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if a is None or b is None:
            return False
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    return type(a) is type(b) and a == b


def _candidate(case, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The golden's stages, each one left as it is or moved: by a few ulps, by a relative
    1e-3 (beyond the rounding-level tolerances), a NaN, another shape, cast to float64."""
    out = {}
    for i, key in enumerate(case.keys()):
        g = np.array(case.stage(key))
        pick = 1 if key == "pass0/response" else rng.integers(0, 8)  # one map surely within, not equal
        if g.dtype.kind == "f" and g.size:
            if pick == 1:
                g = np.nextafter(g, np.inf * np.sign(rng.standard_normal(g.shape))).astype(g.dtype)
            elif pick == 2:
                g = (g * (1 + 1e-3 * rng.standard_normal(g.shape))).astype(g.dtype)
            elif pick == 3 and rng.random() < 0.2:
                g = g.copy()
                g.flat[rng.integers(0, g.size)] = np.nan
            elif pick == 4:
                g = g.astype(np.float64) + 1e-9
        if pick == 5 and g.ndim >= 1 and rng.random() < 0.1:
            g = g[:-1]
        out[key] = g
    return out


@pytest.mark.parametrize("case_dir", CASES, ids=IDS)
@pytest.mark.parametrize("mode", ["isolated", "propagated"])
def test_batched_stages_equal_one_by_one(case_dir: Path, mode: str) -> None:
    """Each StageResult of the batched comparison equals compare_stage's, every field to the bit."""
    rng = np.random.default_rng(16)
    seen: list = []
    with read_case(case_dir) as case:
        for tolerances, trace in ((default_tolerances(), _candidate(case, rng)),
                                  (exact_tolerances(), _candidate(case, rng)),
                                  (default_tolerances(), {k: np.array(case.stage(k)) for k in case.keys()})):
            keys = [k for k in case.keys() if k in trace]
            lm_tol = landmark_tolerance(tolerances, mode, 0.004, 0.003)
            # Envelope-like bands on some stages, so that per-stage tolerances differ in a batch.
            bands = {k: float(rng.random() * 1e-3) for k in keys[::3]} if mode == "propagated" else {}
            batched = _compare_keys(case, trace, keys, mode, tolerances, lm_tol, 68, bands)
            assert [r.stage for r in batched] == keys
            for key, got in zip(keys, batched):
                want = _compare_key(case, trace, key, mode, tolerances, lm_tol, 68, bands)
                for f in dataclasses.fields(want):
                    a, b = getattr(got, f.name), getattr(want, f.name)
                    assert _same(a, b), (key, f.name, a, b)
            seen += batched
    # The candidates exercised every path: identical, within tolerance but not identical
    # (batched), beyond tolerance and NaN (recomputed stage by stage), other shapes.
    assert any(r.family != "map" and r.within_tolerance and r.max_abs > 0 for r in seen)
    assert any(r.family == "map" and r.within_tolerance and r.max_abs > 0 for r in seen)
    assert any(r.family != "map" and r.outcome == "identical" for r in seen)
    assert any(not r.within_tolerance and not r.note for r in seen)
    assert any("NaN" in r.note for r in seen) and any("shape" in r.note for r in seen)


# --------------------------------------------------------------------------- golden reader


def test_reader_equals_numpy_load() -> None:
    """Every array of every golden as numpy.load reads it: dtype, shape, bytes; read-only."""
    from clnfdiag.golden import _Stages
    for case_dir in CASES:
        stages = _Stages(case_dir / "stages.npz")
        with np.load(case_dir / "stages.npz") as npz:
            assert list(stages) == npz.files
            for key in npz.files:
                a = stages[key]
                assert _same(a, npz[key]) and not a.flags.writeable, (case_dir, key)
        assert stages._members is not None  # the fast path read them, not the fallback


def test_reader_leaves_other_archives_to_numpy(tmp_path: Path) -> None:
    """An archive the fast path does not take (a Fortran-ordered member, a stored member, a
    damaged CRC) reads as numpy reads it, or fails with the same one-line error."""
    from clnfdiag.errors import GoldenError
    from clnfdiag.golden import _Stages
    a = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.savez(tmp_path / "plain.npz", f=a, s=np.float64(2.5), b=np.array([True, False]))
    st = _Stages(tmp_path / "plain.npz")
    assert _same(st["f"], np.load(tmp_path / "plain.npz")["f"]) and st["s"] == 2.5 and st["b"].tolist() == [True, False]
    np.savez_compressed(tmp_path / "bad.npz", x=np.arange(1000, dtype=np.float32))
    raw = bytearray((tmp_path / "bad.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the compressed data, past the member's header
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(GoldenError, match="bad.npz"):
        _Stages(tmp_path / "bad.npz")["x"]


# --------------------------------------------------------------------------- content-hash caches


def _copy_case(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_stage(case_dir: Path, key: str, change) -> None:
    with np.load(case_dir / "stages.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[key] = change(arrays[key])
    np.savez_compressed(case_dir / "stages.npz", **arrays)


def test_verification_cached_by_content(tmp_path: Path, monkeypatch) -> None:
    """A golden is verified once per content; changed bytes are verified again (and refused
    when bad), whatever was verified before."""
    import clnfdiag.golden as golden
    from clnfdiag.errors import GoldenError
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    real = golden._verify_stages
    monkeypatch.setattr(golden, "_verify_stages", lambda case, finite=True: calls.append(1) or real(case, finite))
    case_dir = _copy_case(project_cases()[0], tmp_path / "case")
    read_case(case_dir).close()
    read_case(case_dir).close()
    assert len(calls) == 1
    read_case(case_dir, finite=False).close()  # another set of checks: its own marker
    assert len(calls) == 2
    _rewrite_stage(case_dir, "init/shape", lambda a: np.nextafter(a, np.float32(np.inf)).astype(a.dtype))
    read_case(case_dir).close()
    assert len(calls) == 3
    _rewrite_stage(case_dir, "init/shape", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0,
                                                              np.float32(np.nan), a).astype(a.dtype))
    with pytest.raises(GoldenError, match="NaN"):
        read_case(case_dir)


def test_noise_envelope_invalidated_by_changed_golden(tmp_path: Path, monkeypatch) -> None:
    """The envelope cache: measured once, read back after; a changed golden (one ulp of one
    stage, or its box) is measured again; a copy under another case id shares it."""
    from clnfdiag.compare import noise
    from clnfdiag.compare.struct import Envelope
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    measured = []

    def fake_measure(case, fitter, runs):
        measured.append(case.path)
        return Envelope(0.5, runs, (0.5,), (0.5,) * 68, {"final/landmarks": 0.5})

    monkeypatch.setattr(noise, "measure", fake_measure)
    case_dir = _copy_case(project_cases()[0], tmp_path / "case")

    def env():
        with read_case(case_dir) as case:
            return noise.envelope(case, None, 3)

    assert env() == env() and len(measured) == 1
    assert (noise.cache_dir()).is_dir() and len(list(noise.cache_dir().glob("*.json"))) == 1
    manifest = json.loads((case_dir / "manifest.json").read_text())
    manifest["case"] = "renamed"
    (case_dir / "manifest.json").write_text(json.dumps(manifest))
    env()
    assert len(measured) == 1  # a name is not content
    manifest["bbox"][0] += 1.0
    (case_dir / "manifest.json").write_text(json.dumps(manifest))
    env()
    assert len(measured) == 2
    _rewrite_stage(case_dir, "input/gray", lambda a: (a ^ np.uint8(1)).astype(a.dtype))
    env()
    assert len(measured) == 3
    env()
    assert len(measured) == 3


def test_cache_command(tmp_path: Path, monkeypatch) -> None:
    """``clnfdiag cache info`` lists the caches; ``clear NAME`` removes one; an unknown name is exit 2."""
    from click.testing import CliRunner
    from clnfdiag.cli import main
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    read_case(project_cases()[0]).close()
    runner = CliRunner()
    out = runner.invoke(main, ["cache", "info"])
    assert out.exit_code == 0 and "verified" in out.output and str(tmp_path) in out.output
    assert (tmp_path / "clnfdiag" / "verified").is_dir()
    out = runner.invoke(main, ["cache", "clear", "verified"])
    assert out.exit_code == 0 and not (tmp_path / "clnfdiag" / "verified").exists()
    out = runner.invoke(main, ["cache", "clear", "nonsense"])
    assert out.exit_code == 2 and "unknown cache" in out.output


# --------------------------------------------------------------------------- workers


class _GoldenAsCandidate:
    """A producer returning the golden's own stages (picklable; no model)."""

    def __call__(self, case, mode):
        return {k: np.array(case.stage(k)) for k in case.keys()}


def test_parallel_results_in_input_order(tmp_path: Path, monkeypatch) -> None:
    """Workers take the cases costliest first, results come back in input order, equal
    (all but their wall time) to the sequential run's."""
    from clnfdiag.compare.comparator import run, schedule
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cases = project_cases()
    refs = cases + cases[::-1]
    one = list(run(refs, _GoldenAsCandidate(), ("isolated", "propagated"), workers=1))
    two = list(run(refs, _GoldenAsCandidate(), ("isolated", "propagated"), workers=2))
    assert [(r.golden_path, r.mode) for r in two] == [(str(c), m) for c in refs for m in ("isolated", "propagated")]

    def strip(r):
        d = r.to_json()
        d.pop("wall_time_s")
        return json.dumps(d, sort_keys=True)

    assert [strip(r) for r in one] == [strip(r) for r in two]
    costs = [5, 1, 9, 3, 7, 2]
    assert schedule(costs, 1) == [2, 4, 0, 3, 5, 1]
    assert sorted(schedule(list(range(40)), 2)) == list(range(40))


@pytest.mark.parametrize("case_dir", CASES[:6], ids=IDS[:6])
def test_batched_convergence_rows_equal_row_by_row(case_dir: Path) -> None:
    """Every convergence row's RMS values equal the per-row functions' to the bit."""
    from clnfdiag.compare.comparator import _diff_rms, _points_rms, convergence_rows
    rng = np.random.default_rng(7)
    with read_case(case_dir) as case:
        trace = _candidate(case, rng)
        rows = convergence_rows(case, trace)
        assert rows
        for row in rows:
            prefix = f"pass{row.pass_index}/{row.phase}/iter{row.iteration:02d}/"

            def pair(name):
                key = prefix + name
                return (case.stage(key) if case.has(key) else None), trace.get(key)

            g, c = pair("mean_shifts")
            assert _same(row.mean_shift_rms_golden, _points_rms(g))
            assert _same(row.mean_shift_rms_candidate, _points_rms(c))
            assert _same(row.mean_shift_rms_diff, _diff_rms(g, c))
            assert _same(row.landmark_rms_diff, _diff_rms(*pair("shape")))


def _two_workers_need_one_envelope(case_dir: Path, log: Path) -> None:
    """A forked worker's body for :func:`test_envelope_measured_once_by_concurrent_workers`."""
    from clnfdiag.compare import noise
    with read_case(case_dir) as case:
        noise.envelope(case, None, 3)


def test_envelope_measured_once_by_concurrent_workers(tmp_path: Path, monkeypatch) -> None:
    """Two processes needing one golden's envelope at the same moment: the second waits on the
    entry's lock and reads what the first measured (measured once, both see it)."""
    import multiprocessing
    import time
    from clnfdiag import cache
    from clnfdiag.compare import noise
    from clnfdiag.compare.struct import Envelope
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    log = tmp_path / "measured.log"

    def slow_measure(case, fitter, runs):
        with open(log, "a") as f:
            f.write(f"{case.path}\n")
        time.sleep(1.0)  # long enough for the other process to arrive meanwhile
        return Envelope(0.25, runs, (0.25,), (0.25,) * 68, {"final/landmarks": 0.25})

    monkeypatch.setattr(noise, "measure", slow_measure)
    case_dir = _copy_case(project_cases()[0], tmp_path / "case")
    ctx = multiprocessing.get_context("fork")  # the children inherit the patched measure
    procs = [ctx.Process(target=_two_workers_need_one_envelope, args=(case_dir, log)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1
    with read_case(case_dir) as case:
        assert noise.envelope(case, None, 3).band_px == 0.25  # read back, not measured
    assert len(log.read_text().splitlines()) == 1
    assert [name for name, n, _ in cache.info() if name == "noise" and n == 1] == ["noise"]  # locks not entries


def _some_results():
    """Real comparisons of two cases in both modes -- the golden itself (identical) and the
    golden moved (:func:`_candidate`: diverging, NaN, other shapes) -- and two failures."""
    from clnfdiag.compare.comparator import compare_traces
    from clnfdiag.compare.struct import CaseFailure
    rng = np.random.default_rng(16)
    out = []
    for case_dir in project_cases()[:2]:
        with read_case(case_dir) as case:
            for mode in ("isolated", "propagated"):
                own = {k: np.array(case.stage(k)) for k in case.keys()}
                out.append(compare_traces(case, own, mode=mode))
                out.append(compare_traces(case, _candidate(case, rng), mode=mode))
    out.insert(3, CaseFailure("broken", None, "golden error", "stages.npz: not a zip file"))
    out.append(CaseFailure("other", "isolated", "input error", "no candidate trace"))
    return out


@pytest.mark.parametrize("which", ["all", "no cases", "no failures"])
def test_streamed_json_is_the_whole_dump(tmp_path: Path, which: str) -> None:
    """``compare --json`` spooled case by case gives the bytes of the dump of the whole
    document (``json.dumps(run_json(...), indent=1)``, what compare wrote before it streamed),
    and its summary, made from the briefs kept instead of the comparisons, is the same."""
    from clnfdiag.compare.handoff import brief
    from clnfdiag.compare.jsonstream import CasesJsonWriter
    from clnfdiag.compare.struct import CaseComparison, CaseFailure, Summary, run_json
    results = _some_results()
    if which == "no cases":
        results = [r for r in results if isinstance(r, CaseFailure)]
    elif which == "no failures":
        results = [r for r in results if isinstance(r, CaseComparison)]
    modes, tol = ("isolated", "propagated"), default_tolerances().to_json()
    whole = Summary.from_results(results, 1.25)
    expected = json.dumps(run_json(results, whole, modes, "stages", tol), indent=1, allow_nan=False) + "\n"
    briefs = [brief(r) for r in results]
    streamed = Summary.from_results(briefs, 1.25)
    assert streamed == whole
    out = tmp_path / "out.json"
    with CasesJsonWriter(str(out)) as w:
        for r in results:
            if isinstance(r, CaseComparison):
                w.add(r.to_json())
        w.finish(run_json([b for b in briefs if isinstance(b, CaseFailure)], streamed, modes, "stages", tol))
    assert out.read_text() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left


def test_streamed_json_interrupted_leaves_nothing(tmp_path: Path) -> None:
    """Leaving the writer before :meth:`finish` (Ctrl-C mid-run) writes nothing and leaves no
    temporary file; an earlier output stays as it was."""
    from clnfdiag.compare.jsonstream import CasesJsonWriter
    out = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        with CasesJsonWriter(str(out)) as w:
            w.add({"case": "a", "x": 1.0})
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    out.write_text("earlier\n")
    with pytest.raises(KeyboardInterrupt):
        with CasesJsonWriter(str(out)) as w:
            w.add({"case": "a", "x": 1.0})
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and out.read_text() == "earlier\n"


@pytest.mark.parametrize("quiet", [False, True], ids=["lines", "quiet"])
def test_handoff_is_what_the_main_process_made(quiet: bool) -> None:
    """A worker's :class:`Handoff` carries exactly what the main process used to make of the
    whole comparison -- its brief, its human line (none for a passing one under --quiet,
    always one for a failure) and its JSON text -- and, when the run keeps no comparison,
    pickles to a small fraction of it (the reason it exists)."""
    import pickle
    from clnfdiag.compare.handoff import brief, case_line, hand_off
    from clnfdiag.compare.struct import CaseFailure
    results = _some_results()
    assert any(getattr(r, "passed", False) for r in results) and any(not r.passed for r in results)
    for r in results:
        h = hand_off(r, quiet=quiet, json=True)
        assert h.brief == brief(r) and h.result is None
        if isinstance(r, CaseFailure):
            assert h.failed and h.line == r.line() and h.json_text is None
            continue
        assert not h.failed
        assert h.line == (None if quiet and r.passed else case_line(r))
        assert h.json_text == json.dumps(r.to_json(), indent=1, allow_nan=False)
        lean = hand_off(r, quiet=quiet)
        assert lean.json_text is None
        assert len(pickle.dumps(lean)) * 10 < len(pickle.dumps(r))
        assert hand_off(r, whole=True).result is r


def test_parallel_handoffs_in_input_order(tmp_path: Path, monkeypatch) -> None:
    """With ``finish``, a parallel run yields the workers' handoffs in input order, each the
    handoff of the sequential run's comparison (briefs and lines equal)."""
    from functools import partial
    from clnfdiag.compare.comparator import run
    from clnfdiag.compare.handoff import Handoff, hand_off
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    refs = project_cases()[:3] * 2
    modes = ("isolated", "propagated")
    whole = list(run(refs, _GoldenAsCandidate(), modes, workers=1))
    lean = list(run(refs, _GoldenAsCandidate(), modes, workers=2, finish=partial(hand_off, quiet=False)))
    assert all(isinstance(h, Handoff) for h in lean)
    assert [h.brief for h in lean] == [hand_off(r).brief for r in whole]
    assert [h.line for h in lean] == [hand_off(r).line for r in whole]
