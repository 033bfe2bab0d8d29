"""Explicit SIMD vectors for Numba kernels (private; the GEMM and Winograd register tiles,
the normalisations' sums).

Numba 0.68 does not run LLVM's SLP vectorizer, so a hand-unrolled register tile of
scalar accumulators stays scalar. This module adds a small vector value type,
:class:`SimdVec`, lowered to an LLVM ``<lanes x float|double>`` value, and a handful of
intrinsics (built with :func:`numba.extending.intrinsic`) that emit LLVM vector loads,
stores, broadcasts and ``llvm.fma.*`` directly. A kernel written with them keeps its
accumulators in vector registers, which is what the GEMM needs.

Vectors are 512 bits wide (16 x float32, 8 x float64) when Numba targets a CPU with
AVX-512, else 256 bits (8 x float32, 4 x float64). The width is fixed at import, from the
features Numba compiles for; it is a speed choice only: any width runs correctly on any
CPU, because LLVM legalises vectors wider than the target into several narrower ones.

Clang marks functions that use 512-bit intrinsics with ``"min-legal-vector-width"="512"``,
which tells LLVM's x86 backend never to narrow their vectors under the prefer-256-bit
tuning of AVX-512 Intel cores. Our intrinsics set the same attribute on the Numba
function they are lowered into, as a safeguard: with numba 0.68 (LLVM 22) explicit
512-bit IR stayed whole on the skylake-avx512, rocketlake and sapphirerapids targets
even without it.

All intrinsics index arrays by a flat element offset with no bounds check and no
negative-index wraparound: callers guarantee ``0 <= i`` and ``i + lanes <= arr.size``.
The arrays must be C-contiguous.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

__all__ = [
    "WIDE_VECTORS",
    "lanes_for",
    "LANES_FLOAT32",
    "LANES_FLOAT64",
    "SimdVec",
    "prefetch",
    "sload",
    "sstore",
    "transpose_copy",
    "vadd",
    "vcopy_masked",
    "vbroadcast",
    "vfma",
    "vkeep_where_positive",
    "vlanes",
    "vload",
    "vload_part",
    "vmul",
    "vrelu",
    "vsplat",
    "vstore",
    "vstore_part",
    "vsub",
    "vsum",
    "vzero",
]



def _target_has_avx512() -> bool:
    """Whether Numba compiles for a CPU with AVX-512F (honours ``NUMBA_CPU_FEATURES``)."""
    from numba.core import config

    from numbanet._target import apply_portable_target

    apply_portable_target()  # idempotent; the width must follow the level numbanet picks
    from numba.core.codegen import get_host_cpu_features

    features = config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    return "+avx512f" in features.split(",")


#: Whether the compile target has 32 512-bit registers (the GEMM picks its tile by this).
WIDE_VECTORS = _target_has_avx512()
# 512-bit vectors (one zmm register) with AVX-512; otherwise 256 bits (one ymm register
# on AVX2, two NEON registers on arm64). Any width is correct on any CPU (LLVM splits
# what the target lacks); the choice only keeps the register tile in registers.
_VECTOR_BITS = 512 if WIDE_VECTORS else 256
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
    # See the module docstring (what clang does for 512-bit intrinsics).
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


def _splat(context, builder, vec_ty, scalar):
    """A ``vec_ty`` vector with every lane ``scalar`` (insert, then a zero-mask shuffle)."""
    llvm_vec = context.get_value_type(vec_ty)
    one = builder.insert_element(ir.Constant(llvm_vec, ir.Undefined), scalar,
                                 ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vec_ty.lanes), [0] * vec_ty.lanes)
    return builder.shuffle_vector(one, ir.Constant(llvm_vec, ir.Undefined), mask)


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
        return _splat(context, builder, vec_ty, builder.load(ptr))

    return vec_ty(arr, index), codegen


@intrinsic
def vsplat(typingctx, value, like):
    """All lanes set to ``value``, a scalar of the array ``like``'s dtype."""
    if not _check_array(like) or value != like.dtype:
        return None
    vec_ty = _vec_type_for(like.dtype)

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        return _splat(context, builder, vec_ty, args[0])

    return vec_ty(value, like), codegen


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
def vsub(typingctx, a, b):
    """``a - b`` lane by lane."""
    if not (isinstance(a, SimdVec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        return builder.fsub(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vmul(typingctx, a, b):
    """``a * b`` lane by lane."""
    if not (isinstance(a, SimdVec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        return builder.fmul(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def vsum(typingctx, v):
    """The sum of ``v``'s lanes in a fixed tree: the upper half added to the lower half,
    lane by lane, until one lane is left (16 lanes: ``v[i] + v[i + 8]``, then ``+ 4``,
    ``+ 2``, ``+ 1``). Without ``reassoc`` in the kernel's flags the order is this one in
    every kernel that calls it, unlike a vectorized ``s += x[j]``, whose order LLVM
    picks per compilation."""
    if not isinstance(v, SimdVec):
        return None

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        vec = args[0]
        i32 = ir.IntType(32)
        n = v.lanes
        while n > 1:
            half = n // 2
            low = ir.Constant(ir.VectorType(i32, half), list(range(half)))
            high = ir.Constant(ir.VectorType(i32, half), list(range(half, n)))
            vec = builder.fadd(builder.shuffle_vector(vec, vec, low),
                               builder.shuffle_vector(vec, vec, high))
            n = half
        return builder.extract_element(vec, ir.Constant(i32, 0))

    return v.dtype(v), codegen


@intrinsic
def prefetch(typingctx, arr, index, locality):
    """Hint that ``arr.flat[index]``'s cache line is about to be written or read.

    ``locality`` is a literal int: 3 fetches into L1 (``prefetcht0``), 2 into L2
    (``prefetcht1``). A hint only: it never faults, and it changes no result.
    """
    if not _check_array(arr) or not isinstance(index, types.Integer):
        return None
    if not isinstance(locality, types.IntegerLiteral) or locality.literal_value not in (2, 3):
        return None
    level = locality.literal_value

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, arr, args[0], args[1])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, read=0, locality, data cache=1)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0),
                          ir.Constant(i32, level), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, index, locality), codegen


def _zero_where(builder, test, compare, value):
    """``0 where (test <compare> 0) else value``, lane by lane. The comparison is ordered:
    a NaN ``test`` lane compares false and keeps ``value``."""
    _allow_wide_vectors(builder)
    zero = ir.Constant(value.type, None)
    return builder.select(builder.fcmp_ordered(compare, test, zero), zero, value)


@intrinsic
def vrelu(typingctx, v):
    """``0 if v < 0 else v`` lane by lane (NaN lanes pass through, as ``numpy.maximum``)."""
    if not isinstance(v, SimdVec):
        return None

    def codegen(context, builder, sig, args):
        return _zero_where(builder, args[0], "<", args[0])

    return v(v), codegen


@intrinsic
def vkeep_where_positive(typingctx, z, g):
    """``0 if z <= 0 else g`` lane by lane: ReLU's backward pass (NaN ``z`` passes ``g``).

    Matches PyTorch's ``threshold_backward``: the derivative at 0 is 0.
    """
    if not (isinstance(z, SimdVec) and z == g):
        return None

    def codegen(context, builder, sig, args):
        return _zero_where(builder, args[0], "<=", args[1])

    return g(z, g), codegen


def lanes_for(dtype: object) -> int:
    """Lanes of a vector of ``dtype`` (a dtype or anything ``numpy.dtype`` takes), for
    Python code that sizes or plans kernels; :func:`vlanes` is the same number inside
    them."""
    return _VECTOR_BITS // (8 * np.dtype(dtype).itemsize)


def vlanes(like):
    """The number of lanes of a vector of ``like``'s dtype (a compile-time constant).

    A plain function with a Numba overload, so kernels that only need the lane count
    still run as ``kernel.py_func``.
    """
    return _VECTOR_BITS // (8 * like.dtype.itemsize)


@overload(vlanes)
def _vlanes_overload(like):
    if not _check_array(like):
        return None
    lanes = _vec_type_for(like.dtype).lanes
    return lambda like: lanes


@intrinsic
def sload(typingctx, arr, index):
    """``arr.flat[index]`` without bounds check or negative-index wraparound."""
    if not _check_array(arr) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_pointer(context, builder, arr, args[0], args[1]))

    return arr.dtype(arr, index), codegen


@intrinsic
def sstore(typingctx, arr, index, value):
    """``arr.flat[index] = value`` without bounds check or wraparound (value cast first)."""
    if not _check_array(arr) or not isinstance(index, types.Integer):
        return None
    if not isinstance(value, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[2], value, arr.dtype)
        builder.store(val, _element_pointer(context, builder, arr, args[0], args[1]))
        return context.get_dummy_value()

    return types.none(arr, index, value), codegen


def _lane_mask(builder, lanes, count):
    """``<lanes x i1>``: lane ``i`` is set when ``i < count`` (``count`` an i64)."""
    i32 = ir.IntType(32)
    lane_ids = ir.Constant(ir.VectorType(ir.IntType(64), lanes), list(range(lanes)))
    limit = builder.insert_element(ir.Constant(ir.VectorType(ir.IntType(64), lanes),
                                               ir.Undefined), count, ir.Constant(i32, 0))
    limit = builder.shuffle_vector(limit, ir.Constant(limit.type, ir.Undefined),
                                   ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
    return builder.icmp_signed("<", lane_ids, limit)


def _masked_load(context, builder, vec_ty, ptr, count, fill=None):
    """Load the first ``count`` lanes at ``ptr``; other lanes are ``fill``'s (zero
    without it), never read."""
    llvm_vec = context.get_value_type(vec_ty)
    lanes = vec_ty.lanes
    i32 = ir.IntType(32)
    mask = _lane_mask(builder, lanes, count)
    vptr = builder.bitcast(ptr, llvm_vec.as_pointer())
    fnty = ir.FunctionType(llvm_vec, [vptr.type, i32, mask.type, llvm_vec])
    name = f"llvm.masked.load.v{lanes}f{vec_ty.dtype.bitwidth}.p0"
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    align = context.get_abi_sizeof(context.get_value_type(vec_ty.dtype))
    passthru = ir.Constant(llvm_vec, None) if fill is None else fill
    return builder.call(fn, [vptr, ir.Constant(i32, align), mask, passthru])


def _masked_store(context, builder, vec_ty, value, ptr, count):
    """Store the first ``count`` lanes of ``value`` at ``ptr`` (``llvm.masked.store``)."""
    llvm_vec = context.get_value_type(vec_ty)
    lanes = vec_ty.lanes
    i32 = ir.IntType(32)
    mask = _lane_mask(builder, lanes, count)
    vptr = builder.bitcast(ptr, llvm_vec.as_pointer())
    fnty = ir.FunctionType(ir.VoidType(), [llvm_vec, vptr.type, i32, mask.type])
    name = f"llvm.masked.store.v{lanes}f{vec_ty.dtype.bitwidth}.p0"
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    align = context.get_abi_sizeof(context.get_value_type(vec_ty.dtype))
    builder.call(fn, [value, vptr, ir.Constant(i32, align), mask])


def _partial_vec_type(arr, index, count, vec):
    """Typing of :func:`vload_part` / :func:`vstore_part`: ``arr``'s vector type when
    ``index`` and ``count`` are integers and ``vec`` is that type, else ``None``."""
    if not _check_array(arr) or not isinstance(index, types.Integer):
        return None
    vec_ty = _vec_type_for(arr.dtype)
    if not isinstance(count, types.Integer) or vec != vec_ty:
        return None
    return vec_ty


def _partial_count_and_pointer(context, builder, sig, args):
    """``(count as i64, pointer to arr.flat[index])`` of a partial load or store."""
    _allow_wide_vectors(builder)
    n = context.cast(builder, args[2], sig.args[2], types.int64)
    return n, _element_pointer(context, builder, sig.args[0], args[0], args[1])


@intrinsic
def vload_part(typingctx, arr, index, count, fill):
    """``arr.flat[index : index + count]`` in the first ``count`` lanes (``count <=
    lanes``), ``fill``'s lanes in the others: a row's last partial vector, with lanes
    that add nothing (one masked load; elements past ``count`` are never read)."""
    vec_ty = _partial_vec_type(arr, index, count, fill)
    if vec_ty is None:
        return None

    def codegen(context, builder, sig, args):
        n, ptr = _partial_count_and_pointer(context, builder, sig, args)
        return _masked_load(context, builder, vec_ty, ptr, n, args[3])

    return vec_ty(arr, index, count, fill), codegen


@intrinsic
def vstore_part(typingctx, arr, index, count, vec):
    """The first ``count`` lanes of ``vec`` into ``arr.flat[index : index + count]``
    (``count <= lanes``); elements past ``count`` are not touched.

    With AVX-512, one masked store. Without it, one scalar store per lane below
    ``count``: AVX2's masked store (``vmaskmovps``) is microcoded on AMD's cores, and a
    layer norm over 20 float32 columns ran 1.3x slower with it than without the
    vectors."""
    vec_ty = _partial_vec_type(arr, index, count, vec)
    if vec_ty is None:
        return None

    def codegen(context, builder, sig, args):
        n, ptr = _partial_count_and_pointer(context, builder, sig, args)
        if WIDE_VECTORS:
            _masked_store(context, builder, vec_ty, args[3], ptr, n)
            return context.get_dummy_value()
        i64 = ir.IntType(64)
        for lane in range(vec_ty.lanes):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, lane), n)):
                builder.store(builder.extract_element(args[3], ir.Constant(i64, lane)),
                              builder.gep(ptr, [ir.Constant(i64, lane)]))
        return context.get_dummy_value()

    return types.none(arr, index, count, vec), codegen


