"""Correctly rounded fused multiply-add for compiled kernels, and the one numba configuration.

OpenBLAS's x86-64 kernels accumulate with ``vfmadd`` (one rounding of
``a·b + c``). Emulating that as "exact product in double, add in double, round
to float" is wrong when the double sum lands exactly half-way between two
floats (double rounding), so the kernels call LLVM's ``llvm.fma`` intrinsic:
IEEE 754 fusedMultiplyAdd, which LLVM lowers to the FMA instruction or, on a
CPU without one (``NUMBA_CPU_NAME=generic``), to the C library's correctly
rounded ``fmaf``/``fma``. Both give the same bits by definition.
"""
from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: Compiled kernels: no fastmath (every operation is one IEEE rounding, never
#: contracted or reassociated), cached per machine, GIL released.
njit = numba.njit(cache=True, nogil=True)
#: The same with numpy's error model (division by zero gives inf/nan, no exception).
njit_np = numba.njit(cache=True, nogil=True, error_model="numpy")


def _fma_intrinsic(nbtype, irtype):
    def typer(typingctx, a, b, c):
        sig = nbtype(nbtype, nbtype, nbtype)

        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic(
                "llvm.fma", [irtype], ir.FunctionType(irtype, [irtype] * 3))
            return builder.call(fn, args)

        return sig, codegen
    return typer


#: ``fma32(a, b, c)``: float32 ``a·b + c`` with one rounding (arguments cast to float32).
fma32 = intrinsic(_fma_intrinsic(types.float32, ir.FloatType()))
fma32.__doc__ = "float32 a*b + c rounded once (IEEE fusedMultiplyAdd); compiled code only."
#: ``fma64(a, b, c)``: float64 ``a·b + c`` with one rounding.
fma64 = intrinsic(_fma_intrinsic(types.float64, ir.DoubleType()))
fma64.__doc__ = "float64 a*b + c rounded once (IEEE fusedMultiplyAdd); compiled code only."
