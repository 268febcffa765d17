"""Fraction of CCNF response values bit-identical to the C++ goldens, per stage.

Each pass's golden ``area_of_interest`` is fed to the patch experts. For every
stage the values of the visible landmarks are compared bit for bit with the
golden dump; ``chained`` runs the three stages on our own outputs, ``isolated``
feeds each stage the golden output of the previous stage (post-Sigma from the
golden raw map, post-shift from the golden post-Sigma map), so a stage is
judged on its own arithmetic. The worst error is ``max|ours - golden|`` over
a map divided by that landmark's golden peak.

    .venv/bin/python bench/response_bits.py [--models DIR] [--per-window] [CASE_FOLDER_PARENT ...]

Default case folders: ``golden/``, ``../shared/golden``, ``../shared/golden-hierarchical``
(byte-identical cases are counted once).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from response_errors import case_dirs, main_experts  # noqa: E402

from clnfdiag.experts import shift_response, sigma_response  # noqa: E402

STAGES = (("raw", "response_raw"), ("sigma", "response_sigma"), ("response", "response"))


class Tally:
    def __init__(self) -> None:
        self.same = 0
        self.total = 0
        self.maps_same = 0
        self.maps = 0
        self.worst = 0.0
        self.where = ""

    def add(self, ours: np.ndarray, gold: np.ndarray, where: str, landmarks: np.ndarray) -> None:
        ours = np.asarray(ours, np.float32)
        gold = np.asarray(gold, np.float32)
        eq = ours.view(np.uint32) == gold.view(np.uint32)
        self.same += int(eq.sum())
        self.total += eq.size
        self.maps_same += int(eq.all(axis=(1, 2)).sum())
        self.maps += eq.shape[0]
        rel = (np.abs(ours.astype(np.float64) - gold).max(axis=(1, 2))
               / np.abs(gold.astype(np.float64)).max(axis=(1, 2)))
        i = int(np.argmax(rel))
        if rel[i] > self.worst:
            self.worst = float(rel[i])
            self.where = f"{where} landmark {landmarks[i]}"

    def row(self, label: str) -> str:
        frac = self.same / max(self.total, 1)
        mfrac = self.maps_same / max(self.maps, 1)
        return (f"{label:<20}{frac:>10.4%}{mfrac:>12.2%}{self.worst:>12.2e}  {self.where}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("parents", nargs="*", type=Path)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--per-window", action="store_true", help="also break the figures down per window size")
    args = ap.parse_args()
    loaded = main_experts(args.models, "response_bits")
    if loaded is None:
        return 2
    experts, model_dir = loaded
    parents = args.parents or [REPO / "golden", SHARED / "golden", SHARED / "golden-hierarchical"]
    cases, dup = case_dirs(parents)

    tallies: dict[tuple[str, str, int], Tally] = {}

    def tally(mode: str, stage: str, w: int) -> Tally:
        return tallies.setdefault((mode, stage, w), Tally())

    n_passes = 0
    for case in cases:
        name = f"{case.parent.name}/{case.name}"
        with np.load(case / "stages.npz") as z:
            p = 0
            while f"pass{p}/area_of_interest" in z.files:
                scale, view = int(z[f"pass{p}/scale_index"]), int(z[f"pass{p}/view_id"])
                w = int(z[f"pass{p}/window_size"])
                out = experts.responses(z[f"pass{p}/area_of_interest"], scale, view)
                lm = out.landmarks
                gold = {key: z[f"pass{p}/{key}"][lm] for _, key in STAGES}
                where = f"{name} pass{p} (window {w})"
                bank = experts.bank(scale, view)
                iso = {
                    "raw": out.raw,
                    "sigma": sigma_response(bank, gold["response_raw"].astype(np.float32)),
                    "response": shift_response(gold["response_sigma"].astype(np.float32)),
                }
                for stage, key in STAGES:
                    for wk in (w, 0):
                        tally("chained", stage, wk).add(getattr(out, stage), gold[key], where, lm)
                        tally("isolated", stage, wk).add(iso[stage], gold[key], where, lm)
                n_passes += 1
                p += 1

    print("CCNF responses vs C++ goldens: bit-identical values (and whole maps), worst error / peak")
    print(f"{len(cases)} cases ({dup} byte-identical duplicates skipped), {n_passes} passes; "
          f"models: {model_dir}")
    windows = sorted({w for (_, _, w) in tallies if w})
    for mode in ("chained", "isolated"):
        print()
        print(f"[{mode}]")
        print(f"{'stage':<20}{'values':>10}{'maps':>12}{'worst':>12}  where")
        for stage, _ in STAGES:
            print(tallies[(mode, stage, 0)].row(stage))
        if args.per_window:
            for w in windows:
                for stage, _ in STAGES:
                    print(tallies[(mode, stage, w)].row(f"  w={w} {stage}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