@intrinsic
def transpose_copy(typingctx, src, s_off, s_stride, rows, dst, d_off, d_stride, width):
    """Copy a ``rows x lanes`` block of ``src`` transposed into ``dst``.

    Reads rows ``t < rows`` of ``lanes`` consecutive elements at
    ``src.flat[s_off + t * s_stride :]`` (``1 <= rows <= lanes``; missing rows are
    filled with copies of the last one, so no memory past the block is read) and writes
    ``dst.flat[d_off + c * d_stride + t] = src.flat[s_off + t * s_stride + c]`` for every
    ``c < lanes`` and ``t < width`` (``width <= lanes``, a masked store).

    This is the packing step that turns a row-major operand into the column panels the
    micro-kernel reads. The transpose is ``log2(lanes)`` rounds of two-input shuffles
    swapping off-diagonal half blocks, each of which LLVM lowers to one permute
    (``vpermt2ps`` on AVX-512), instead of ``lanes**2`` scalar moves.
    """
    if not (_check_array(src) and _check_array(dst) and src.dtype == dst.dtype):
        return None
    vec_ty = _vec_type_for(src.dtype)
    lanes = vec_ty.lanes

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        s_arr, s_off_v, s_stride_v, rows_v, d_arr, d_off_v, d_stride_v, width_v = args
        llvm_vec = context.get_value_type(vec_ty)
        align = context.get_abi_sizeof(context.get_value_type(vec_ty.dtype))
        intp = s_off_v.type
        rows_v = context.cast(builder, rows_v, sig.args[3], types.intp)
        width_v = context.cast(builder, width_v, sig.args[7], types.int64)
        last = builder.sub(rows_v, ir.Constant(intp, 1))
        vecs = []
        for t in range(lanes):
            row = builder.select(builder.icmp_signed("<", ir.Constant(intp, t), rows_v),
                                 ir.Constant(intp, t), last)
            idx = builder.add(s_off_v, builder.mul(row, s_stride_v))
            ptr = _element_pointer(context, builder, src, s_arr, idx)
            vecs.append(builder.load(builder.bitcast(ptr, llvm_vec.as_pointer()), align=align))
        half = lanes // 2
        while half >= 1:
            lo_mask = [lane if lane & half == 0 else lanes + lane - half for lane in range(lanes)]
            hi_mask = [lane + half if lane & half == 0 else lanes + lane for lane in range(lanes)]
            mask_ty = ir.VectorType(ir.IntType(32), lanes)
            for i in range(lanes):
                if i & half:
                    continue
                a, b = vecs[i], vecs[i + half]
                vecs[i] = builder.shuffle_vector(a, b, ir.Constant(mask_ty, lo_mask))
                vecs[i + half] = builder.shuffle_vector(a, b, ir.Constant(mask_ty, hi_mask))
            half //= 2
        for c in range(lanes):
            idx = builder.add(d_off_v, builder.mul(ir.Constant(intp, c), d_stride_v))
            ptr = _element_pointer(context, builder, dst, d_arr, idx)
            _masked_store(context, builder, vec_ty, vecs[c], ptr, width_v)
        return context.get_dummy_value()

    return types.none(src, s_off, s_stride, rows, dst, d_off, d_stride, width), codegen


@intrinsic
def vcopy_masked(typingctx, src, s_off, dst, d_off, count):
    """``dst.flat[d_off : d_off + count] = src.flat[s_off : s_off + count]``, ``count <= lanes``.

    One masked vector load and store: lanes past ``count`` are neither read nor written.
    """
    if not (_check_array(src) and _check_array(dst) and src.dtype == dst.dtype):
        return None
    vec_ty = _vec_type_for(src.dtype)

    def codegen(context, builder, sig, args):
        _allow_wide_vectors(builder)
        count = context.cast(builder, args[4], sig.args[4], types.int64)
        sptr = _element_pointer(context, builder, src, args[0], args[1])
        dptr = _element_pointer(context, builder, dst, args[2], args[3])
        value = _masked_load(context, builder, vec_ty, sptr, count)
        _masked_store(context, builder, vec_ty, value, dptr, count)
        return context.get_dummy_value()

    return types.none(src, s_off, dst, d_off, count), codegen
