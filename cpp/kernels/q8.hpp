// q8 states in the tile layer: dequantize a run of whole blocks into T,
// re-quantize them with their new absmax, bit for bit as
// lrfast.precision.dequantize_blockwise / quantize_blockwise.
//
// The caller hands over whole 256-blocks: `lo` is a multiple of kQ8Block and
// n one too, or reaching the tensor's end (the driver aligns q8 tensors), so
// a block's absmax is computed from all of its new values at once.
#pragma once

#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// The bucket of a normalised value n in [-1, 1] (or NaN: any bucket; its
// code is fixed afterwards): sign, exponent clamped below 2^-31, top mantissa bits.
inline std::uint32_t bucket_of(float n) {
    std::uint32_t u;
    __builtin_memcpy(&u, &n, sizeof u);
    std::uint32_t a = u & 0x7fffffffu;
    a = a < 0x3f800000u ? a : 0x3f800000u;  // |n| <= 1; keeps a NaN's look-up in range
    a = a > kQ8BucketFloor ? a - kQ8BucketFloor : 0u;
    return ((u >> 31) * std::uint32_t(kQ8SignBucket)) | (a >> kQ8BucketShift);
}

// out[i] = the code of the normalised value v[i] in bucket[i]: the midpoints
// below the bucket, plus those of the next kQ8Fixups that are < v[i] (ties to
// the lower code); 255 for NaN. The AVX2 and AVX-512 variants gather the same
// table entries 8 or 16 lanes at a time and compare the same way (an ordered <).
inline void look_up(const Q8Table& table, const float* __restrict v,
                    const std::uint32_t* __restrict bucket, std::uint8_t* __restrict out,
                    std::int64_t m) {
    std::int64_t i = 0;
#if defined(__AVX512F__)
    const __m512i byte = _mm512_set1_epi32(0xff), one = _mm512_set1_epi32(1);
    for (; i + 16 <= m; i += 16) {
        const __m512i b = _mm512_loadu_si512(bucket + i);
        const __m512i below = _mm512_and_si512(_mm512_i32gather_epi32(b, table.bucket, 1), byte);
        const __m512 n = _mm512_loadu_ps(v + i);
        __m512i code = below;
        for (int j = 0; j < kQ8Fixups; ++j) {
            const __m512 mid = _mm512_i32gather_ps(below, table.midpoints + j, 4);
            code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(mid, n, _CMP_LT_OQ), code, one);
        }
        code = _mm512_mask_mov_epi32(code, _mm512_cmp_ps_mask(n, n, _CMP_UNORD_Q), byte);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(code));
    }
#elif defined(__AVX2__)
    const __m256i byte = _mm256_set1_epi32(0xff);
    for (; i + 8 <= m; i += 8) {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bucket + i));
        const __m256i below = _mm256_and_si256(
            _mm256_i32gather_epi32(reinterpret_cast<const int*>(table.bucket), b, 1), byte);
        const __m256 n = _mm256_loadu_ps(v + i);
        __m256i code = below;
        for (int j = 0; j < kQ8Fixups; ++j) {
            const __m256 mid = _mm256_i32gather_ps(table.midpoints + j, below, 4);
            code = _mm256_sub_epi32(code, _mm256_castps_si256(_mm256_cmp_ps(mid, n, _CMP_LT_OQ)));
        }
        code = _mm256_blendv_epi8(code, byte, _mm256_castps_si256(_mm256_cmp_ps(n, n, _CMP_UNORD_Q)));
        const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(code),
                                               _mm256_extracti128_si256(code, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(words, words));
    }
#endif
    for (; i < m; ++i) {
        const std::uint32_t below = table.bucket[bucket[i]];
        std::uint32_t code = below;
        for (int j = 0; j < kQ8Fixups; ++j) code += table.midpoints[below + j] < v[i] ? 1u : 0u;
        out[i] = std::uint8_t(v[i] != v[i] ? 255u : code);
    }
}

// Elements [lo, lo + n) of q8 state x = in[0..n), quantized block by block:
// absmax = max |v| (NaN if the block holds a NaN), and each v / absmax gets the
// code of its nearest map value: the number of midpoints below it (ties to the
// lower code), 255 for NaN. An all-zero block keeps absmax 0 and the code of 0.
// T = double rounds to float first.
//
// Each pass over a block is a plain loop: the maximum is taken on the bits of
// |v| (for floats of one sign their integer order; NaNs lie above inf), the
// division and the bucket index vectorise, and the look-up (the midpoints below
// the bucket, then at most kQ8Fixups comparisons) runs from L1.
template <class T>
inline void quantize(const T* __restrict in, const Operand& x, std::int64_t lo, std::int64_t n) {
    const Q8Table& table = q8_table(x);
    std::uint8_t* __restrict codes = static_cast<std::uint8_t*>(x.data) + lo;
    float* absmax = x.absmax + lo / kQ8Block;
    alignas(64) float v[kQ8Block];
    alignas(64) std::uint32_t bucket[kQ8Block];
    for (std::int64_t b = 0; b * kQ8Block < n; ++b) {
        const std::int64_t first = b * kQ8Block;
        const std::int64_t m = n - first < kQ8Block ? n - first : kQ8Block;
        std::uint32_t top_bits = 0;
        for (std::int64_t i = 0; i < m; ++i) {
            v[i] = float(in[first + i]);
            std::uint32_t u;
            __builtin_memcpy(&u, &v[i], sizeof u);
            u &= 0x7fffffffu;
            top_bits = u > top_bits ? u : top_bits;
        }
        if (top_bits > 0x7f800000u) top_bits = 0x7fc00000u;  // a NaN: the block's absmax is NaN
        float top;
        __builtin_memcpy(&top, &top_bits, sizeof top);
        absmax[b] = top;
        std::uint8_t* __restrict out = codes + first;
        if (top_bits == 0) {  // all zeros: n = 0
            for (std::int64_t i = 0; i < m; ++i) v[i] = 0.0f;
        } else {
            for (std::int64_t i = 0; i < m; ++i) v[i] = v[i] / top;
        }
        for (std::int64_t i = 0; i < m; ++i) bucket[i] = bucket_of(v[i]);
        look_up(table, v, bucket, out, m);
    }
}

}  // namespace lrfast::LRFAST_ISA_NS
