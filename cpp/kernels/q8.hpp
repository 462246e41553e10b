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
// AVX-512 looks the codes up 16 at a time from the map in registers, AVX2
// gathers 8.
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
#elif defined(__AVX2__)
        if constexpr (std::is_same_v<T, float>) {  // 8 codes at a time, gathered from the map in L1
            const __m256 s = _mm256_set1_ps(scale);
            for (; i + 8 <= end; i += 8) {
                const __m256i j = _mm256_cvtepu8_epi32(
                    _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i)));
                _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_i32gather_ps(table.map, j, 4), s));
            }
        }
#endif
        for (; i < end; ++i) out[i] = T(table.map[codes[i]] * scale);
    }
}

// The code of a normalised value n = v / absmax, in [-1, 1] or, for a
// non-finite v, +-inf or NaN: the number of the map's midpoints below n (ties
// to the lower code), so +inf takes the top code and -inf the bottom one; a
// NaN takes the code of 0 (127 signed, 0 unsigned). code_of is the rule;
// look_up runs it on 16 (AVX-512) or 8 (AVX2) lanes with the same integer
// steps, so every ISA gives the same codes.
//
// The cells of Q8Table count the midpoints >= 0 below a key k >= 0 (the
// float32 bits of |n|, clamped to 1.0; a NaN's key is 1.0's, its code fixed
// at the end). The unsigned map's midpoints are all >= 0: code = count, and a
// negative n, below them all, takes 0. The signed map is symmetric (map[k] ==
// -map[254 - k] for k < 255, so midpoint k is minus midpoint 253 - k): n >= 0
// has the 127 negative midpoints below it, code = 127 + count; n = -a < 0 has
// below it the negative midpoints whose mirrors are > a, code = 127 - (the
// positive midpoints <= a, bar the top one, which has no mirror), counted as
// those < k + 1 (the next float up) with k + 1 clamped to the top midpoint.
template <bool SIGNED>
inline std::uint32_t code_of(const Q8Table& table, float n) {
    std::uint32_t u;
    __builtin_memcpy(&u, &n, sizeof u);
    std::uint32_t key = (u & 0x7fffffffu) < kQ8One ? u & 0x7fffffffu : kQ8One;
    const bool negative = (u >> 31) != 0;
    if (SIGNED && negative) key = key + 1 < table.top_midpoint ? key + 1 : table.top_midpoint;
    key = key > kQ8CellFloor ? key : kQ8CellFloor;
    const std::uint32_t cell = table.cell[(key - kQ8CellFloor) >> kQ8CellShift];
    const std::uint32_t count = (cell >> 24) + ((key & 0xffffu) > (cell & 0xffffu) ? 1u : 0u);
    const std::uint32_t code = SIGNED ? (negative ? 127 - count : 127 + count) : (negative ? 0 : count);
    return n != n ? (SIGNED ? 127u : 0u) : code;
}

