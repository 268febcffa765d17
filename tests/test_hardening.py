"""Issue 14: bad input and bad outputs get one line and a documented exit code, never a traceback,
a half-written result or a silent failure; the help texts agree with each other and the README.

Each test is one row of the issue's table (or of its friction list). Commands that must not
load the model (outputs are checked first) run in-process through click's runner; those whose
exit code, stderr or signal handling are the point run as real subprocesses.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clnfdiag import errors
from clnfdiag.cli import main
from clnfdiag.compare.cli import compare as compare_cmd
from clnfdiag.faults import FAULTS
from clnfdiag.golden import read_case, write_case
from clnfdiag.outputs import TMP_PREFIX
from clnfdiag.processes import usable_cpus

from _models import model_dir_or_fail, models_root, writable_copy
from conftest import PROJECT_GOLDEN, REPO

CASE = PROJECT_GOLDEN / "astronaut_default"
CASE2 = PROJECT_GOLDEN / "takeo_default"
ASTRO = CASE / "image.png"
EINSTEIN = PROJECT_GOLDEN / "einstein_default" / "image.png"
ASTRO_BOX = "180.8,85.7,89.2,86.8"


# --------------------------------------------------------------------------- helpers

def _invoke(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args])


def _env() -> dict[str, str]:
    return dict(os.environ, OPENFACE_MODELS_DIR=str(models_root()))


def run_cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env=env or _env(), timeout=timeout)


def start_cli(*args) -> subprocess.Popen:
    """The CLI in its own process group with Ctrl-C at its default (as from a terminal)."""
    return subprocess.Popen([sys.executable, "cli.py", *map(str, args)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def ctrl_c(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, str, float]:
    """Send SIGINT to the process group (what a terminal does); (stdout, stderr, seconds to exit)."""
    t0 = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return out, err, time.perf_counter() - t0


def one_error_line(stderr: str, kind: str = "output error") -> str:
    """The single stderr line of a bad-input exit (no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith(f"clnfdiag: {kind}: "), lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary siblings clnfdiag would leave behind on a failed or interrupted write."""
    return sorted(p.name for p in folder.rglob(TMP_PREFIX + "*"))


def _writable(folder: Path) -> bool:
    try:
        (folder / "probe").mkdir()
    except OSError:
        return False
    (folder / "probe").rmdir()
    return True


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nothing can be created in: mode 555, or immutable when running as root (which
    ignores permission bits); skipped where neither is possible."""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "summary.json").write_text("{}")
    (d / "index.html").write_text("<html></html>")  # an older report: replaceable but for its mode
    d.chmod(0o555)
    immutable = False
    if _writable(d):
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
        if not immutable or _writable(d):
            d.chmod(0o755)
            pytest.skip("cannot make a read-only folder here (root, no chattr)")
    yield d
    if immutable:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    d.chmod(0o755)


def _golden_stages(case) -> dict[str, np.ndarray]:
    return {k: np.array(case.stage(k)) for k in case.keys()}


def _write_like(case, parent: Path, stages: dict, case_id: str | None = None, finite: bool = True) -> Path:
    return write_case(parent, case_id or case.case_id, case.image_path, case.bbox, case.preset, case.parameters,
                      stages, case.manifest["result"], "test", finite=finite)


@pytest.fixture(scope="module")
def golden():
    with read_case(CASE) as case:
        yield case


@pytest.fixture(scope="module")
def perfect(golden, tmp_path_factory) -> Path:
    """A candidate folder equal to the golden (compares without fitting)."""
    return _write_like(golden, tmp_path_factory.mktemp("cand"), _golden_stages(golden))


# --------------------------------------------------------------------------- fit outputs

def test_fit_trace_out_to_an_existing_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("mine")
    res = _invoke("fit", ASTRO, "--bbox", ASTRO_BOX, "--trace-out", target)
    assert res.exit_code == errors.EXIT_BAD_INPUT
    line = one_error_line(res.stderr)
    assert str(target) in line and "--trace-out" in line and "not a folder" in line
    assert target.read_text() == "mine"


def test_fit_trace_out_into_a_read_only_folder(read_only_dir):
    res = _invoke("fit", ASTRO, "--bbox", ASTRO_BOX, "--trace-out", read_only_dir)
    assert res.exit_code == errors.EXIT_BAD_INPUT
    assert "cannot write" in one_error_line(res.stderr)


