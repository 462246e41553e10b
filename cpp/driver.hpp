// Runs a kernel over a list of tensors, split into fixed blocks.
//
// The tensors of one call are laid end to end in one element space; block b
// covers elements [b * kBlock, (b + 1) * kBlock) of it, across tensor edges.
// The blocks depend only on the tensor sizes, so a norm summed per block and
// then over the blocks in order gives the same bits for any thread count, and
// a list of a thousand small tensors costs a few dozen blocks, not a thousand
// tasks.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "lrfast/dispatch.hpp"
#include "lrfast/q8_tables.hpp"
#include "parallel.hpp"

namespace lrfast {

constexpr std::int64_t kBlock = 1 << 15;
// Below this many blocks one thread is faster than waking another.
constexpr std::int64_t kMinParallelBlocks = 4;

// Pointers of one call: per tensor, its param, grad and state arrays, and the
// running offsets of the tensors in the shared element space.
template <class T>
struct Batch {
    std::vector<T*> params;
    std::vector<const T*> grads;
    std::vector<T*> states[3];            // a vector per state slot; empty if unused
    std::vector<std::int64_t> offsets{0};  // offsets[t] .. offsets[t+1] is tensor t

    std::int64_t total() const { return offsets.back(); }
    std::int64_t blocks() const { return (total() + kBlock - 1) / kBlock; }
};

// Tensors whose arrays mix storages: per tensor, its param, grad and state
// operands (data nullptr where unused); T is the arithmetic type.
//
// A q8 or q4 block must be quantized by one thread, from all of its new
// values. So a tensor with such a state starts at a multiple of kQ8Block (of
// kQ4Block too) in the element space and takes a multiple of it (kBlock is one
// too): no block of the driver then cuts one of its blocks. The padding
// belongs to no tensor (pieces are clipped to the tensor's size) and depends
// only on the sizes and storages.
static_assert(kBlock % kQ8Block == 0, "driver blocks hold whole q8 blocks");
static_assert(kQ8Block % kQ4Block == 0, "a q8 block's alignment holds whole q4 blocks");

template <class T>
struct MixedBatch {
    std::vector<MixedTensor> tensors;
    std::vector<std::int64_t> offsets{0};  // offsets[t] .. offsets[t+1]: tensor t and its padding