// out[i] = code_of(v[i] / top) for i < m (IEEE division, as the spec's).
// The cells are looked up by a gather.
template <bool SIGNED>
inline void look_up(const Q8Table& table, const float* __restrict v, float top,
                    std::uint8_t* __restrict out, std::int64_t m) {
    std::int64_t i = 0;
    const int* cells = reinterpret_cast<const int*>(table.cell);
#if defined(__AVX512F__)
    const __m512 scale = _mm512_set1_ps(top);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), one = _mm512_set1_epi32(int(kQ8One));
    const __m512i floor = _mm512_set1_epi32(int(kQ8CellFloor));
    const __m512i top_mid = _mm512_set1_epi32(int(table.top_midpoint));
    const __m512i low = _mm512_set1_epi32(0xffff), unit = _mm512_set1_epi32(1);
    const __m512i zero_code = _mm512_set1_epi32(SIGNED ? 127 : 0);
    for (; i + 16 <= m; i += 16) {
        const __m512 n = _mm512_div_ps(_mm512_loadu_ps(v + i), scale);
        const __m512i u = _mm512_castps_si512(n);
        const __mmask16 negative = _mm512_movepi32_mask(u);
        __m512i key = _mm512_min_epu32(_mm512_and_si512(u, abs_mask), one);
        if constexpr (SIGNED)
            key = _mm512_mask_min_epu32(key, negative, _mm512_add_epi32(key, unit), top_mid);
        key = _mm512_max_epu32(key, floor);
        const __m512i cell = _mm512_i32gather_epi32(
            _mm512_srli_epi32(_mm512_sub_epi32(key, floor), kQ8CellShift), cells, 4);
        // The key's low 16 bits with the cell's high ones (0xCA: low ? key : cell),
        // against the cell: their low bits decide.
        const __m512i mixed = _mm512_ternarylogic_epi32(low, key, cell, 0xCA);
        __m512i count = _mm512_srli_epi32(cell, 24);
        count = _mm512_mask_add_epi32(count, _mm512_cmpgt_epu32_mask(mixed, cell), count, unit);
        __m512i code;
        if constexpr (SIGNED)
            code = _mm512_mask_sub_epi32(_mm512_add_epi32(zero_code, count), negative, zero_code, count);
        else
            code = _mm512_maskz_mov_epi32(_knot_mask16(negative), count);
        code = _mm512_mask_mov_epi32(code, _mm512_cmp_ps_mask(n, n, _CMP_UNORD_Q), zero_code);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(code));
    }
#elif defined(__AVX2__)
    // AVX2 has no unsigned 32-bit compare: the low 16 bits compare as signed
    // numbers, and -1 per true lane is subtracted.
    const __m256 scale = _mm256_set1_ps(top);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), one = _mm256_set1_epi32(int(kQ8One));
    const __m256i floor = _mm256_set1_epi32(int(kQ8CellFloor));
    const __m256i top_mid = _mm256_set1_epi32(int(table.top_midpoint));
    const __m256i low = _mm256_set1_epi32(0xffff), unit = _mm256_set1_epi32(1);
    const __m256i zero_code = _mm256_set1_epi32(SIGNED ? 127 : 0);
    for (; i + 8 <= m; i += 8) {
        const __m256 n = _mm256_div_ps(_mm256_loadu_ps(v + i), scale);
        const __m256i u = _mm256_castps_si256(n);
        const __m256i negative = _mm256_srai_epi32(u, 31);
        __m256i key = _mm256_min_epu32(_mm256_and_si256(u, abs_mask), one);
        if constexpr (SIGNED)
            key = _mm256_blendv_epi8(
                key, _mm256_min_epu32(_mm256_add_epi32(key, unit), top_mid), negative);
        key = _mm256_max_epu32(key, floor);
        const __m256i cell = _mm256_i32gather_epi32(
            cells, _mm256_srli_epi32(_mm256_sub_epi32(key, floor), kQ8CellShift), 4);
        const __m256i above = _mm256_cmpgt_epi32(_mm256_and_si256(key, low),
                                                 _mm256_and_si256(cell, low));
        const __m256i count = _mm256_sub_epi32(_mm256_srli_epi32(cell, 24), above);
        __m256i code;
        if constexpr (SIGNED)  // 127 + count, or 127 - count: (count ^ -1) + 1 is -count
            code = _mm256_add_epi32(zero_code, _mm256_sub_epi32(_mm256_xor_si256(count, negative), negative));
        else
            code = _mm256_andnot_si256(negative, count);
        code = _mm256_blendv_epi8(code, zero_code, _mm256_castps_si256(_mm256_cmp_ps(n, n, _CMP_UNORD_Q)));
        const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(code),
                                               _mm256_extracti128_si256(code, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(words, words));
    }
#endif
    for (; i < m; ++i) out[i] = std::uint8_t(code_of<SIGNED>(table, v[i] / top));
}

