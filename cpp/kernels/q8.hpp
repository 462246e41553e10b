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

#if defined(__AVX512F__)
// table[j] for 16 indices j < 2^BITS (BITS <= 8), the table held in registers
// t[0..], 16 entries each. vpermps picks from 16 entries by the low 4 bits of
// j, vpermi2ps from 32 by the low 5; a larger table is two halves looked up
// alike, the result chosen per lane by bit BITS - 1 of j. No gather: the
// entries are read from registers, so the result is exactly table[j].
template <int BITS>
inline __m512 permute_lookup(const __m512* t, __m512i j) {
    if constexpr (BITS <= 4) {
        return _mm512_permutexvar_ps(j, t[0]);
    } else if constexpr (BITS == 5) {
        return _mm512_permutex2var_ps(t[0], j, t[1]);
    } else {
        constexpr int half = 1 << (BITS - 1);
        const __m512 low = permute_lookup<BITS - 1>(t, j);
        const __m512 high = permute_lookup<BITS - 1>(t + half / 16, j);
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(j, _mm512_set1_epi32(half)), low, high);
    }
}

// The 16 registers of a 256-entry table.
inline void load_table(const float* table, int entries, __m512* t) {
    for (int r = 0; r < (entries + 15) / 16; ++r) t[r] = _mm512_loadu_ps(table + 16 * r);
}
#endif

