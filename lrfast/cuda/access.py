"""How a thread reads and writes its elements: several at a time, loads first.

A thread with one element in flight per array waits a full memory latency
for each element, and its 4-byte loads need four times the instructions of
the 16-byte ones the fastest CUDA optimizers issue. So each thread of an
elementwise kernel takes ``ILP`` elements of a piece at a time (a *tile* of
``TILE = ILP * THREADS`` elements per block) and issues every load of the
tile, of every array it reads, before any arithmetic or store. Where all
arrays of a piece are aligned (the table's VECTOR column, set by the host),
thread t takes the tile's elements ``ILP * t ..`` ``ILP * t + ILP - 1``,
each array's ILP elements as one vector load and one vector store (16 bytes
for float32; two 16-byte accesses for float64); elsewhere, and for the
last, partial tile of a tensor, it takes the elements ``t, t + THREADS, ...``
(coalesced scalar accesses), those past the piece's end masked off.

Which thread updates an element changes nothing in an elementwise update:
every element goes through the same body with the same values, so the
results are bitwise those of one element per thread.

Numba has no vector loads of an array's elements: :func:`load_vector` and
:func:`store_vector` are LLVM intrinsics that access ``ILP`` elements as one
LLVM vector with the alignment the host checked, which NVVM emits as
``ld.global.v4.f32`` and ``st.global.v4.f32``. The simulator, which runs
kernels as Python and cannot run intrinsics, gets Python loops instead, and
a smaller ILP (2), so that its small pieces (16 elements) still hold whole
tiles next to partial ones.
"""

from __future__ import annotations

from numba import cuda, from_dtype

from . import launch

ILP, TILE = launch.ILP, launch.TILE
VECTOR_BYTES = 16  # the widest access a thread issues


def vector_alignment(itemsize: int) -> int:
    """The alignment, in bytes, that a vector access of ILP elements of
    `itemsize` bytes asks of an address: its size, up to VECTOR_BYTES."""
    return min(VECTOR_BYTES, ILP * itemsize)


if launch.SIMULATED:
    @cuda.jit(device=True)
    def load_vector(x, at, out):
        for j in range(ILP):
            out[j] = x[at + j]

    @cuda.jit(device=True)
    def store_vector(x, at, values):
        for j in range(ILP):
            x[at + j] = values[j]
else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    def _pointer(context, builder, array_type, array, index, index_type):
        """The address of element `index` of a 1-D array."""
        index = context.cast(builder, index, index_type, types.intp)
        struct = context.make_array(array_type)(context, builder, value=array)
        return cgutils.get_item_pointer(context, builder, array_type, struct, [index],
                                        wraparound=False)

    def _vector_of(context, array_type):
        """The LLVM vector type of ILP elements of the array, and its alignment."""
        element = context.get_value_type(array_type.dtype)
        return ir.VectorType(element, ILP), vector_alignment(context.get_abi_sizeof(element))

    @intrinsic
    def load_vector(typingctx, x, at, out):
        """Elements ``at .. at + ILP - 1`` of `x` into the local array `out`,
        as one vector load; ``at`` must be aligned (vector_alignment)."""
        def codegen(context, builder, sig, args):
            x_type, at_type, out_type = sig.args
            vector_type, align = _vector_of(context, x_type)
            address = _pointer(context, builder, x_type, args[0], args[1], at_type)
            vector = builder.load(builder.bitcast(address, vector_type.as_pointer()),
                                  align=align)
            for j in range(ILP):
                element = builder.extract_element(vector, ir.Constant(ir.IntType(32), j))
                builder.store(element, _pointer(context, builder, out_type, args[2],
                                                context.get_constant(types.intp, j), types.intp))
            return context.get_dummy_value()

        return types.void(x, at, out), codegen

    @intrinsic
    def store_vector(typingctx, x, at, values):
        """The local array `values` into elements ``at .. at + ILP - 1`` of
        `x`, as one vector store; ``at`` must be aligned (vector_alignment)."""
        def codegen(context, builder, sig, args):
            x_type, at_type, values_type = sig.args
            vector_type, align = _vector_of(context, x_type)
            vector = ir.Constant(vector_type, ir.Undefined)
            for j in range(ILP):
                element = builder.load(_pointer(context, builder, values_type, args[2],
                                                context.get_constant(types.intp, j), types.intp))
                vector = builder.insert_element(vector, element, ir.Constant(ir.IntType(32), j))
            address = _pointer(context, builder, x_type, args[0], args[1], at_type)
            builder.store(vector, builder.bitcast(address, vector_type.as_pointer()), align=align)
            return context.get_dummy_value()

        return types.void(x, at, values), codegen


