"""The C library's math functions as the goldens' build called them, for compiled code.

OpenFace writes ``sin(float)``, ``asin(float)``, ``atan2(float, float)`` ...; the
goldens' build (GCC, glibc) called the single-precision ``sinf``, ``cosf``,
``asinf``, ``atan2f``; ``cv::Rodrigues`` calls the float64 ``cos``, ``sin``,
``acos``. numba lowers ``math.sin`` of a float32 to a call of the C library's
``sinf`` (``sincosf`` when sine and cosine of one argument are both taken) and
of a float64 to ``sin``/``cos``/``sincos``, so these wrappers are those calls.

Are those calls CPU-independent? glibc 2.36 (this project's C library, and the
goldens' Debian one) selects some functions at load time (IFUNC) between a variant
compiled with FMA/AVX2 (the one the goldens' Xeon and this EPYC run) and a baseline
one: ``sinf``, ``cosf``, ``sincosf``, ``expf`` and the float64 ``sin``, ``cos``,
``sincos``, ``acos`` are IFUNC symbols of ``libm.so.6``; ``asinf`` and ``atan2f``
are not (one baseline build for every CPU). Measured on this machine by comparing a
default process with one started under ``GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4``
(the 2.36 spelling; ``ld.so --list-diagnostics`` shows the FMA and AVX2 bits
cleared; the ``*_Usable`` names of older glibc are ignored), per-chunk digests of
every output, then the differing chunks dumped:

* ``sinf``, ``cosf``, ``sincosf``, ``asinf``, ``expf`` over all 2**32 inputs. The
  variants differ by 1 ulp on 12 ``sinf`` inputs (all ``|x| >= 53.42``), 22 ``cosf``
  inputs (all ``|x| >= 17.28``; ``sincosf`` the union) and 2 ``expf`` inputs
  (``x = 32.564632`` and ``x = -63.09946``); ``asinf`` never. The angles given to
  ``sinf``/``cosf`` here come from ``asinf``/``atan2f`` (|x| <= pi), so for these
  uses the calls are CPU-independent. In both processes numba's call equals ctypes'
  ``sinf`` (etc.) on all 2**32 inputs, and ``sincosf`` equals ``(sinf, cosf)``.
* ``atan2f``: 2**28 argument pairs (half in [-2, 2]^2, half random bit patterns):
  identical (no IFUNC: one build).
* float64 ``sin``, ``cos`` (``cv::Rodrigues``' angle, 2**23 arguments in [0, 3.5]
  and [0, 0.2]) and ``acos`` (2**23 in [-1, 1] and near 1): the variants differ by
  1 ulp on 0.09 %, 0.04 % and 0.015 % of the arguments. Rodrigues rounds its result
  to float32: over 2**21 random parameter updates (:func:`~clnfdiag.rotation.compose_rotation_nb`)
  and 2**21 Rodrigues round trips not one float32 output differed between the
  variants, but on a CPU without FMA/AVX2 one could in principle round differently;
  only a port of glibc's IBM routines with the FMA contractions of the Debian build
  would remove that.

These wrappers therefore call the C library (no port), with one exception: the
two ``expf`` arguments on which the variants differ are pinned to the FMA
variant's value (the one the goldens' Xeon computed), so ``expf`` gives the same
bits on every CPU for every float32 argument. The tests re-check numba against
ctypes on a sample and the pins against the FMA variant. Another C library (musl, macOS, Windows) or another
glibc version is not covered by this evidence.
"""
from __future__ import annotations

import math

import numpy as np

from .fma import njit_np

__all__ = ["sinf", "cosf", "asinf", "atan2f", "expf", "sin", "cos", "acos", "exp", "log",
           "EXPF_PINNED"]

#: ``expf`` arguments (float32 bit patterns) on which glibc 2.36's FMA and baseline
#: variants differ, with the FMA variant's result: every other argument gives the
#: same bits on every x86-64 CPU (exhaustive comparison, see the module docstring).
EXPF_PINNED = {0x4202422F: 0x56FC9F1C,      # expf(32.564632) (baseline: 0x56FC9F1B)
               0xC27C65D9: 0x11FA2993}      # expf(-63.09946) (baseline: 0x11FA2992)
_PIN_X1, _PIN_Y1 = (np.array(list(EXPF_PINNED.items())[0], np.uint32).view(np.float32))
_PIN_X2, _PIN_Y2 = (np.array(list(EXPF_PINNED.items())[1], np.uint32).view(np.float32))


@njit_np
def sinf(x):
    """glibc ``sinf`` (float32)."""
    return math.sin(np.float32(x))


@njit_np
def cosf(x):
    """glibc ``cosf`` (float32)."""
    return math.cos(np.float32(x))


@njit_np
def asinf(x):
    """glibc ``asinf`` (float32)."""
    return math.asin(np.float32(x))


@njit_np
def atan2f(y, x):
    """glibc ``atan2f`` (float32)."""
    return math.atan2(np.float32(y), np.float32(x))


@njit_np
def expf(x):
    """glibc ``expf`` (float32), its FMA variant's value on every CPU (:data:`EXPF_PINNED`)."""
    x = np.float32(x)
    if x == _PIN_X1:
        return _PIN_Y1
    if x == _PIN_X2:
        return _PIN_Y2
    return math.exp(x)


@njit_np
def log(x):
    """glibc ``log`` (float64)."""
    return math.log(np.float64(x))


@njit_np
def exp(x):
    """glibc ``exp`` (float64)."""
    return math.exp(np.float64(x))


@njit_np
def sin(x):
    """glibc ``sin`` (float64)."""
    return math.sin(np.float64(x))


@njit_np
def cos(x):
    """glibc ``cos`` (float64)."""
    return math.cos(np.float64(x))


@njit_np
def acos(x):
    """glibc ``acos`` (float64)."""
    return math.acos(np.float64(x))