// out[i] = map[code] * absmax of its block, one float32 rounding, widened to T.
// AVX-512 looks the codes up 16 at a time from the map in registers.
template <class T>
inline void dequantize(const Operand& x, std::int64_t lo, std::int64_t n, T* __restrict out) {
    const Q8Table& table = q8_table(x);
    const std::uint8_t* __restrict codes = static_cast<const std::uint8_t*>(x.data) + lo;
    const float* absmax = x.absmax + lo / kQ8Block;
#if defined(__AVX512F__)
    __m512 map[16];
    if constexpr (std::is_same_v<T, float>) load_table(table.map, 256, map);
#endif
    for (std::int64_t b = 0; b * kQ8Block < n; ++b) {
        const std::int64_t end = (b + 1) * kQ8Block < n ? (b + 1) * kQ8Block : n;
        const float scale = absmax[b];
        std::int64_t i = b * kQ8Block;
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<T, float>) {
            const __m512 s = _mm512_set1_ps(scale);
            for (; i + 16 <= end; i += 16) {
                const __m512i j = _mm512_cvtepu8_epi32(
                    _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
                _mm512_storeu_ps(out + i, _mm512_mul_ps(permute_lookup<8>(map, j), s));
            }
        }
#endif
        for (; i < end; ++i) out[i] = T(table.map[codes[i]] * scale);
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

// out[i] = the code of the normalised value v[i]: the midpoints below its
// bucket, plus those of the next kQ8Fixups that are < v[i] (ties to the lower
// code); 255 for NaN. The AVX2 variant computes the same buckets and gathers
// the same table entries 8 lanes at a time, and compares the same way (an ordered <).
//
// AVX-512 counts the midpoints < v[i] by a binary search instead, 16 lanes at
// a time with no gather: the midpoints are sorted, so "midpoints[k] < v" is
// true for k below the count and false from it on, and setting the code's bits
// from 128 down to 1, each where the midpoint just below the candidate is < v,
// finds that count exactly (levels of table.search, held in registers). A NaN
// compares false everywhere and then gets 255.
inline void look_up(const Q8Table& table, const float* __restrict v, std::uint8_t* __restrict out,
                    std::int64_t m) {
    std::int64_t i = 0;
#if defined(__AVX512F__)
    // Level L (bit 128 >> L) starts at search[2^L - 1]: registers of 16 entries.
    __m512 level1, level2, level3, level4, level5[2], level6[4], level7[8];
    load_table(table.search + 1, 2, &level1);
    load_table(table.search + 3, 4, &level2);
    load_table(table.search + 7, 8, &level3);
    load_table(table.search + 15, 16, &level4);
    load_table(table.search + 31, 32, level5);
    load_table(table.search + 63, 64, level6);
    load_table(table.search + 127, 128, level7);
    const __m512 level0 = _mm512_set1_ps(table.search[0]);
    const __m512i byte = _mm512_set1_epi32(0xff);
    // Four vectors at a time: each search is a chain of dependent steps, the
    // four chains overlap.
    constexpr int kLanes = 64;
    for (; i + kLanes <= m; i += kLanes) {
        __m512 n[4];
        __m512i code[4];
        for (int k = 0; k < 4; ++k) {
            n[k] = _mm512_loadu_ps(v + i + 16 * k);
            code[k] = _mm512_setzero_si512();
        }
        // Sets `bit` of each code whose midpoint `mid(j)` is < n, where the code
        // so far has bits above `bit` only and j = code / (2 * bit) indexes its level.
        auto step = [&](int bit, auto mid) {
            for (int k = 0; k < 4; ++k) {
                const __m512 below = mid(_mm512_srli_epi32(code[k], 1 + __builtin_ctz(bit)));
                code[k] = _mm512_mask_add_epi32(code[k], _mm512_cmp_ps_mask(below, n[k], _CMP_LT_OQ),
                                                code[k], _mm512_set1_epi32(bit));
            }
        };
        step(128, [&](__m512i) { return level0; });
        step(64, [&](__m512i j) { return permute_lookup<1>(&level1, j); });
        step(32, [&](__m512i j) { return permute_lookup<2>(&level2, j); });
        step(16, [&](__m512i j) { return permute_lookup<3>(&level3, j); });
        step(8, [&](__m512i j) { return permute_lookup<4>(&level4, j); });
        step(4, [&](__m512i j) { return permute_lookup<5>(level5, j); });
        step(2, [&](__m512i j) { return permute_lookup<6>(level6, j); });
        step(1, [&](__m512i j) { return permute_lookup<7>(level7, j); });
        for (int k = 0; k < 4; ++k) {
            const __m512i c = _mm512_mask_mov_epi32(
                code[k], _mm512_cmp_ps_mask(n[k], n[k], _CMP_UNORD_Q), byte);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i + 16 * k), _mm512_cvtepi32_epi8(c));
        }
    }
#elif defined(__AVX2__)
    static_assert(kQ8SignBucket == 1 << 11, "the sign bucket is bit 11");
    const __m256i byte = _mm256_set1_epi32(0xff), abs_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256i one = _mm256_set1_epi32(0x3f800000), floor = _mm256_set1_epi32(kQ8BucketFloor);
    for (; i + 8 <= m; i += 8) {
        const __m256 n = _mm256_loadu_ps(v + i);
        // bucket_of on 8 lanes: max(a, floor) - floor is a - floor above the floor, else 0.
        const __m256i u = _mm256_castps_si256(n);
        const __m256i a = _mm256_min_epu32(_mm256_and_si256(u, abs_mask), one);
        const __m256i b = _mm256_or_si256(
            _mm256_slli_epi32(_mm256_srli_epi32(u, 31), 11),
            _mm256_srli_epi32(_mm256_sub_epi32(_mm256_max_epu32(a, floor), floor), kQ8BucketShift));
        const __m256i below = _mm256_and_si256(
            _mm256_i32gather_epi32(reinterpret_cast<const int*>(table.bucket), b, 1), byte);
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
        const std::uint32_t below = table.bucket[bucket_of(v[i])];
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
// division vectorises, and the look-up (see look_up) runs from L1.
template <class T>
inline void quantize(const T* __restrict in, const Operand& x, std::int64_t lo, std::int64_t n) {
    const Q8Table& table = q8_table(x);
    std::uint8_t* __restrict codes = static_cast<std::uint8_t*>(x.data) + lo;
    float* absmax = x.absmax + lo / kQ8Block;
    alignas(64) float v[kQ8Block];
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
        look_up(table, v, out, m);
    }
}

}  // namespace lrfast::LRFAST_ISA_NS
