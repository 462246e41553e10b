// Runs Adafactor's passes (cpp/kernels/adafactor.cpp) over a list of tensors.
//
// Each tensor is cut into chunks that depend only on its shape: a factored
// one (matrices of rows x cols, the leading dims counted as `batch` of them)
// into runs of whole rows of one matrix, about kAdafactorChunk elements each
// and at most kAdafactorMatrixChunks a matrix (each chunk's column sums are
// added on their own: more chunks, more of that work); a full-variance one
// into runs of kAdafactorChunk elements. A chunk's sums are added in chunk
// order, and a chunk's column sums land in a scratch slice of its own, added
// per matrix in chunk order: every result has the bits of any thread count.
//
//   pass 1 (parallel over chunks): sum(p^2); the row factors updated from
//          the rows' sums of g^2, the columns' sums of g^2 and of g^2 / R;
//          or the full variance updated and sum(u^2);
//   host:  the column sums added (parallel over column blocks); the column
//          factors lerped; per row and column the reciprocal square roots
//          that make u; sum(u^2) of a matrix none of whose u is capped;
//   pass 2 (parallel, chunks of the other factored tensors): sum(u^2);
//   host:  scale = -max(eps2, RMS(p)) * rho / max(1, RMS(u) / d) per tensor;
//   pass 3 (parallel over chunks): p = p * decay + scale * u.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "lrfast/dispatch.hpp"
#include "parallel.hpp"

namespace lrfast {

constexpr std::int64_t kAdafactorChunk = 1 << 18;
constexpr std::int64_t kAdafactorMatrixChunks = 32;
// Chunks below this count run on the calling thread.
constexpr std::int64_t kAdafactorMinParallel = 2;

// p and g are nullptr where the param or grad is 16-bit: then `param` and
// `grad` say where it is, and each chunk runs on buffers widened from it (the
// param rounded back, to nearest even, after the update).
template <class T>
struct AdafactorTensor {
    T* p;
    const T* g;
    Operand param, grad;
    std::int64_t size;
    bool factored;
    std::int64_t batch, rows, cols;  // factored: batch matrices of rows x cols
    T* row_var;                      // factored: batch x rows
    T* col_var;                      // factored: batch x cols
    T* variance;                     // full: size
    double eps1;
};

namespace adafactor_detail {

struct Chunk {
    std::size_t t;
    std::int64_t b, lo, hi;   // rows [lo, hi) of matrix b, or elements [lo, hi)
    std::int64_t col_offset;  // factored: its column sums' slice of the scratch
};

// torch's clamp_(min=lo), a NaN kept.
template <class T>
T at_least(T x, T lo) {
    return x < lo ? lo : x;
}

// Python's max(a, b) with a float first: b unless b > a (a NaN b gives a).
inline double py_max(double a, double b) { return b > a ? b : a; }

// A chunk's param and grad, elements [first, first + n) of its tensor: the
// tensor's own memory, or this thread's buffers widened from 16 bits (the
// param only `with_param`).
template <class T>
struct ChunkArrays {
    T* p;
    const T* g;

