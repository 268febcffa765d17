"""The compiled bilinear warp of the areas of interest against OpenCV's ``warpAffine`` itself.

:func:`clnfdiag.experts.extract_areas` computes OpenCV's ``WarpAffineInvoker`` /
``remapBilinear`` arithmetic (fixed-point coordinates in 1/1024 and 1/32 px, the
float32 tap weights, zero constant border) for every landmark in one compiled call;
OpenCV is the oracle here: every output bit must equal ``cv2.warpAffine``'s, inside
the image, across its borders and wholly outside it, for the similarity transforms
the fit makes (any scale and rotation) and for areas placed on 1/32-px ties.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from clnfdiag.experts import extract_areas

F32 = np.float32


def _cv2_areas(gray, landmarks, sim, idx, side):
    a1, b1 = F32(sim[0, 0]), F32(-sim[0, 1])
    half = (F32(side) - F32(1)) / F32(2)
    out = []
    for i in idx:
        x, y = landmarks[i]
        m = np.array([[a1, -b1, x - a1 * half + b1 * half],
                      [b1, a1, y - a1 * half - b1 * half]], F32)
        out.append(cv2.warpAffine(gray, m, (side, side), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0))
    return np.stack(out)


@pytest.mark.parametrize("seed", range(6))
def test_warp_matches_opencv_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(40, 500)), int(rng.integers(40, 700))
    gray = rng.integers(0, 256, (h, w)).astype(F32)
    n = 68
    for trial in range(40):
        scale = 10 ** rng.uniform(-1.5, 1.2)
        theta = rng.uniform(-np.pi, np.pi) if trial % 2 else rng.uniform(-0.5, 0.5)
        sim = np.array([[scale * np.cos(theta), -scale * np.sin(theta)],
                        [scale * np.sin(theta), scale * np.cos(theta)]], F32)
        lm = np.stack([rng.uniform(-40, w + 40, n), rng.uniform(-40, h + 40, n)], 1).astype(F32)
        if trial % 3 == 0:                      # on 1/32 and 1/64 px grid points: rounding ties
            lm = (np.round(lm * 64) / 64).astype(F32)
        side = int(rng.choice([13, 15, 17, 19, 21, 23, 25]))
        idx = np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False))
        got = extract_areas(gray, lm, sim, idx, side)
        want = _cv2_areas(gray, lm, sim, idx, side)
        assert got.dtype == F32 and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_warp_wholly_outside_and_tiny_image():
    gray = np.arange(12, dtype=F32).reshape(3, 4)
    sim = np.eye(2, dtype=F32)
    lm = np.array([[-100, -100], [1.5, 1.0], [3.9, 2.9], [500, 2]], F32)
    got = extract_areas(gray, lm, sim, np.arange(4), 7)
    np.testing.assert_array_equal(got.view(np.uint32),
                                  _cv2_areas(gray, lm, sim, range(4), 7).view(np.uint32))
    assert not got[0].any() and not got[3].any()
