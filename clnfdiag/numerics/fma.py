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


#: Lanes of :func:`fma_chains_8x8`: 8 windows (one 256-bit float32 vector) by 8 neurons.
CHAIN_BLOCK = 8


def _fma_chains_8x8_typer(typingctx, cols, w8, b0, out):
    for arr in (cols, w8, out):
        if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"
                and arr.dtype == types.float32):
            return None
    if not isinstance(b0, types.Integer):
        return None
    sig = types.void(cols, w8, b0, out)

    def codegen(context, builder, signature, args):
        from numba.core import cgutils
        cols_v, w8_v, b0_v, out_v = args
        cols_a = context.make_array(signature.args[0])(context, builder, cols_v)
        w8_a = context.make_array(signature.args[1])(context, builder, w8_v)
        out_a = context.make_array(signature.args[3])(context, builder, out_v)
        f32 = ir.FloatType()
        i64 = ir.IntType(64)
        vec = ir.VectorType(f32, CHAIN_BLOCK)
        vptr = vec.as_pointer()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fma.v{CHAIN_BLOCK}f32")
        n_k = builder.extract_value(cols_a.shape, 0)
        row = builder.sdiv(builder.extract_value(cols_a.strides, 0), ir.Constant(i64, 4))
        b0 = context.cast(builder, b0_v, signature.args[2], types.int64)
        zero = ir.Constant(vec, [0.0] * CHAIN_BLOCK)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(CHAIN_BLOCK)]
        mask = ir.Constant(ir.VectorType(ir.IntType(32), CHAIN_BLOCK), [0] * CHAIN_BLOCK)
        with cgutils.for_range(builder, n_k) as loop:
            t = loop.index
            src = builder.gep(cols_a.data, [builder.add(builder.mul(t, row), b0)])
            col = builder.load(builder.bitcast(src, vptr), align=4)
            wrow = builder.mul(t, ir.Constant(i64, CHAIN_BLOCK))
            for j in range(CHAIN_BLOCK):
                w = builder.load(builder.gep(w8_a.data, [builder.add(wrow, ir.Constant(i64, j))]))
                ws = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), w,
                                                                   ir.Constant(ir.IntType(32), 0)),
                                            ir.Constant(vec, ir.Undefined), mask)
                acc = builder.load(accs[j])
                builder.store(builder.call(fma, [col, ws, acc]), accs[j])
        for j in range(CHAIN_BLOCK):
            dst = builder.gep(out_a.data, [ir.Constant(i64, j * CHAIN_BLOCK)])
            builder.store(builder.load(accs[j]), builder.bitcast(dst, vptr), align=4)
        return context.get_dummy_value()

    return sig, codegen


#: ``fma_chains_8x8(cols, w8, b0, out)``: ``out[j, l]`` = the float32 FMA chain
#: ``acc = fma(cols[t, b0 + l], w8[t, j], acc)`` over ``t = 0 .. K-1`` from +0, for
#: 8 neurons ``j`` and 8 windows ``l`` at once (compiled code only). ``cols`` (K, M)
#: float32 with C-contiguous rows and ``b0 + 8 <= M``, ``w8`` (K, 8) and ``out``
#: (8, 8) float32 C-contiguous. The 64 chains stay in vector registers (an
#: ``llvm.fma`` on 8-lane vectors: each lane one IEEE fusedMultiplyAdd, the same
#: bits as :func:`fma32` one by one, in hardware or the C library's ``fmaf``).
fma_chains_8x8 = intrinsic(_fma_chains_8x8_typer)


def _copy_f32x8_typer(typingctx, dst, dst_off, src, src_off):
    for arr in (dst, src):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
                and arr.dtype == types.float32):
            return None
    if not (isinstance(dst_off, types.Integer) and isinstance(src_off, types.Integer)):
        return None
    sig = types.void(dst, dst_off, src, src_off)

    def codegen(context, builder, signature, args):
        dst_v, doff_v, src_v, soff_v = args
        dst_a = context.make_array(signature.args[0])(context, builder, dst_v)
        src_a = context.make_array(signature.args[2])(context, builder, src_v)
        vptr = ir.VectorType(ir.FloatType(), CHAIN_BLOCK).as_pointer()
        doff = context.cast(builder, doff_v, signature.args[1], types.int64)
        soff = context.cast(builder, soff_v, signature.args[3], types.int64)
        val = builder.load(builder.bitcast(builder.gep(src_a.data, [soff]), vptr), align=4)
        builder.store(val, builder.bitcast(builder.gep(dst_a.data, [doff]), vptr), align=4)
        return context.get_dummy_value()

    return sig, codegen


#: ``copy_f32x8(dst, dst_off, src, src_off)``: ``dst[dst_off:dst_off + 8] =
#: src[src_off:src_off + 8]`` for 1-D C-contiguous float32 arrays, as one 8-lane vector
#: load and store (compiled code only; no bounds check: both ranges must lie inside).
copy_f32x8 = intrinsic(_copy_f32x8_typer)