    ChunkArrays(const AdafactorKernels<T>& k, const AdafactorTensor<T>& x, std::int64_t first,
                std::int64_t n, bool with_param) {
        thread_local std::vector<T> p_buffer, g_buffer;
        if (x.p != nullptr) {
            p = x.p + first;
        } else {
            p_buffer.resize(std::size_t(n));
            p = p_buffer.data();
            if (with_param) k.widen(x.param, first, n, p);
        }
        if (x.g != nullptr) {
            g = x.g + first;
        } else {
            g_buffer.resize(std::size_t(n));
            k.widen(x.grad, first, n, g_buffer.data());
            g = g_buffer.data();
        }
    }
};

}  // namespace adafactor_detail

// Column sums are added in blocks of this many columns, in parallel.
constexpr std::int64_t kAdafactorColumnBlock = 512;

template <class T>
void run_adafactor(const AdafactorKernels<T>& k, const AdafactorParams& hp,
                   const std::vector<AdafactorTensor<T>>& tensors) {
    using adafactor_detail::Chunk;
    // A factored tensor's matrix b: its chunks [first, last).
    struct Matrix {
        std::size_t t, first, last;
        std::int64_t b;
    };
    std::vector<Chunk> chunks;
    std::vector<Matrix> matrices;
    std::vector<std::size_t> first_chunk;  // per tensor, and one past the last
    std::vector<std::int64_t> row_offset;  // per tensor: its rows in row_rsqrt
    std::vector<std::int64_t> col_offset;  // per tensor: its columns in col_rsqrt
    std::int64_t n_rows = 0, n_cols = 0, n_col_rsqrt = 0;
    for (std::size_t t = 0; t < tensors.size(); ++t) {
        const AdafactorTensor<T>& x = tensors[t];
        first_chunk.push_back(chunks.size());
        row_offset.push_back(n_rows);
        col_offset.push_back(n_col_rsqrt);
        if (x.factored) {
            const std::int64_t step = std::max<std::int64_t>(
                {1, kAdafactorChunk / x.cols,
                 (x.rows + kAdafactorMatrixChunks - 1) / kAdafactorMatrixChunks});
            for (std::int64_t b = 0; b < x.batch; ++b) {
                matrices.push_back({t, chunks.size(), 0, b});
                for (std::int64_t lo = 0; lo < x.rows; lo += step) {
                    chunks.push_back({t, b, lo, std::min(lo + step, x.rows), n_cols});
                    n_cols += x.cols;
                }
                matrices.back().last = chunks.size();
            }
            n_rows += x.batch * x.rows;
            n_col_rsqrt += x.batch * x.cols;
        } else {
            for (std::int64_t lo = 0; lo < x.size; lo += kAdafactorChunk)
                chunks.push_back({t, 0, lo, std::min(lo + kAdafactorChunk, x.size), 0});
        }
    }
    first_chunk.push_back(chunks.size());
    const std::int64_t n_chunks = std::int64_t(chunks.size());
    if (n_chunks == 0) return;

    std::vector<double> p_sq(chunks.size()), u_sq(chunks.size());
    // The chunks' column sums of g^2, then of g^2 / R (2 MB for a 5000x4000
    // matrix), reused by this thread's calls rather than faulted in afresh;
    // workers reach it through the pointers (a thread_local named in the
    // lambda would be their own).
    thread_local std::vector<double> col_scratch;
    col_scratch.resize(std::size_t(2 * n_cols));
    double* const col_sums = col_scratch.data();
    double* const col_weights = col_sums + n_cols;

    // Pass 1.
    parallel_for(n_chunks, kAdafactorMinParallel, [&](std::int64_t i) {
        const Chunk& c = chunks[std::size_t(i)];
        const AdafactorTensor<T>& x = tensors[c.t];
        if (x.factored) {
            const std::int64_t first = (c.b * x.rows + c.lo) * x.cols;
            const adafactor_detail::ChunkArrays<T> a(k, x, first, (c.hi - c.lo) * x.cols, true);
            thread_local std::vector<T> run;
            run.resize(std::size_t(2 * x.cols));
            p_sq[std::size_t(i)] =
                k.rows(hp, a.p, a.g, c.hi - c.lo, x.cols, x.row_var + c.b * x.rows + c.lo,
                       col_sums + c.col_offset, col_weights + c.col_offset, run.data());
        } else {
            const adafactor_detail::ChunkArrays<T> a(k, x, c.lo, c.hi - c.lo, true);
            const AdafactorSums s = k.full(hp, a.p, a.g, x.variance + c.lo, c.hi - c.lo, x.eps1);
            p_sq[std::size_t(i)] = s.p_sq;
            u_sq[std::size_t(i)] = s.u_sq;
        }
    });

    // Each matrix's column sums, added into its first chunk's slices in chunk
    // order.
    std::vector<std::pair<std::size_t, std::int64_t>> blocks;  // (matrix, first column)
    for (std::size_t m = 0; m < matrices.size(); ++m)
        if (matrices[m].last - matrices[m].first > 1)
            for (std::int64_t lo = 0; lo < tensors[matrices[m].t].cols; lo += kAdafactorColumnBlock)
                blocks.push_back({m, lo});
    parallel_for(std::int64_t(blocks.size()), kAdafactorMinParallel, [&](std::int64_t i) {
        const Matrix& m = matrices[blocks[std::size_t(i)].first];
        const std::int64_t lo = blocks[std::size_t(i)].second;
        const std::int64_t hi = std::min(lo + kAdafactorColumnBlock, tensors[m.t].cols);
        for (double* sums : {col_sums, col_weights}) {
            double* total = sums + chunks[m.first].col_offset;
            for (std::size_t c = m.first + 1; c < m.last; ++c)
                for (std::int64_t j = lo; j < hi; ++j) total[j] += sums[chunks[c].col_offset + j];
        }
    });

    // Per matrix: the column factors from their sums; each row's
    // 1 / sqrt(R_i / rmean), rmean the mean of the row factors clamped at
    // eps1, and each column's 1 / sqrt(C_j); sum(u^2) where no u is capped.
    std::vector<T> row_rsqrt(static_cast<std::size_t>(n_rows));
    std::vector<T> col_rsqrt(static_cast<std::size_t>(n_col_rsqrt));
    std::vector<double> u_uncapped(tensors.size(), 0.0);
    std::vector<char> capped(tensors.size(), 0);
    for (const Matrix& m : matrices) {
        const AdafactorTensor<T>& x = tensors[m.t];
        const std::int64_t slice = chunks[m.first].col_offset;
        T* col_var = x.col_var + m.b * x.cols;
        const T* row_var = x.row_var + m.b * x.rows;
        k.factor(hp, col_var, col_sums + slice, double(x.rows), x.cols);
        double total = 0.0;
        for (std::int64_t i = 0; i < x.rows; ++i) total += double(row_var[i]);
        const T rmean = adafactor_detail::at_least(T(total / double(x.rows)), T(x.eps1));
        T* a = row_rsqrt.data() + row_offset[m.t] + m.b * x.rows;
        T* b = col_rsqrt.data() + col_offset[m.t] + m.b * x.cols;
        k.rsqrt(row_var, rmean, a, x.rows);
        k.rsqrt(col_var, T(1), b, x.cols);
        // u = g * min(a_i b_j, 1 / eps1) is g * a_i * b_j everywhere when the
        // largest a_i b_j is below the cap (the rounded product is monotonic);
        // then sum(u^2) = rmean * sum_j (sum_i g_ij^2 / R_i) / C_j.
        const T a_max = *std::max_element(a, a + x.rows), b_max = *std::max_element(b, b + x.cols);
        double sum = 0.0;
        for (std::int64_t j = 0; j < x.cols; ++j) sum += col_weights[slice + j] / double(col_var[j]);
        sum *= double(rmean);
        if (a_max * b_max < T(1.0 / x.eps1) && std::isfinite(sum))
            u_uncapped[m.t] += sum;
        else
            capped[m.t] = 1;
    }

    // Pass 2 (no thread-pool round where no matrix needs it).
    if (std::find(capped.begin(), capped.end(), 1) != capped.end())
        parallel_for(n_chunks, kAdafactorMinParallel, [&](std::int64_t i) {
            const Chunk& c = chunks[std::size_t(i)];
            const AdafactorTensor<T>& x = tensors[c.t];
            if (!capped[c.t]) return;  // set for factored tensors only
            const adafactor_detail::ChunkArrays<T> a(k, x, (c.b * x.rows + c.lo) * x.cols,
                                                     (c.hi - c.lo) * x.cols, false);
            u_sq[std::size_t(i)] = k.factored_norm(
                hp, a.g, c.hi - c.lo, x.cols,
                row_rsqrt.data() + row_offset[c.t] + c.b * x.rows + c.lo,
                col_rsqrt.data() + col_offset[c.t] + c.b * x.cols, x.eps1);
        });

    std::vector<double> scale(tensors.size());
    for (std::size_t t = 0; t < tensors.size(); ++t) {
        double p_total = 0.0, u_total = 0.0;
        for (std::size_t i = first_chunk[t]; i < first_chunk[t + 1]; ++i) {
            p_total += p_sq[i];
            u_total += u_sq[i];
        }
        if (tensors[t].factored && !capped[t]) u_total = u_uncapped[t];
        const double root_n = std::sqrt(double(tensors[t].size));
        const double alpha = adafactor_detail::py_max(hp.eps2, std::sqrt(p_total) / root_n) * hp.rho;
        scale[t] = -alpha / adafactor_detail::py_max(1.0, std::sqrt(u_total) / (root_n * hp.d));
    }

    // Pass 3.
    parallel_for(n_chunks, kAdafactorMinParallel, [&](std::int64_t i) {
        const Chunk& c = chunks[std::size_t(i)];
        const AdafactorTensor<T>& x = tensors[c.t];
        const std::int64_t first = x.factored ? (c.b * x.rows + c.lo) * x.cols : c.lo;
        const std::int64_t n = x.factored ? (c.hi - c.lo) * x.cols : c.hi - c.lo;
        const adafactor_detail::ChunkArrays<T> a(k, x, first, n, true);
        if (x.factored)
            k.factored_apply(hp, a.p, a.g, c.hi - c.lo, x.cols,
                             row_rsqrt.data() + row_offset[c.t] + c.b * x.rows + c.lo,
                             col_rsqrt.data() + col_offset[c.t] + c.b * x.cols, x.eps1,
                             scale[c.t]);
        else
            k.full_apply(hp, a.p, a.g, x.variance + c.lo, n, x.eps1, scale[c.t]);
        if (x.p == nullptr) k.narrow(a.p, x.param, first, n);
    });
}

}  // namespace lrfast
