"""The fit does not depend on the CPU: identical trace bytes under other kernels and compilers.

Every golden case (main and hierarchical, committed and shared) is fitted in
isolated and propagated mode in subprocesses whose environment makes the
libraries pick other code paths, as another CPU would:

* ``OPENBLAS_CORETYPE`` = Prescott, Haswell, Zen (and SkylakeX where the CPU has
  AVX-512): the kernels of the OpenBLAS inside the numpy and opencv-python wheels;
* ``NUMBA_CPU_NAME=generic``: numba compiles for a generic x86-64 (no AVX, no FMA
  instruction), in a fresh cache;
* ``OPENCV_CPU_DISABLE``: OpenCV's dispatched SIMD paths switched off.

Each run must print the same SHA-256 per trace as a run in the inherited
environment. A fit that still called a CPU-dependent library on a value it
keeps would differ here (the OpenBLAS core type is checked to have changed).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from _models import models_root
from conftest import REPO, project_cases, shared_cases

WORKER = Path(__file__).with_name("_trace_digests.py")


def _has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _settings(tmp: Path) -> dict[str, dict[str, str]]:
    s = {f"OPENBLAS_CORETYPE={c}": {"OPENBLAS_CORETYPE": c} for c in ("Prescott", "Haswell", "Zen")}
    if _has_avx512():
        s["OPENBLAS_CORETYPE=SkylakeX"] = {"OPENBLAS_CORETYPE": "SkylakeX"}
    s["NUMBA_CPU_NAME=generic"] = {"NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp / "nb")}
    s["OPENCV_CPU_DISABLE"] = {"OPENCV_CPU_DISABLE":
                               "AVX512_SKX,AVX2,FMA3,AVX,POPCNT,SSE4_2,SSE4_1,SSSE3"}
    return s


def _cases() -> list[str]:
    seen, out = set(), []
    for d in project_cases() + shared_cases():
        if d.name not in seen:
            seen.add(d.name)
            out.append(str(d))
    return out


def _run(extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in extra}
    env.update(extra)
    env["OPENFACE_MODELS_DIR"] = str(models_root())
    proc = subprocess.run([sys.executable, str(WORKER), *_cases()], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    settings = {"inherited": {}} | _settings(tmp_path_factory.mktemp("determinism"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(settings, pool.map(_run, settings.values())))
    return results


def test_cases_are_covered(runs):
    digests = {k for k in runs["inherited"] if not k.startswith("_")}
    assert len(digests) == 3 * len(_cases()) >= 3 * len(project_cases())  # isolated, propagated, envelope


@pytest.mark.parametrize("setting", sorted(_settings(Path("/unused"))))
def test_trace_bytes_identical(runs, setting):
    base, other = runs["inherited"], runs[setting]
    if setting.startswith("OPENBLAS_CORETYPE="):
        core = setting.split("=", 1)[1].lower()
        assert any(core in a.lower() for a in other["_blas"]), (setting, other["_blas"])
    differ = sorted(k for k in base if not k.startswith("_") and base[k] != other.get(k))
    assert not differ, f"{setting}: traces differ from the inherited environment's: {differ}"