@pytest.mark.parametrize("name", ["out.txt", "folder", "noext"])
def test_fit_overlay_target_refused_before_the_fit(tmp_path, name):
    target = tmp_path / name
    if name == "folder":
        target.mkdir()
    res = _invoke("fit", ASTRO, "--bbox", ASTRO_BOX, "--overlay", target)
    assert res.exit_code == errors.EXIT_BAD_INPUT
    line = one_error_line(res.stderr)
    assert "--overlay" in line and str(target) in line
    assert res.stdout == ""  # refused before fitting: no landmarks printed
    assert sorted(p.name for p in tmp_path.iterdir()) == (["folder"] if name == "folder" else [])


def test_fit_outputs_written_whole_and_trace_naming_explained(tmp_path):
    proc = run_cli("fit", ASTRO, "--bbox", ASTRO_BOX, "--no-hierarchical", "--overlay", tmp_path / "ov.jpg",
                   "--trace-out", tmp_path / "traces")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ov.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, as the name says
    (note,) = proc.stderr.strip().splitlines()
    assert note.startswith("clnfdiag: note: --trace-out without --case-id: the case is named 'image'")
    assert "--case-id" in note
    with read_case(tmp_path / "traces" / "image") as trace:
        assert trace.case_id == "image"
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- compare / report targets

def test_compare_report_into_a_read_only_folder_checked_before_the_run(read_only_dir, perfect):
    res = _invoke("compare", CASE, "--candidate", perfect, "--report", read_only_dir)
    assert res.exit_code == errors.EXIT_BAD_INPUT
    assert "--report" in one_error_line(res.stderr)
    assert res.stdout == ""  # no comparison ran


@pytest.mark.parametrize("option,target", [
    ("--report", "afile"), ("--report", "/dev/null"), ("--report", "missing/report"),
    ("--json", "adir"), ("--json", "/dev/null"), ("--json", "missing/out.json"),
], ids=["report-file", "report-devnull", "report-missing-parent", "json-folder", "json-devnull",
        "json-missing-parent"])
def test_unusable_targets_are_found_before_the_run(tmp_path, perfect, monkeypatch, option, target):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    ran = []
    monkeypatch.setattr("clnfdiag.compare.cli.run", lambda *a, **k: ran.append(1) or iter(()))
    path = target if target.startswith("/") else tmp_path / target
    res = CliRunner().invoke(compare_cmd, [str(CASE), "--candidate", str(perfect), option, str(path)])
    assert res.exit_code == errors.EXIT_BAD_INPUT
    assert option in one_error_line(res.stderr)
    assert ran == []


def test_report_replaces_an_older_report_and_refuses_a_foreign_folder(tmp_path, perfect):
    rep = tmp_path / "rep"
    stale = rep / "07_old_case_isolated"
    stale.mkdir(parents=True)
    (stale / "landmarks.png").write_bytes(b"old")
    for name in ("summary.json", "index.html"):
        (rep / name).write_text("old")
    res = _invoke("compare", CASE, "--candidate", perfect, "--report", rep)
    assert res.exit_code == 0, res.output
    assert not stale.exists()  # no file of the older report stays
    assert (rep / "index.html").read_text() != "old"
    assert json.loads((rep / "summary.json").read_text())["cases"][0]["case"] == "astronaut_default"
    assert leftovers(tmp_path) == []

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = _invoke("compare", CASE, "--candidate", perfect, "--report", mine)
    assert res.exit_code == errors.EXIT_BAD_INPUT
    assert "not a clnfdiag report" in one_error_line(res.stderr)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_json_written_whole(tmp_path, perfect):
    out = tmp_path / "out.json"
    out.write_text("older")
    res = _invoke("compare", CASE, "--candidate", perfect, "--json", out)
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["summary"]["total"] == 1
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- interrupts

def test_ctrl_c_during_compare_exits_130_with_no_outputs(tmp_path):
    rep, js = tmp_path / "rep", tmp_path / "out.json"
    proc = start_cli("compare", PROJECT_GOLDEN, "--report", rep, "--json", js)
    first = proc.stdout.readline()  # a comparison finished: the run is under way
    assert first.startswith(("PASS", "DIVERGED")), first + proc.stderr.read()
    _, err, seconds = ctrl_c(proc)
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert err.strip() == errors.INTERRUPTED_LINE, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no report, no JSON, no temporary folder
    assert seconds < 15  # workers do not finish their queue first


