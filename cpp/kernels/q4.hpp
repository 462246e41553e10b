// q4 states in the tile layer: dequantize a run of whole 128-blocks into T,
// re-quantize them with their new scale, bit for bit as
// lrfast.precision.dequantize_blockwise_q4 / quantize_blockwise_q4 (torchao's
// 4-bit layout: two codes a byte, element 2i in the high nibble).
//
// As for q8 (q8.hpp) the caller hands over whole blocks: `lo` is a multiple
// of 256 (so even: a byte boundary) and n one too, or reaching the tensor's end.
#pragma once

#include "q8.hpp"

namespace lrfast::LRFAST_ISA_NS {

inline const Q4Table& q4_table(const Operand& x) {
    return q4_tables[x.storage == Storage::q4_signed ? 1 : 0];
}

// out[i] = map[code] * absmax of its block, one float32 rounding, widened to T.
// AVX2 (and AVX-512, which has its instructions) looks 8 codes up at a time
// from the 16-entry map in two registers: vpermps picks by the low 3 bits, and
// bit 3 of the code, shifted into the sign bit, chooses the register.
template <class T>
inline void dequantize_q4(const Operand& x, std::int64_t lo, std::int64_t n, T* __restrict out) {
    const Q4Table& table = q4_table(x);
    const std::uint8_t* __restrict bytes = static_cast<const std::uint8_t*>(x.data) + lo / 2;
    const float* absmax = x.absmax + lo / kQ4Block;
#if defined(__AVX2__)
    const __m256 low_map = _mm256_loadu_ps(table.map), high_map = _mm256_loadu_ps(table.map + 8);
    // 4 bytes -> 8 lanes: each byte twice, then its high nibble in even lanes, low in odd
    const __m128i twice = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i shift = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
    const __m256i nibble = _mm256_set1_epi32(15);
#endif
    for (std::int64_t b = 0; b * kQ4Block < n; ++b) {
        const std::int64_t end = (b + 1) * kQ4Block < n ? (b + 1) * kQ4Block : n;
        const float scale = absmax[b];
        std::int64_t i = b * kQ4Block;
#if defined(__AVX2__)
        if constexpr (std::is_same_v<T, float>) {
            const __m256 s = _mm256_set1_ps(scale);
            for (; i + 8 <= end; i += 8) {
                int four;
                __builtin_memcpy(&four, bytes + i / 2, sizeof four);
                const __m256i j = _mm256_and_si256(
                    _mm256_srlv_epi32(
                        _mm256_cvtepu8_epi32(_mm_shuffle_epi8(_mm_cvtsi32_si128(four), twice)), shift),
                    nibble);
                const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(low_map, j),
                                                  _mm256_permutevar8x32_ps(high_map, j),
                                                  _mm256_castsi256_ps(_mm256_slli_epi32(j, 28)));
                _mm256_storeu_ps(out + i, _mm256_mul_ps(v, s));
            }
        }
#endif
        for (; i < end; ++i) out[i] = T(table.map[(bytes[i / 2] >> (i % 2 ? 0 : 4)) & 15] * scale);
    }
}

// out[i] = the code of n = v[i] / scale for i < m: the number of thresholds
// <= n (torchao's rounding, see lrfast/q8_tables.hpp), so +inf takes 15 and
// -inf 0; a NaN takes `zero_code`, the code of 0. Comparisons only, so every
// ISA gives the same codes.
inline void q4_codes(const Q4Table& table, const float* __restrict v, float scale,
                     std::uint8_t zero_code, std::uint8_t* __restrict out, std::int64_t m) {
    std::int64_t i = 0;
#if defined(__AVX2__)
    __m256 t[15];
    for (int k = 0; k < 15; ++k) t[k] = _mm256_set1_ps(table.threshold[k]);
    const __m256 s = _mm256_set1_ps(scale);
    for (; i + 8 <= m; i += 8) {
        const __m256 n = _mm256_div_ps(_mm256_loadu_ps(v + i), s);
        __m256i c = _mm256_setzero_si256();
        for (int k = 0; k < 15; ++k)  // a true compare is -1
            c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(n, t[k], _CMP_GE_OQ)));
        c = _mm256_blendv_epi8(c, _mm256_set1_epi32(zero_code),
                               _mm256_castps_si256(_mm256_cmp_ps(n, n, _CMP_UNORD_Q)));
        const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(words, words));
    }
#endif
    for (; i < m; ++i) {
        const float n = v[i] / scale;
        unsigned c = 0;
        for (int k = 0; k < 15; ++k) c += n >= table.threshold[k] ? 1u : 0u;
        out[i] = n != n ? zero_code : std::uint8_t(c);
    }
}

// Elements [lo, lo + n) of q4 state x = in[0..n), quantized block by block:
// each block's absmax is its block_scale (q8.hpp) with the map's low end, and
// each v / absmax gets its code (q4_codes); a block without a finite non-zero
// value keeps absmax 0, and it and a NaN the code of 0 (7 signed, 0
// unsigned). The codes are packed two a byte, the low nibble past an odd end
// 0. T = double rounds to float first.
template <class T>
inline void quantize_q4(const T* __restrict in, const Operand& x, std::int64_t lo, std::int64_t n) {
    const Q4Table& table = q4_table(x);
    const bool is_signed = x.storage == Storage::q4_signed;
    const std::uint8_t zero_code = is_signed ? 7 : 0;
    std::uint8_t* __restrict bytes = static_cast<std::uint8_t*>(x.data) + lo / 2;
    float* absmax = x.absmax + lo / kQ4Block;
    alignas(64) std::uint8_t code[kQ4Block];
    for_each_block<kQ4Block>(in, n, [&](std::int64_t b, std::int64_t first, std::int64_t m,
                                        const float* __restrict v) {
        bool zero;
        const float scale = block_scale(v, m, is_signed ? -table.map[0] : 0.0f, zero);
        absmax[b] = scale;
        if (zero) {
            for (std::int64_t i = 0; i < m; ++i) code[i] = zero_code;
        } else {
            q4_codes(table, v, scale, zero_code, code, m);
        }
        std::uint8_t* __restrict out = bytes + first / 2;
        for (std::int64_t i = 0; i < m / 2; ++i) out[i] = std::uint8_t(code[2 * i] << 4 | code[2 * i + 1]);
        if (m % 2) out[m / 2] = std::uint8_t(code[m - 1] << 4);
    });
}

}  // namespace lrfast::LRFAST_ISA_NS