    void push(const MixedTensor& tensor, bool low_bit) {
        auto round_up = [](std::int64_t v) { return (v + kQ8Block - 1) / kQ8Block * kQ8Block; };
        if (low_bit) offsets.back() = round_up(offsets.back());  // the previous tensor's padding
        tensors.push_back(tensor);
        offsets.push_back(offsets.back() + (low_bit ? round_up(tensor.size) : tensor.size));
    }
    std::int64_t total() const { return offsets.back(); }
    std::int64_t blocks() const { return (total() + kBlock - 1) / kBlock; }
};

// Calls piece(t, lo, hi) for the part [lo, hi) of each tensor t in block b.
template <class F>
void for_each_piece(const std::vector<std::int64_t>& offsets, std::int64_t b, F piece) {
    const std::int64_t begin = b * kBlock, end = std::min(begin + kBlock, offsets.back());
    // The first tensor whose end lies past `begin` (empty tensors are skipped).
    auto t = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
    for (; t + 1 < std::int64_t(offsets.size()) && offsets[t] < end; ++t) {
        const std::int64_t lo = std::max(begin, offsets[t]) - offsets[t];
        const std::int64_t hi = std::min(end, offsets[t + 1]) - offsets[t];
        if (hi > lo) piece(t, lo, hi);
    }
}

template <class P, class T>
void run_update(UpdateFn<P, T> kernel, const P& hp, const Batch<T>& batch) {
    parallel_for(batch.blocks(), kMinParallelBlocks, [&](std::int64_t b) {
        for_each_piece(batch.offsets, b, [&](std::int64_t t, std::int64_t lo, std::int64_t hi) {
            T* state[3];
            for (int k = 0; k < 3; ++k)
                state[k] = batch.states[k].empty() ? nullptr : batch.states[k][t] + lo;
            const T* grad = batch.grads[t] == nullptr ? nullptr : batch.grads[t] + lo;  // eval()
            kernel(hp, batch.params[t] + lo, grad, state, hi - lo);
        });
    });
}

// Calls piece(tensor, lo, n) for the part [lo, lo + n) of each tensor of a
// mixed batch in block b, padding left out.
template <class T, class F>
void for_each_mixed_piece(const MixedBatch<T>& batch, std::int64_t b, F piece) {
    for_each_piece(batch.offsets, b, [&](std::int64_t t, std::int64_t lo, std::int64_t hi) {
        const MixedTensor& tensor = batch.tensors[std::size_t(t)];
        hi = std::min(hi, tensor.size);
        if (hi > lo) piece(tensor, lo, hi - lo);
    });
}

template <class P, class T>
void run_update(MixedFn<P> kernel, const P& hp, const MixedBatch<T>& batch) {
    parallel_for(batch.blocks(), kMinParallelBlocks, [&](std::int64_t b) {
        for_each_mixed_piece(batch, b, [&](const MixedTensor& tensor, std::int64_t lo,
                                           std::int64_t n) { kernel(hp, tensor, lo, n); });
    });
}

// The bandwidth probe over the same arrays as an update: params and the
// states in use are read and written (or, `write` false, read), grads read.
template <class T>
void run_stream(void (*kernel)(T* const*, int, const T*, std::int64_t, bool),
                const Batch<T>& batch, bool write) {
    parallel_for(batch.blocks(), kMinParallelBlocks, [&](std::int64_t b) {
        for_each_piece(batch.offsets, b, [&](std::int64_t t, std::int64_t lo, std::int64_t hi) {
            T* x[4] = {batch.params[t] + lo};
            int k = 1;
            for (const auto& state : batch.states)
                if (!state.empty()) x[k++] = state[t] + lo;
            kernel(x, k, batch.grads[t] + lo, hi - lo, write);
        });
    });
}

template <class T>
void run_stream(void (*kernel)(const Operand*, std::int64_t, std::int64_t, bool),
                const MixedBatch<T>& batch, bool write) {
    parallel_for(batch.blocks(), kMinParallelBlocks, [&](std::int64_t b) {
        for_each_mixed_piece(batch, b, [&](const MixedTensor& tensor, std::int64_t lo,
                                           std::int64_t n) { kernel(tensor.x, lo, n, write); });
    });
}

// The p-norm of all elements of all tensors: per-block partials, then combined
// in block order. partial(t, lo, n) is a norm kernel on tensor t's [lo, lo + n).
template <class F>
double run_norm(const std::vector<std::int64_t>& offsets, NormKind kind, double p, F partial) {
    const std::int64_t n_blocks = (offsets.back() + kBlock - 1) / kBlock;
    // Reused by this thread's calls, so a step allocates nothing new. Workers
    // reach it through the reference (a thread_local named in the lambda would
    // be their own).
    thread_local std::vector<NormPartial> scratch;
    std::vector<NormPartial>& partials = scratch;
    partials.assign(std::size_t(n_blocks), NormPartial{0.0, 0});
    parallel_for(n_blocks, kMinParallelBlocks, [&](std::int64_t b) {
        NormPartial acc{0.0, 0};
        for_each_piece(offsets, b, [&](std::int64_t t, std::int64_t lo, std::int64_t hi) {
            const NormPartial part = partial(t, lo, hi - lo);
            acc.value = kind == NormKind::linf ? std::max(acc.value, part.value)
                                               : acc.value + part.value;
            acc.nans += part.nans;
        });
        partials[std::size_t(b)] = acc;
    });
    double total = 0.0;
    std::int64_t nans = 0;
    for (const NormPartial& part : partials) {
        total = kind == NormKind::linf ? std::max(total, part.value) : total + part.value;
        nans += part.nans;
    }
    if (nans > 0) return std::numeric_limits<double>::quiet_NaN();
    switch (kind) {
        case NormKind::l2: return std::sqrt(total);
        case NormKind::lp: return std::pow(total, 1.0 / p);
        default: return total;
    }
}

// Prodigy's sums over all tensors: per-block sums (its pieces' in order), then
// the blocks' in block order, so the bits depend only on the tensor sizes.
// block(b) returns block b's sums.
template <class F>
ProdigySums sum_blocks(std::int64_t n_blocks, F block) {
    thread_local std::vector<ProdigySums> scratch;  // as in run_norm
    std::vector<ProdigySums>& partials = scratch;
    partials.assign(std::size_t(n_blocks), ProdigySums{0.0, 0.0});
    parallel_for(n_blocks, kMinParallelBlocks,
                 [&](std::int64_t b) { partials[std::size_t(b)] = block(b); });
    ProdigySums total{0.0, 0.0};
    for (const ProdigySums& part : partials) {
        total.dot += part.dot;
        total.s_abs += part.s_abs;
    }
    return total;
}

// The reduction of a call's slices: the batch's element space is the slices'
// (a tensor counts ceil(size / slice_p) elements; states[0] is s, states[1] p0).
template <class T>
ProdigySums run_reduce(ProdigyReduceFn<T> kernel, const ProdigyReduceParams& hp,
                       const Batch<T>& batch) {
    const std::int64_t stride = std::int64_t(hp.slice_p);
    return sum_blocks(batch.blocks(), [&](std::int64_t b) {
        ProdigySums acc{0.0, 0.0};
        for_each_piece(batch.offsets, b, [&](std::int64_t t, std::int64_t lo, std::int64_t hi) {
            const ProdigySums part =
                kernel(hp, batch.params[t] + lo * stride, batch.grads[t] + lo * stride, stride,
                       batch.states[0][t] + lo, batch.states[1][t] + lo, hi - lo);
            acc.dot += part.dot;
            acc.s_abs += part.s_abs;
        });
        return acc;
    });
}

template <class T>
ProdigySums run_reduce(ProdigySums (*kernel)(const ProdigyReduceParams&, const MixedTensor&,
                                             std::int64_t, std::int64_t),
                       const ProdigyReduceParams& hp, const MixedBatch<T>& batch) {
    return sum_blocks(batch.blocks(), [&](std::int64_t b) {
        ProdigySums acc{0.0, 0.0};
        for_each_mixed_piece(batch, b, [&](const MixedTensor& tensor, std::int64_t lo,
                                           std::int64_t n) {
            const ProdigySums part = kernel(hp, tensor, lo, n);
            acc.dot += part.dot;
            acc.s_abs += part.s_abs;
        });
        return acc;
    });
}

// Applies an in-place elementwise kernel (scale, clamp) to every tensor:
// piece(t, lo, n) runs it on tensor t's [lo, lo + n).
template <class F>
void run_inplace(const std::vector<std::int64_t>& offsets, F piece) {
    const std::int64_t n_blocks = (offsets.back() + kBlock - 1) / kBlock;
    parallel_for(n_blocks, kMinParallelBlocks, [&](std::int64_t b) {
        for_each_piece(offsets, b, [&](std::int64_t t, std::int64_t lo, std::int64_t hi) {
            piece(t, lo, hi - lo);
        });
    });
}

}  // namespace lrfast
