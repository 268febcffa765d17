"""Worst CCNF response error per stage over all golden cases, relative to each landmark's golden peak.

Each pass's golden ``area_of_interest`` is fed to the patch experts; for every
visible landmark the error is ``max|ours - golden| / max|golden|`` over its map.

    .venv/bin/python bench/response_errors.py [--models DIR] [CASE_FOLDER_PARENT ...]

Default case folders: ``golden/``, ``../shared/golden``, ``../shared/golden-hierarchical``
(byte-identical cases are counted once). Models: ``--models``, else
``$OPENFACE_MODELS_DIR``, else ``../shared/OpenFaceModels``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from clnfdiag.errors import ClnfdiagError  # noqa: E402
from clnfdiag.experts import PatchExperts  # noqa: E402
from clnfdiag.models import load_model  # noqa: E402

STAGES = (("raw", "response_raw"), ("sigma", "response_sigma"), ("response", "response"))
TOL = 1e-5


def case_dirs(parents: list[Path]) -> tuple[list[Path], int]:
    seen: set[str] = set()
    out, dup = [], 0
    for parent in parents:
        if not parent.is_dir():
            continue
        for c in sorted(parent.iterdir()):
            npz = c / "stages.npz"
            if not npz.is_file():
                continue
            digest = hashlib.sha256(npz.read_bytes()).hexdigest()
            if digest in seen:
                dup += 1
                continue
            seen.add(digest)
            out.append(c)
    return out, dup


def main_experts(models: Path | None, prog: str) -> tuple[PatchExperts, Path] | None:
    """The main model's experts and model folder (``--models``, else
    $OPENFACE_MODELS_DIR, else ../shared), or None after printing the one-line
    error (the caller exits 2)."""
    if models is None and not os.environ.get("OPENFACE_MODELS_DIR"):
        models = SHARED / "OpenFaceModels"
    try:
        model = load_model(models, parts=False)
        return PatchExperts(model.main.scales), model.model_dir
    except ClnfdiagError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("parents", nargs="*", type=Path)
    ap.add_argument("--models", type=Path, default=None)
    args = ap.parse_args()
    loaded = main_experts(args.models, "response_errors")
    if loaded is None:
        return 2
    experts, model_dir = loaded
    parents = args.parents or [REPO / "golden", SHARED / "golden", SHARED / "golden-hierarchical"]
    cases, dup = case_dirs(parents)

    worst = {key: (0.0, "") for _, key in STAGES}
    per_window: dict[int, dict[str, float]] = {}
    per_case: list[tuple[str, list[float]]] = []
    n_passes = n_maps = 0
    for case in cases:
        name = f"{case.parent.name}/{case.name}"
        case_worst = [0.0] * len(STAGES)
        with np.load(case / "stages.npz") as z:
            p = 0
            while f"pass{p}/area_of_interest" in z.files:
                scale, view = int(z[f"pass{p}/scale_index"]), int(z[f"pass{p}/view_id"])
                w = int(z[f"pass{p}/window_size"])
                out = experts.responses(z[f"pass{p}/area_of_interest"], scale, view)
                n_passes += 1
                n_maps += len(out.landmarks)
                for k, (stage, key) in enumerate(STAGES):
                    gold = z[f"pass{p}/{key}"][out.landmarks].astype(np.float64)
                    rel = (np.abs(getattr(out, stage) - gold).max(axis=(1, 2))
                           / np.abs(gold).max(axis=(1, 2)))
                    i = int(np.argmax(rel))
                    if rel[i] > worst[key][0]:
                        worst[key] = (float(rel[i]), f"{name} pass{p} (window {w}) "
                                                     f"landmark {out.landmarks[i]}")
                    pw = per_window.setdefault(w, {})
                    pw[key] = max(pw.get(key, 0.0), float(rel[i]))
                    case_worst[k] = max(case_worst[k], float(rel[i]))
                p += 1
        per_case.append((name, case_worst))

    print("CCNF responses vs C++ goldens: max|ours - golden| / landmark's golden peak "
          f"(visible landmarks; target <= {TOL:g})")
    print(f"{len(cases)} cases ({dup} byte-identical duplicates skipped), {n_passes} passes, "
          f"{n_maps} landmark maps per stage; models: {model_dir}")
    print()
    print(f"{'stage':<16}{'worst':>10}  where")
    for _, key in STAGES:
        v, where = worst[key]
        print(f"{key:<16}{v:>10.2e}  {where}")
    print()
    print(f"{'window':<8}" + "".join(f"{key:>16}" for _, key in STAGES))
    for w in sorted(per_window):
        print(f"{w:<8}" + "".join(f"{per_window[w][key]:>16.2e}" for _, key in STAGES))
    print()
    print(f"{'case':<40}" + "".join(f"{key:>16}" for _, key in STAGES))
    for name, vals in per_case:
        print(f"{name:<40}" + "".join(f"{v:>16.2e}" for v in vals))
    ok = all(v <= TOL for v, _ in worst.values())
    print()
    print("all within target" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