PARAM, GRAD, STATE = 1, 2, 3  # table columns: the order of the call's arrays


def tiles(body, states, stores, grad, dtype):
    """``(vector, strided)``: device functions ``f(x, piece, i, n, k)`` that
    run ``body(p, g, s0, s1, s2, k) -> (p, s0, s1, s2)`` on one thread's ILP
    elements of a piece of `x` (an array of `dtype`, the call's storage
    dtype): ``vector`` on elements ``i .. i + ILP - 1`` of a whole tile of an
    aligned piece (``i`` a multiple of ILP), ``strided`` on elements ``i, i +
    THREADS, ...`` below ``n``. They load the param, the gradient if `grad`
    and the state slots flagged in `states`, and store the param and the
    slots flagged in `stores`. An unused slot's offset is 0, and ``x`` may
    span gaps between allocations: it is never read, not even by a load the
    compiler could drop; the body gets a zero."""
    use0, use1, use2 = states
    store0, store1, store2 = stores
    element = from_dtype(dtype)

    @cuda.jit(device=True)
    def apply(ps, gs, s0, s1, s2, j, k):
        """The body on element j of the loaded arrays, in place."""
        zero = ps[j] * 0  # of the dtype; never stored, so a NaN from inf * 0 is harmless
        ps[j], s0[j], s1[j], s2[j] = body(ps[j], gs[j] if grad else zero,
                                          s0[j] if use0 else zero, s1[j] if use1 else zero,
                                          s2[j] if use2 else zero, k)

    @cuda.jit(device=True)
    def vector(x, piece, i, n, k):
        ps, gs = cuda.local.array(ILP, element), cuda.local.array(ILP, element)
        s0, s1 = cuda.local.array(ILP, element), cuda.local.array(ILP, element)
        s2 = cuda.local.array(ILP, element)
        load_vector(x, piece[PARAM] + i, ps)
        if grad:
            load_vector(x, piece[GRAD] + i, gs)
        if use0:
            load_vector(x, piece[STATE] + i, s0)
        if use1:
            load_vector(x, piece[STATE + 1] + i, s1)
        if use2:
            load_vector(x, piece[STATE + 2] + i, s2)
        for j in range(ILP):
            apply(ps, gs, s0, s1, s2, j, k)
        store_vector(x, piece[PARAM] + i, ps)
        if store0:
            store_vector(x, piece[STATE] + i, s0)
        if store1:
            store_vector(x, piece[STATE + 1] + i, s1)
        if store2:
            store_vector(x, piece[STATE + 2] + i, s2)

    @cuda.jit(device=True)
    def strided(x, piece, i, n, k):
        ps, gs = cuda.local.array(ILP, element), cuda.local.array(ILP, element)
        s0, s1 = cuda.local.array(ILP, element), cuda.local.array(ILP, element)
        s2 = cuda.local.array(ILP, element)
        for j in range(ILP):
            e = i + j * launch.THREADS
            if e < n:
                ps[j] = x[piece[PARAM] + e]
                if grad:
                    gs[j] = x[piece[GRAD] + e]
                if use0:
                    s0[j] = x[piece[STATE] + e]
                if use1:
                    s1[j] = x[piece[STATE + 1] + e]
                if use2:
                    s2[j] = x[piece[STATE + 2] + e]
        for j in range(ILP):
            e = i + j * launch.THREADS
            if e < n:
                apply(ps, gs, s0, s1, s2, j, k)
                x[piece[PARAM] + e] = ps[j]
                if store0:
                    x[piece[STATE] + e] = s0[j]
                if store1:
                    x[piece[STATE + 1] + e] = s1[j]
                if store2:
                    x[piece[STATE + 2] + e] = s2[j]

    return vector, strided