// The scale of a block of m values (lrfast.precision._normalized_blocks):
// its extreme e is the finite value of largest |v| (the negative one on a
// tie; 0 if none), its scale |e| / |the map's end on e's side|.
// `low_end` is the magnitude of a signed map's first value (q8 0.99296874, q4
// 0.8875; the top end is 1.0), 0 for an unsigned map, whose scale is |e|.
// Sets `zero` for a block without a finite non-zero value (scale 0).
//
// The extreme is found on keys (|v|'s bits << 1 | the sign bit): for floats
// their integer order is that of |v|, the sign breaking ties. Offset by
// 2^24, the keys of infs and NaNs (from inf's, 0xff000000, up) wrap around
// below every finite value's, so the largest offset key is the finite
// extreme's, and below 2^24 where there is none: a non-finite value never
// reaches the scale, for one add in a plain loop that vectorises.
inline float block_scale(const float* __restrict v, std::int64_t m, float low_end, bool& zero) {
    constexpr std::uint32_t offset = 0x01000000u;
    std::uint32_t top_offset = 0;
    for (std::int64_t i = 0; i < m; ++i) {
        std::uint32_t u;
        __builtin_memcpy(&u, v + i, sizeof u);
        const std::uint32_t key = (u << 1 | u >> 31) + offset;
        top_offset = key > top_offset ? key : top_offset;
    }
    const std::uint32_t top_key = top_offset < offset ? 0 : top_offset - offset;
    const std::uint32_t top_bits = top_key >> 1;
    float top;
    __builtin_memcpy(&top, &top_bits, sizeof top);
    zero = top_bits == 0;
    return low_end != 0 && (top_key & 1) != 0 && !zero ? top / low_end : top;
}

// Calls f(b, first, m, v) for each block b of BLOCK elements of in[0..n):
// elements [first, first + m), as float values v (T = double rounds to float
// first, into a buffer).
template <std::int64_t BLOCK, class T, class F>
inline void for_each_block(const T* __restrict in, std::int64_t n, F f) {
    alignas(64) float rounded[std::is_same_v<T, float> ? 1 : BLOCK];
    for (std::int64_t b = 0; b * BLOCK < n; ++b) {
        const std::int64_t first = b * BLOCK;
        const std::int64_t m = n - first < BLOCK ? n - first : BLOCK;
        if constexpr (std::is_same_v<T, float>) {
            f(b, first, m, in + first);
        } else {
            for (std::int64_t i = 0; i < m; ++i) rounded[i] = float(in[first + i]);
            f(b, first, m, rounded);
        }
    }
}

// Elements [lo, lo + n) of q8 state x = in[0..n), quantized block by block
// (lrfast.precision.quantize_blockwise): each block's absmax is its
// block_scale, and each v / absmax gets its code (code_of). A block without a
// finite non-zero value keeps absmax 0 and the code of 0. T = double rounds to
// float first. The division is done in look_up, from L1.
template <class T>
inline void quantize(const T* __restrict in, const Operand& x, std::int64_t lo, std::int64_t n) {
    const Q8Table& table = q8_table(x);
    const bool is_signed = x.storage == Storage::q8_signed;
    std::uint8_t* __restrict codes = static_cast<std::uint8_t*>(x.data) + lo;
    float* absmax = x.absmax + lo / kQ8Block;
    for_each_block<kQ8Block>(in, n, [&](std::int64_t b, std::int64_t first, std::int64_t m,
                                        const float* __restrict v) {
        bool zero;
        const float top = block_scale(v, m, is_signed ? -table.map[0] : 0.0f, zero);
        absmax[b] = top;
        std::uint8_t* __restrict out = codes + first;
        if (zero) {  // n = 0
            for (std::int64_t i = 0; i < m; ++i) out[i] = is_signed ? 127 : 0;
        } else if (is_signed) {
            look_up<true>(table, v, top, out, m);
        } else {
            look_up<false>(table, v, top, out, m);
        }
    });
}

}  // namespace lrfast::LRFAST_ISA_NS
