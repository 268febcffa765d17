"""Throughput of ``clnfdiag compare``: cases/s, ms per comparison, CPU and peak memory for
1, 10, 100 (and 1,000) cases, with a cold and a warm cache.

The case sets are made in a temporary folder from the golden cases (``golden/`` by
default): each copy is a folder with a distinct name holding a manifest whose
``case`` id is made distinct too, and symlinks to the original ``image.png`` and
``stages.npz`` (the image SHA-256 in the manifest stays valid). Each run is
``clnfdiag compare DIR --mode both --quiet --workers W`` in its own subprocess
with BLAS pinned to 1 thread and ``XDG_CACHE_HOME`` pointing at a cache folder of
the benchmark's own. Three cache states per set:

``cold --exact``
    an empty cache (no verified goldens, no envelopes) and ``--exact``: equality
    needs no noise envelope, so this is the whole cost of a first bit-identity
    gate: process start, model load, reading and verifying every golden, both
    fits and both comparisons per case, the JSON-free summary.
``cold envelopes``
    an empty cache and the default tolerances: the above plus each distinct
    golden's noise envelope (K = 64 perturbed fits; the copies of one golden share
    it, since an envelope is keyed by the golden's content, not its name).
``warm envelopes``
    the same run again, its cache now full: what a repeated gate pays.

(numba's compiled kernels are cached next to clnfdiag's sources on first use on
a machine, independently of these caches; they are warm in every row.)

Reported per run: wall time, CPU time (user + sys of the whole process tree,
from ``RUSAGE_CHILDREN``: on a shared machine the wall time follows the other
jobs' load, the CPU time hardly), cases/s, ms per comparison (wall / 2n), the
peak of the summed PSS of the process tree (sampled every :data:`POLL_S` from
``/proc/PID/smaps_rollup``: pages shared by forked workers are counted once,
split between them) and the largest single process's peak RSS
(``ru_maxrss``), and the exit code.

The sampling is not free: finding the tree scans ``/proc`` and each
``smaps_rollup`` walks a process's page tables. Sampled every 50 ms at normal
priority it took 2.3 s of CPU during a 10 s run of 100 cases, a quarter of a
core the workers of a two-core machine then lacked (the run measured 9.9 s
against 7.5 s unobserved). So the measuring process samples every
:data:`POLL_S` and lowers its own priority once the run has started (the run
keeps the normal one): memory is flat over a run, so a coarser sampling still
finds its level (it can miss a short peak; ``ru_maxrss`` gives each process's
exact one).

With ``--json`` every run also writes ``compare --json`` (into the temporary
folder): the comparisons' JSON is streamed to disk case by case, so the peak
memory stays flat with the number of cases either way.

    .venv/bin/python bench/compare_scaling.py [GOLDEN_DIR] [--counts 1 10 100 1000] [--workers 2]
        [--states cold-exact cold-envelopes warm-envelopes] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Seconds between two samples of the run's memory (see the module docstring).
POLL_S = 0.25
STATES = ("cold-exact", "cold-envelopes", "warm-envelopes")


def golden_cases(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/manifest.json"))


def make_set(sources: list[Path], count: int, dest: Path) -> Path:
    """``count`` cases cycling over ``sources``: distinct folder names and case ids."""
    dest.mkdir(parents=True)
    for i in range(count):
        src = sources[i % len(sources)]
        manifest = json.loads((src / "manifest.json").read_text())
        case_id = f"{manifest['case']}_{i:04d}"
        manifest["case"] = case_id
        d = dest / case_id
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for name in os.listdir(src):
            if name != "manifest.json":
                (d / name).symlink_to((src / name).resolve())
    return dest


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(case_dir: Path, workers: int, cache: Path, exact: bool, json_out: str = "") -> dict:
    """One compare subprocess, measured (called in a fresh measuring process per run, so
    RUSAGE_CHILDREN is this run's own)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    exe = Path(sys.executable).with_name("clnfdiag")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "clnfdiag.cli"]) + [
        "compare", str(case_dir), "--mode", "both", "--quiet", "--workers", str(workers)]
    if exact:
        cmd.append("--exact")
    if json_out:
        cmd += ["--json", json_out]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.nice(19)  # this measuring process only (a fresh one per run): the run keeps its priority
    peak_pss = 0
    while proc.poll() is None:
        peak_pss = max(peak_pss, sum(_pss_kb(p) for p in _tree(proc.pid)))
        time.sleep(POLL_S)
    dt = time.perf_counter() - t0
    err = proc.stderr.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": dt, "cpu": cpu, "pss_mb": peak_pss / 1024.0, "rss_mb": after.ru_maxrss / 1024.0,
            "rc": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("golden", nargs="?", type=Path, default=REPO / "golden")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--workers", type=int, nargs="+", default=[len(os.sched_getaffinity(0))])
    ap.add_argument("--states", nargs="+", choices=STATES, default=list(STATES))
    ap.add_argument("--json", action="store_true", help="each run also writes compare --json (a temporary file)")
    args = ap.parse_args(argv)
    sources = golden_cases(args.golden)
    if not sources:
        print(f"compare_scaling: no golden cases under {args.golden}", file=sys.stderr)
        return 2
    print(f"# {len(sources)} golden case(s) from {args.golden}; compare --mode both --quiet; BLAS 1 thread"
          f"{'; --json' if args.json else ''}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clnfdiag-scaling-") as tmp:
        for workers in args.workers:
            for count in sorted(args.counts):
                case_dir = Path(tmp) / f"n{count}"
                if not case_dir.exists():
                    make_set(sources, count, case_dir)
                for state in args.states:
                    # cold: a fresh cache folder; warm: the one the cold envelope run filled.
                    cache = Path(tmp) / f"cache-{workers}-{count}-{'exact' if state == 'cold-exact' else 'env'}"
                    json_out = str(Path(tmp) / "out.json") if args.json else ""
                    if state == "warm-envelopes" and not cache.exists():
                        _one(case_dir, workers, cache, False, json_out)  # fill it (not reported)
                    r = _one(case_dir, workers, cache, state == "cold-exact", json_out)
                    rows.append((count, workers, state, r))
                    print(f"cases {count:>5}  workers {workers}  {state:15s} {r['wall']:8.2f} s wall "
                          f"{r['cpu']:8.2f} s CPU  {count / r['wall']:6.1f} cases/s  "
                          f"{r['wall'] / (2 * count) * 1e3:6.1f} ms/comparison  PSS {r['pss_mb']:6.0f} MB  "
                          f"max RSS {r['rss_mb']:5.0f} MB  exit {r['rc']}  (load {os.getloadavg()[0]:.2f})",
                          flush=True)
    print("\n| cases | workers | cache | wall s | CPU s | cases/s | ms/comparison | peak PSS MB (tree) | "
          "peak RSS MB (largest process) | exit |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for count, workers, state, r in rows:
        print(f"| {count} | {workers} | {state} | {r['wall']:.2f} | {r['cpu']:.2f} | {count / r['wall']:.1f} | "
              f"{r['wall'] / (2 * count) * 1e3:.1f} | {r['pss_mb']:.0f} | {r['rss_mb']:.0f} | {r['rc']} |")
    return 0


def _one(case_dir: Path, workers: int, cache: Path, exact: bool, json_out: str = "") -> dict:
    """:func:`run` in a fresh measuring process."""
    out = subprocess.run([sys.executable, __file__, "--_one", str(case_dir), str(workers), str(cache),
                          "1" if exact else "0", json_out], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--_one":
        print(json.dumps(run(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5] == "1",
                             sys.argv[6])))
        sys.exit(0)
    sys.exit(main())