def test_ctrl_c_with_workers_leaves_no_worker_traceback(tmp_path):
    proc = start_cli("compare", PROJECT_GOLDEN, "--workers", "2", "--json", tmp_path / "out.json")
    time.sleep(1.5)  # the workers are starting (importing, loading the model)
    _, err, seconds = ctrl_c(proc)
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert err.strip() == errors.INTERRUPTED_LINE, err
    assert seconds < 15
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def two_reports(golden, tmp_path_factory) -> tuple[Path, Path]:
    """Two small reports of different comparisons (their summary.json feed ``clnfdiag report``)."""
    from clnfdiag.compare import compare_traces
    from clnfdiag.report import write_report

    root = tmp_path_factory.mktemp("reports")
    with read_case(CASE2) as other:
        mine, theirs = _golden_stages(golden), _golden_stages(other)
        a = write_report([compare_traces(golden, mine, mode="isolated")], root / "a",
                         golden_cases=[golden], candidate_maps={golden.case_id: mine})
        b = write_report([compare_traces(other, theirs, mode="isolated"),
                          compare_traces(other, theirs, mode="propagated")], root / "b",
                         golden_cases=[other], candidate_maps={other.case_id: theirs})
    return a, b


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ctrl_c_while_the_report_is_written_leaves_the_previous_one(two_reports, tmp_path):
    a, b = two_reports
    out = tmp_path / "out"
    shutil.copytree(a, out)
    before = _snapshot(out)
    proc = start_cli("report", b / "summary.json", "--out", out)
    deadline = time.monotonic() + 60
    while (not any(".build-" in name for name in leftovers(tmp_path)) and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)  # until the new report's build folder exists
    assert proc.poll() is None, "the report was built before it could be interrupted"
    _, err, _ = ctrl_c(proc)
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert err.strip() == errors.INTERRUPTED_LINE, err
    assert _snapshot(out) == before  # the earlier report, whole
    assert leftovers(tmp_path) == []


