"""Time and peak memory of ``clnfdiag compare`` over 1, 10 and 100 cases.

The 10- and 100-case sets are made in a temporary folder from the golden
cases (``golden/`` by default): each copy is a folder with a distinct name
holding a manifest whose ``case`` id is made distinct too, and symlinks to the
original ``image.png`` and ``stages.npz`` (the image SHA-256 in the manifest
stays valid). Each run is ``clnfdiag compare DIR --mode both --quiet
--workers W`` in its own subprocess, with BLAS pinned to 1 thread; the wall
time and the peak RSS of the children (``ru_maxrss`` of RUSAGE_CHILDREN
measured around each run, so the largest process: the main one with
``--workers 1``, the largest of main and workers with ``--workers 2``) are
printed as a table. The comparator streams cases, so memory should stay flat
as the case count grows.

    .venv/bin/python bench/compare_scaling.py [GOLDEN_DIR] [--counts 1 10 100] [--workers 1 2]
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


def golden_cases(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/manifest.json"))


def make_set(sources: list[Path], count: int, dest: Path) -> Path:
    """``count`` cases cycling over ``sources``: distinct folder names and case ids."""
    dest.mkdir(parents=True)
    for i in range(count):
        src = sources[i % len(sources)]
        manifest = json.loads((src / "manifest.json").read_text())
        case_id = f"{manifest['case']}_{i:03d}"
        manifest["case"] = case_id
        d = dest / case_id
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for name in os.listdir(src):
            if name != "manifest.json":
                (d / name).symlink_to((src / name).resolve())
    return dest


def run(case_dir: Path, workers: int) -> tuple[float, float, int]:
    """(seconds, peak child RSS MB, exit code) of one compare subprocess.

    Called in a fresh measuring process per run (``--_one``), so
    RUSAGE_CHILDREN's ru_maxrss is this run's own largest process.
    """
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    exe = Path(sys.executable).with_name("clnfdiag")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "clnfdiag.cli"]) + [
        "compare", str(case_dir), "--mode", "both", "--quiet", "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return dt, max(before, after) / 1024.0, proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("golden", nargs="?", type=Path, default=REPO / "golden")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    sources = golden_cases(args.golden)
    if not sources:
        print(f"compare_scaling: no golden cases under {args.golden}", file=sys.stderr)
        return 2
    print(f"# {len(sources)} golden case(s) from {args.golden}; compare --mode both --quiet; "
          f"BLAS 1 thread; peak RSS = max ru_maxrss of the compare process tree (each run "
          f"in a fresh subprocess)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clnfdiag-scaling-") as tmp:
        for workers in args.workers:
            for count in sorted(args.counts):
                # A fresh measuring process per run, so RUSAGE_CHILDREN is that run's own peak.
                case_dir = Path(tmp) / f"n{count}"
                if not case_dir.exists():
                    make_set(sources, count, case_dir)
                out = subprocess.run(
                    [sys.executable, __file__, "--_one", str(case_dir), str(workers)],
                    capture_output=True, text=True)
                dt, rss, rc = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append((count, workers, dt, rss, rc))
                print(f"cases {count:>4}  workers {workers}  {dt:7.2f} s  {dt / count * 1e3:7.0f} ms/case  "
                      f"peak RSS {rss:6.0f} MB  exit {rc}", flush=True)
    print("\n| cases | workers | wall s | ms/case | peak RSS MB | exit |")
    print("|---:|---:|---:|---:|---:|---:|")
    for count, workers, dt, rss, rc in rows:
        print(f"| {count} | {workers} | {dt:.2f} | {dt / count * 1e3:.0f} | {rss:.0f} | {rc} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_one":
        print(json.dumps(run(Path(sys.argv[2]), int(sys.argv[3]))))
        sys.exit(0)
    sys.exit(main())
