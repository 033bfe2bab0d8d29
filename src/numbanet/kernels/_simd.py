"""Explicit SIMD vectors for Numba kernels (private; used by the GEMM micro-kernel).

Numba 0.68 does not run LLVM's SLP vectorizer, so a hand-unrolled register tile of
scalar accumulators stays scalar. This module adds a small vector value type,
:class:`SimdVec`, lowered to an LLVM ``<lanes x float|double>`` value, and a handful of
intrinsics (built with :func:`numba.extending.intrinsic`) that emit LLVM vector loads,
stores, broadcasts and ``llvm.fma.*`` directly. A kernel written with them keeps its
accumulators in vector registers, which is what the GEMM needs.

Vectors are 512 bits wide (16 x float32, 8 x float64). On a CPU without AVX-512, LLVM
legalises them into pairs of 256-bit (or 128-bit) operations, so results stay correct
everywhere; only speed depends on the CPU.

LLVM's x86 backend splits 512-bit vectors into two 256-bit halves in any function that
does not carry the ``"min-legal-vector-width"="512"`` attribute when the CPU prefers
256-bit vectors (the default tuning of every AVX-512 Intel core). Clang sets that
attribute on functions using 512-bit intrinsics; our intrinsics do the same on the
Numba function they are lowered into.

All intrinsics index arrays by a flat element offset with no bounds check and no
negative-index wraparound: callers guarantee ``0 <= i`` and ``i + lanes <= arr.size``.
The arrays must be C-contiguous.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = [
    "LANES_FLOAT32",
    "LANES_FLOAT64",
    "SimdVec",
    "vadd",
    "vbroadcast",
    "vfma",
    "vlanes",
    "vload",
    "vstore",
    "vzero",
]

# 512-bit vectors: one zmm register on AVX-512, two ymm registers on AVX2.
_VECTOR_BITS = 512
LANES_FLOAT32 = _VECTOR_BITS // 32
LANES_FLOAT64 = _VECTOR_BITS // 64
_MIN_LEGAL_WIDTH_ATTR = f'"min-legal-vector-width"="{_VECTOR_BITS}"'


class SimdVec(types.Type):
    """A fixed-width SIMD vector of ``lanes`` float32 or float64 values."""

    def __init__(self, dtype: types.Float, lanes: int) -> None:
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"SimdVec({dtype}x{lanes})")


@register_model(SimdVec)
class _SimdVecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.lanes))


def _vec_type_for(dtype: types.Type) -> SimdVec:
    if dtype == types.float32:
        return SimdVec(types.float32, LANES_FLOAT32)
    if dtype == types.float64:
        return SimdVec(types.float64, LANES_FLOAT64)
    raise TypeError(f"SIMD vectors support float32 and float64, got {dtype}")


def _allow_wide_vectors(builder: ir.IRBuilder) -> None:
    # See the module docstring: without this, LLVM splits every 512-bit op in two.
    attrs = builder.function.attributes
    if _MIN_LEGAL_WIDTH_ATTR not in attrs:
        # llvmlite validates attribute names against a fixed list that lacks string
        # attributes; the set itself prints entries verbatim into the IR.
        set.add(attrs, _MIN_LEGAL_WIDTH_ATTR)


def _element_pointer(context, builder, arr_ty, arr, index):
    ary = context.make_array(arr_ty)(context, builder, arr)
    return builder.gep(ary.data, [index], inbounds=True)


def _check_array(arr):
    return isinstance(arr, types.Array) and arr.dtype in (types.float32, types.float64)


@intrinsic
def vload(typingctx, arr, index):
    """Load ``lanes`` consecutive elements ``arr.flat[index : index + lanes]``."""
    if not _check_array(arr) or not isinstance(index, types.Integer):
        return None
    vec_ty = _vec_type_for(arr.dtype)

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        ptr = _element_pointer(context, builder, arr, args[0], args[1])
        llvm_vec = context.get_value_type(vec_ty)
        vptr = builder.bitcast(ptr, llvm_vec.as_pointer())
        return builder.load(vptr, align=context.get_abi_sizeof(context.get_value_type(arr.dtype)))

    return vec_ty(arr, index), codegen


@intrinsic
def vstore(typingctx, arr, index, vec):
    """Store ``vec`` into ``arr.flat[index : index + lanes]``."""
    if not _check_array(arr) or not isinstance(index, types.Integer):
        return None
    if not isinstance(vec, SimdVec) or vec != _vec_type_for(arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        ptr = _element_pointer(context, builder, arr, args[0], args[1])
        llvm_vec = context.get_value_type(vec)
        vptr = builder.bitcast(ptr, llvm_vec.as_pointer())
        builder.store(args[2], vptr, align=context.get_abi_sizeof(
            context.get_value_type(arr.dtype)))
        return context.get_dummy_value()

    return types.none(arr, index, vec), codegen


@intrinsic
def vbroadcast(typingctx, arr, index):
    """All lanes set to ``arr.flat[index]`` (a broadcast load, folded into the FMA)."""
    if not _check_array(arr) or not isinstance(index, types.Integer):
        return None
    vec_ty = _vec_type_for(arr.dtype)

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        ptr = _element_pointer(context, builder, arr, args[0], args[1])
        scalar = builder.load(ptr)
        llvm_vec = context.get_value_type(vec_ty)
        one = builder.insert_element(ir.Constant(llvm_vec, ir.Undefined), scalar,
                                     ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vec_ty.lanes), [0] * vec_ty.lanes)
        return builder.shuffle_vector(one, ir.Constant(llvm_vec, ir.Undefined), mask)

    return vec_ty(arr, index), codegen


@intrinsic
def vzero(typingctx, like):
    """A vector of zeros with the dtype of the array ``like``."""
    if not _check_array(like):
        return None
    vec_ty = _vec_type_for(like.dtype)

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        return ir.Constant(context.get_value_type(vec_ty), None)

    return vec_ty(like), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane by lane, one rounding (``llvm.fma``)."""
    if not (isinstance(a, SimdVec) and a == b == c):
        return None
    suffix = f"v{a.lanes}f{a.dtype.bitwidth}"

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        llvm_vec = context.get_value_type(a)
        fnty = ir.FunctionType(llvm_vec, [llvm_vec, llvm_vec, llvm_vec])
        # Module.declare_intrinsic refuses vector types, hence the explicit declaration.
        fma = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.{suffix}")
        return builder.call(fma, args)

    return a(a, b, c), codegen


@intrinsic
def vadd(typingctx, a, b):
    """``a + b`` lane by lane."""
    if not (isinstance(a, SimdVec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        return builder.fadd(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vlanes(typingctx, like):
    """The number of lanes of a vector of ``like``'s dtype, as a compile-time constant."""
    if not _check_array(like):
        return None
    lanes = _vec_type_for(like.dtype).lanes

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(64), lanes)

    return types.intp(like), codegen
