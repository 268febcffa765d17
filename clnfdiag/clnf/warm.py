"""Warm-up at model load: the first fit after loading costs what every later one does.

A fresh process pays, on its first fit, for loading every compiled kernel from
numba's cache (about 30 of them, some 10 ms each) and for the Sigma matrices of
the views and windows it meets (the emulated LAPACK inversions: 15–260 ms per
window). :func:`warm_up` pays that at load time instead, with a traced and an
untraced fit of a synthetic face image through the given fitter (main model and
the hierarchical part models: the synthetic face is large enough for them), so
the first fit of a caller, traced or not, is as fast as the steady state. The synthetic fit's result is
discarded; nothing it computes depends on the image except the Sigma sets of
the views it visits, which are the same for any image (they are per model).

The traced fit runs first, and that order matters: numba links a kernel's callees
into the kernel's own cached library, and a stage kernel loaded from the cache
*after* a fused kernel containing it (:mod:`clnfdiag.clnf.phase`,
``pdm._fit_landmarks_nb``) can find its run-time environment missing when called
from Python (``RuntimeError: In 'NRT_adapt_ndarray_to_python', 'descr' is NULL``,
seen with numba 0.68). Loading every stage kernel through its own entry point
first avoids it; ``tests/test_determinism.py``'s subprocesses (kernels loaded from
the cache) exercise that order.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..optimiser import kde_kernel_table
from ..parameters import preset
from ..processes import interrupts_deferred
from .loop import adapt_parameters

#: OpenFace's view 0: the frontal one, where every single-hypothesis fit starts.
FRONTAL_VIEW = 0
#: The presets whose frontal Sigma sets and KDE tables are built at load.
WARM_PRESETS = ("default", "wild")

#: Side of the synthetic image (px) and its face box: large enough for the part
#: models to run (their scale threshold), small enough to cost a few milliseconds.
WARM_IMAGE_SIDE = 320
WARM_BOX = (60.0, 70.0, 200.0, 200.0)


def synthetic_face() -> np.ndarray:
    """(WARM_IMAGE_SIDE, WARM_IMAGE_SIDE) uint8 smooth pattern (deterministic, no randomness):
    every window of it has a non-zero contrast, so no kernel takes a degenerate branch."""
    y, x = np.mgrid[0:WARM_IMAGE_SIDE, 0:WARM_IMAGE_SIDE].astype(np.float64)
    img = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 9.0) + 30 * np.sin((x + y) / 13.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def frontal_sigma_windows(presets=WARM_PRESETS) -> list[tuple[int, int]]:
    """``(scale, window)`` of every pass of the named presets, for the main model."""
    pairs = []
    for name in presets:
        for scale, ws in enumerate(preset(name).window_sizes):
            if ws and (scale, ws) not in pairs:
                pairs.append((scale, ws))
    return pairs


def _sigmas_and_tables(ops: Any, pairs: list[tuple[int, int]], presets=WARM_PRESETS) -> None:
    """The frontal Sigma sets of ``pairs`` and the KDE tables of the presets' passes."""
    for name in presets:
        p = preset(name)
        for scale, ws in enumerate(p.window_sizes[:len(ops.patch_scales)]):
            if ws:
                kde_kernel_table(adapt_parameters(p, ops.patch_scales, scale)[1], ws)
    for scale, ws in pairs:
        if scale < len(ops.patch_scales):
            ops.experts.bank(scale, FRONTAL_VIEW).sigma_t(ws)


def warm_up(fitter: Any, parameters: Any = "default") -> None:
    """Load-time work of a :class:`~clnfdiag.fitter.Fitter` of clnfdiag's own CLNF.

    The frontal view's Sigma sets and the KDE tables of every pass of the
    :data:`WARM_PRESETS` (what a first fit of either needs) are computed on a second thread
    (the compiled inversions release the GIL), while this thread runs a traced and then an
    untraced fit of :func:`synthetic_face` (results discarded) to load the compiled kernels
    of both paths; returns when both are done. A failure of the warm-up fit is ignored (it only saves
    time; a real fit reports its own errors); Ctrl-C during it is raised when it is done.
    """
    # Ctrl-C waits for the end of the warm-up (about a second): raised inside it, it can
    # leave llvmlite's lock held by this thread (numba loads kernels under it), and the
    # Sigma thread, loading its own, would wait for it for ever (seen).
    with interrupts_deferred():
        _warm_up(fitter, parameters)


def _warm_up(fitter: Any, parameters: Any) -> None:
    pairs = frontal_sigma_windows()
    for scale, _ in pairs:             # the banks are created here, not on two threads
        if scale < len(fitter.main.patch_scales):
            fitter.main.experts.bank(scale, FRONTAL_VIEW)
    worker = threading.Thread(target=_sigmas_and_tables, args=(fitter.main, pairs[::-1]),
                              name="clnfdiag-sigma-warm-up", daemon=True)
    worker.start()
    try:
        # Traced first: every stage's kernel is then loaded from numba's cache through its
        # own entry point before a fused kernel that contains it (see the module docstring).
        image = synthetic_face()
        fitter.fit(image, bbox=WARM_BOX, parameters=parameters, trace=True)
        fitter.fit(image, bbox=WARM_BOX, parameters=parameters)
    except Exception:       # noqa: BLE001 - an optimisation only: a real fit reports its own errors
        pass
    finally:
        worker.join()


__all__ = ["warm_up", "synthetic_face", "frontal_sigma_windows", "WARM_BOX", "WARM_IMAGE_SIDE",
           "FRONTAL_VIEW", "WARM_PRESETS"]
