"""Exact float32 numerics: the operation orders of the C++ reference's libraries, CPU-independent.

Every kernel here computes one library call of the golden build (OpenBLAS
0.3.21 with SkylakeX kernels, OpenCV 4.6, glibc's single-precision libm) in
fixed-order compiled code, so the result does not depend on which BLAS,
LAPACK or CPU runs it. The only primitives are IEEE operations: float32 and
float64 ``+ - * / sqrt`` (numba without fastmath never contracts them) and a
correctly rounded fused multiply-add (:func:`fma32`, :func:`fma64`, LLVM's
``llvm.fma`` intrinsic: a hardware FMA where the CPU has one, the C
library's correctly rounded ``fmaf``/``fma`` otherwise: the same bits).

This package imports nothing else from clnfdiag: it is the bottom layer.
"""
from .fma import fma32, fma64, njit, njit_np

__all__ = ["fma32", "fma64", "njit", "njit_np"]
