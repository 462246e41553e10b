// q8 states in the tile layer: dequantize a run of whole blocks into T,
// re-quantize them with their new absmax, bit for bit as
// lrfast.precision.dequantize_blockwise / quantize_blockwise.
//
// The caller hands over whole 256-blocks: `lo` is a multiple of kQ8Block and
// n one too, or reaching the tensor's end (the driver aligns q8 tensors), so
// a block's absmax is computed from all of its new values at once.
#pragma once

#include <cstdint>

#include "kernel.hpp"
#include "lrfast/q8_tables.hpp"

namespace lrfast::LRFAST_ISA_NS {

inline const Q8Table& q8_table(const Operand& x) {
    return q8_tables[x.storage == Storage::q8_signed ? 1 : 0];
}

// out[i] = map[code] * absmax of its block, one float32 rounding, widened to T.
template <class T>
inline void dequantize(const Operand& x, std::int64_t lo, std::int64_t n, T* __restrict out) {
    const Q8Table& table = q8_table(x);
    const std::uint8_t* __restrict codes = static_cast<const std::uint8_t*>(x.data) + lo;
    const float* absmax = x.absmax + lo / kQ8Block;
    for (std::int64_t b = 0; b * kQ8Block < n; ++b) {
        const std::int64_t end = (b + 1) * kQ8Block < n ? (b + 1) * kQ8Block : n;
        const float scale = absmax[b];
        for (std::int64_t i = b * kQ8Block; i < end; ++i) out[i] = T(table.map[codes[i]] * scale);
    }
}

// The code of a normalised value n in [-1, 1] or NaN: the number of midpoints
// below n (ties to the lower code), 255 for NaN. The bucket of n's bits gives
// the midpoints below its lowest value; at most kQ8Fixups more can lie below n.
inline std::uint8_t code_of(float n, const Q8Table& table) {
    std::uint32_t u;
    __builtin_memcpy(&u, &n, sizeof u);
    std::uint32_t a = u & 0x7fffffffu;
    const bool nan = a > 0x7f800000u;
    a = a < 0x3f800000u ? a : 0x3f800000u;  // |n| <= 1; keeps a NaN's look-up in range
    a = a > kQ8BucketFloor ? a - kQ8BucketFloor : 0u;
    const std::uint32_t b = ((u >> 31) * std::uint32_t(kQ8SignBucket)) | (a >> kQ8BucketShift);
    const std::uint32_t below = table.bucket[b];
    std::uint32_t code = below;
    for (int j = 0; j < kQ8Fixups; ++j) code += table.midpoints[below + j] < n ? 1u : 0u;
    return std::uint8_t(nan ? 255u : code);
}

// Elements [lo, lo + n) of q8 state x = in[0..n), quantized block by block:
// absmax = max |v| (NaN if the block holds a NaN), v / absmax to its code; an
// all-zero block keeps absmax 0 and the code of 0. T = double rounds to float first.
template <class T>
inline void quantize(const T* __restrict in, const Operand& x, std::int64_t lo, std::int64_t n) {
    const Q8Table& table = q8_table(x);
    std::uint8_t* __restrict codes = static_cast<std::uint8_t*>(x.data) + lo;
    float* absmax = x.absmax + lo / kQ8Block;
    alignas(64) float v[kQ8Block];
    for (std::int64_t b = 0; b * kQ8Block < n; ++b) {
        const std::int64_t first = b * kQ8Block;
        const std::int64_t m = n - first < kQ8Block ? n - first : kQ8Block;
        float top = 0.0f;
        std::uint32_t nan = 0;
        for (std::int64_t i = 0; i < m; ++i) {
            v[i] = float(in[first + i]);
            const float magnitude = __builtin_fabsf(v[i]);
            nan |= magnitude != magnitude ? 1u : 0u;
            top = magnitude > top ? magnitude : top;
        }
        if (nan != 0) top = __builtin_nanf("");
        absmax[b] = top;
        std::uint8_t* __restrict out = codes + first;
        if (top == 0.0f) {
            const std::uint8_t zero = code_of(0.0f, table);
            for (std::int64_t i = 0; i < m; ++i) out[i] = zero;
        } else {
            for (std::int64_t i = 0; i < m; ++i) out[i] = code_of(v[i] / top, table);
        }
    }
}

}  // namespace lrfast::LRFAST_ISA_NS