def test_two_reports_into_one_folder_never_mix(two_reports, tmp_path):
    a, b = two_reports
    out = tmp_path / "out"
    procs = [start_cli("report", src / "summary.json", "--out", out) for src in (a, b, a, b)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    cases = json.loads((out / "summary.json").read_text())["cases"]
    page = (out / "index.html").read_text()
    slugs = sorted(p.name for p in out.iterdir() if p.is_dir())
    # Whichever run finished last, everything in the folder is that run's.
    expected = [f"{i:02d}_{c['case']}_{c['mode']}" for i, c in enumerate(cases)]
    assert slugs == expected
    assert f"clnfdiag report: {len(cases)} comparison(s)" in page
    assert all(c["case"] in page for c in cases)
    assert len({c["case"] for c in cases}) == 1  # one run's cases, not both
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- workers

def test_workers_capped_at_usable_cpus(perfect, monkeypatch):
    seen = {}

    def fake_run(cases, producer, modes, tolerances, gate, workers=1, **kw):
        seen["workers"] = workers
        return iter(())

    monkeypatch.setattr("clnfdiag.compare.cli.run", fake_run)
    res = CliRunner().invoke(compare_cmd, [str(CASE), str(CASE2), "--candidate", str(perfect.parent),
                                           "--workers", "1000"])
    cpus = usable_cpus()
    assert seen["workers"] == cpus
    assert errors.note_line(f"--workers 1000 capped at {cpus}, the CPUs this process may use") in res.stderr
    res = CliRunner().invoke(compare_cmd, [str(CASE), "--candidate", str(perfect), "--workers", "1"])
    assert seen["workers"] == 1 and "capped" not in res.stderr


# --------------------------------------------------------------------------- NaN

def test_nan_in_a_candidate_diverges_at_that_stage(golden, tmp_path):
    stages = _golden_stages(golden)
    stages["pass1/response"] = stages["pass1/response"].copy()
    stages["pass1/response"][3, 2, 2] = np.nan
    cand = _write_like(golden, tmp_path, stages, finite=False)
    res = _invoke("compare", CASE, "--candidate", cand, "--json", tmp_path / "out.json")
    assert res.exit_code == errors.EXIT_DIVERGENCE, res.output
    (case,) = json.loads((tmp_path / "out.json").read_text())["cases"]
    assert case["first_divergent_stage"] == "pass1/response"
    stage = next(s for s in case["stages"] if s["stage"] == "pass1/response")
    assert stage["worst_landmarks"] == [3] and "1 NaN value(s) in the candidate" in stage["note"]
    assert "golden error" not in res.output


def test_nan_in_a_golden_stays_bad_input(golden, perfect, tmp_path):
    stages = _golden_stages(golden)
    stages["pass1/response"] = stages["pass1/response"].copy()
    stages["pass1/response"][3, 2, 2] = np.nan
    bad_golden = _write_like(golden, tmp_path, stages, finite=False)
    res = _invoke("compare", bad_golden, "--candidate", perfect)
    assert res.exit_code == errors.EXIT_BAD_INPUT
    assert "golden error" in res.stderr and "NaN" in res.stderr


# --------------------------------------------------------------------------- fit failure and detection

@pytest.mark.parametrize("box", ["-5,-5,10,10", "0,0,1e-9,1e-9"])
def test_failed_fit_is_visible(box):
    proc = run_cli("fit", ASTRO, f"--bbox={box}", "--no-hierarchical")
    assert proc.returncode == errors.EXIT_FIT_FAILED, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clnfdiag: warning: ") and "the fit failed" in lines[0]
    assert len(proc.stdout.strip().splitlines()) == 69  # the landmarks are still printed


def test_detection_without_bbox_is_described():
    proc = run_cli("fit", EINSTEIN, "--no-hierarchical", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    m = re.match(r"clnfdiag: note: .*Haar cascade was used; it found (\d+) face\(s\), fitting the widest: "
                 r"--bbox ([-\d.]+),([-\d.]+),([-\d.]+),([-\d.]+)", line)
    assert m, line
    assert int(m.group(1)) >= 1
    box = [float(v) for v in m.group(2, 3, 4, 5)]
    np.testing.assert_allclose(box, json.loads(proc.stdout)["bbox"], atol=0.051)  # the box that was fitted


# --------------------------------------------------------------------------- golden validate

def test_validate_rejects_a_box_of_negative_width(tmp_path):
    case = tmp_path / "case"
    shutil.copytree(CASE, case)
    manifest = json.loads((case / "manifest.json").read_text())
    manifest["bbox"][2] = -manifest["bbox"][2]
    (case / "manifest.json").write_text(json.dumps(manifest))
    res = _invoke("golden", "validate", case)
    assert res.exit_code == errors.EXIT_BAD_INPUT
    assert res.stdout.startswith(f"BAD {case}") and "(bbox)" in res.stdout and "must be > 0" in res.stdout


# --------------------------------------------------------------------------- modified model file

@pytest.fixture(scope="module")
def modified_models(tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the model folder with one digit of the PDM changed: (folder, changed file)."""
    copy = writable_copy(model_dir_or_fail(), tmp_path_factory.mktemp("models") / "model")
    pdm = copy / "pdms" / "In-the-wild_aligned_PDM_68.txt"
    data = pdm.read_bytes()
    pdm.write_bytes(data.replace(b"-73.393523", b"-73.393524", 1))
    return copy, pdm


@pytest.mark.parametrize("command", ["fit", "compare"])
def test_modified_model_file_is_one_warning_line(modified_models, command):
    models, pdm = modified_models
    if command == "fit":
        proc = run_cli("fit", ASTRO, "--bbox", ASTRO_BOX, "--no-hierarchical", "--models", models)
    else:
        proc = run_cli("compare", CASE, CASE2, "--workers", "2", "--models", models, "--quiet")
    assert "Traceback" not in proc.stderr and "warnings.warn" not in proc.stderr, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if "differs from OpenFace 2.2.0" in ln]
    assert len(warned) == 1, proc.stderr  # once, also with two worker processes
    assert warned[0].startswith(f"clnfdiag: warning: {pdm}: ")
    assert "ModelChecksumWarning" not in proc.stderr


# --------------------------------------------------------------------------- friction

def test_missing_candidate_names_case_id(golden, tmp_path):
    root = tmp_path / "traces"
    _write_like(golden, root, _golden_stages(golden), case_id="image")  # fit --trace-out without --case-id
    res = _invoke("compare", CASE, CASE2, "--candidate", root)
    assert res.exit_code == errors.EXIT_BAD_INPUT
    assert "no candidate trace for golden case 'astronaut_default'" in res.stderr
    assert "--case-id astronaut_default" in res.stderr


def test_summary_time_includes_the_report(perfect, tmp_path, monkeypatch):
    def write_report(comparisons, out_dir, golden_cases=None, candidate_maps=None, source=""):
        time.sleep(1.5)
        return Path(out_dir)

    from clnfdiag.report import keep_for_report
    fake = types.ModuleType("clnfdiag.report")
    fake.write_report = write_report
    fake.keep_for_report = keep_for_report
    monkeypatch.setitem(sys.modules, "clnfdiag.report", fake)
    res = _invoke("compare", CASE, "--candidate", perfect, "--report", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    seconds = float(re.search(r"; ([\d.]+) s$", res.stdout.strip().splitlines()[-1]).group(1))
    assert seconds >= 1.5


def _command(*path: str):
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _option_help(option: str, *path: str) -> str:
    (param,) = [p for p in _command(*path).params if option in p.opts]
    return " ".join(param.help.split())


def test_help_texts_agree():
    models = {path: _option_help("--models", *path)
              for path in (("compare",), ("fit",), ("models", "check"), ("models", "where"))}
    assert len(set(models.values())) == 1, models
    assert "$OPENFACE_MODELS_DIR" in models[("fit",)] and "$XDG_DATA_HOME/OpenFaceModels" in models[("fit",)]
    for cmd in ("fit", "compare"):
        inject = _option_help("--inject", cmd)
        assert all(f in inject for f in FAULTS), (cmd, inject)
    no_h = _option_help("--no-hierarchical", "fit")
    assert "made with it off" not in no_h and "astronaut_default_h" in no_h
    assert "--case-id" in _option_help("--trace-out", "fit")
    res = _invoke("fit", "--help")  # and click renders them
    assert res.exit_code == 0 and "--case-id" in res.stdout


def _readme_rows() -> dict[str, set[str]]:
    """Long options named in the first cell of each command row of the README's Commands table."""
    rows: dict[str, set[str]] = {}
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("| `clnfdiag "):
            first = re.split(r"(?<!\\)\|", line)[1]  # cells are split on unescaped pipes
            command = re.search(r"clnfdiag (\w+)", first).group(1)
            rows.setdefault(command, set()).update(re.findall(r"--[a-z][a-z-]+", first))
    return rows


def _command_options(*path: str) -> set[str]:
    return {o for p in _command(*path).params for o in p.opts if o.startswith("--") and o != "--help"}


def test_readme_commands_table_matches_the_commands():
    rows = _readme_rows()
    assert rows["compare"] == _command_options("compare")
    assert rows["fit"] == _command_options("fit")
    assert rows["report"] == _command_options("report")
    assert rows["models"] == _command_options("models", "check") | _command_options("models", "where")
    readme = (REPO / "README.md").read_text()
    # --strict belongs to `models check` alone, and the README says so.
    assert "--strict" not in " ".join(" ".join(sorted(v)) for k, v in rows.items() if k != "models")
    assert "clnfdiag models check --strict" in readme or "`models check --strict`" in readme
    for code in (errors.EXIT_OK, errors.EXIT_DIVERGENCE, errors.EXIT_BAD_INPUT, errors.EXIT_FIT_FAILED,
                 errors.EXIT_INTERRUPTED):
        assert re.search(rf"^\| {code} \|", readme, re.M), f"exit code {code} not in the README's table"


# --------------------------------------------------------------------------- report layout and writing

def test_comparison_json_is_plain(golden):
    """The report takes CaseComparison.to_json as it is (no JSON round trip): it must hold plain JSON values."""
    from clnfdiag.compare import compare_traces

    stages = _golden_stages(golden)
    stages["pass0/response"] = stages["pass0/response"] * np.float32(2)
    data = compare_traces(golden, stages, mode="isolated").to_json(per_landmark="all")
    text = json.dumps(data, allow_nan=False)  # no default=: a numpy value would raise here
    assert json.loads(text) == data  # and no tuple (a tuple would come back a list)


def test_large_report_gets_one_page_per_comparison(two_reports, tmp_path, monkeypatch):
    """Beyond the page budget, index.html is the overview and each comparison has its own page
    linking the PNGs beside it (here the budget is lowered to 0 to build one quickly)."""
    from browser_check import check, find_chromium
    from clnfdiag.report import html, rebuild_report

    monkeypatch.setattr(html, "PAGE_BUDGET_BYTES", 0)
    out = rebuild_report(two_reports[1] / "summary.json", tmp_path / "paged")
    index = (out / "index.html").read_text()
    assert "data:image/png" not in index and "<img" not in index
    pages = sorted(out.glob("*/index.html"))
    assert [p.parent.name for p in pages] == ["00_takeo_default_isolated", "01_takeo_default_propagated"]
    for p in pages:
        assert f'href="{p.parent.name}/index.html"' in index
        page = p.read_text()
        assert "data:image/png" not in page and 'src="landmarks.png"' in page
        assert 'href="../index.html"' in page
    browser = find_chromium()
    if browser is not None:  # the case page renders with its linked images
        r = check(pages[0], browser)
        assert r.images_loaded == "5/5" and r.landmark_rows > 0, r
        assert r.title == "clnfdiag report: takeo_default (isolated)"


def test_small_report_is_one_self_contained_page(two_reports):
    a = two_reports[0]
    page = (a / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 5
    assert not list(a.glob("*/index.html"))


def test_failed_build_leaves_the_previous_folder(two_reports, tmp_path):
    from clnfdiag.outputs import staged_folder
    from clnfdiag.report import REPORT_WHAT, is_report_folder

    out = tmp_path / "rep"
    shutil.copytree(two_reports[0], out)
    before = _snapshot(out)
    with pytest.raises(RuntimeError):
        with staged_folder(out, "--report", is_report_folder, REPORT_WHAT) as build:
            (build / "index.html").write_text("half")
            raise RuntimeError("disk full")
    assert _snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_image_file_outside_the_case_is_refused(tmp_path):
    case = tmp_path / "case"
    shutil.copytree(CASE, case)
    manifest = json.loads((case / "manifest.json").read_text())
    for name in ("/etc/passwd", "../other/image.png"):
        manifest["image"]["file"] = name
        (case / "manifest.json").write_text(json.dumps(manifest))
        res = _invoke("golden", "validate", case)
        assert res.exit_code == errors.EXIT_BAD_INPUT and "(image.file)" in res.stdout, res.stdout


def test_interrupt_deferred_to_the_end_of_the_block():
    """Ctrl-C inside :func:`interrupts_deferred` is raised when the block ends, not inside
    it (a lock held there is released first); outside, at once, as before."""
    from clnfdiag.processes import interrupts_deferred
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now
            reached.append("after the signal")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with interrupts_deferred():
        pass  # nothing noted, nothing raised
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        reached.append("not reached")
    assert reached == ["after the signal"]


def test_error_raised_by_an_interrupt_is_an_interrupt(capsys, monkeypatch):
    """numba's dispatcher interrupted in Python code reports ``SystemError: ... returned a
    result with an exception set`` caused by the KeyboardInterrupt: the command still ends
    with the interrupt line and 130, and a finaliser failing after the interrupt (a
    half-built llvmlite object) adds nothing to stderr."""
    import gc
    from clnfdiag.cli_support import run_body
    from clnfdiag.processes import caused_by_interrupt

    class HalfBuilt:
        def __del__(self):
            raise AttributeError("'OutputString' object has no attribute '_ptr'")

    def body():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        except KeyboardInterrupt as exc:
            HalfBuilt()
            gc.collect()
            raise SystemError("CPUDispatcher(<function f>) returned a result with an exception set") from exc

    reported = []  # what would reach stderr as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    assert run_body(body) == errors.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == errors.INTERRUPTED_LINE
    assert reported == []
    HalfBuilt()  # with no interrupt, such a report is shown as usual
    gc.collect()
    assert len(reported) == 1
    assert not caused_by_interrupt(SystemError("other"))

    def broken():
        raise SystemError("not an interrupt")

    with pytest.raises(SystemError):
        run_body(broken)
