// Conversions between the 16-bit storage formats and float, per ISA.
//
// Widening is exact. Narrowing rounds to nearest, ties to even; overflow
// gives inf, inf stays inf, NaN stays NaN. A float64 value narrows to 16 bits
// through float32 (two roundings, as cvtpd_ps then cvtps_ph do): the rule of
// lrfast.precision.round_nearest.
//
// bfloat16 is the high half of a float32, so its conversions are integer
// shifts the compiler vectorises for every ISA. float16 goes through
// _Float16 (GCC >= 12 on x86-64): the baseline converts in software (libgcc),
// and the variants with F16C (AVX2) or AVX-512F run the hardware conversion
// eight or sixteen lanes at a time. The intrinsics are always-inline
// functions, so nothing compiled here outlives its ISA namespace.
#pragma once

#include <cstdint>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernel.hpp"
#include "q4.hpp"

namespace lrfast::LRFAST_ISA_NS {

// Elements per tile of the tile layer (tiles.cpp; Prodigy's reduction in
// prodigy.cpp): the buffers of one tile (up to five arrays) stay in L1. A
// multiple of kQ8Block, so that a tile starting on a q8 block holds whole blocks.
constexpr std::int64_t kTile = 512;
static_assert(kTile % kQ8Block == 0, "tiles hold whole q8 blocks");

// The storage of an array that holds the arithmetic type T itself.
template <class T>
constexpr Storage own_storage() {
    return std::is_same_v<T, float> ? Storage::f32 : Storage::f64;
}

inline float from_bf16(std::uint16_t h) {
    const std::uint32_t u = std::uint32_t(h) << 16;
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
}

inline std::uint16_t to_bf16(float f) {
    std::uint32_t u;
    __builtin_memcpy(&u, &f, sizeof u);
    // NaN keeps its sign and high payload, with the quiet bit set: its low half
    // is cleared first, so the rounding below leaves the high half as it is
    // (rounding could otherwise carry a NaN's payload into inf).
    if ((u & 0x7fffffffu) > 0x7f800000u) u = (u & 0xffff0000u) | 0x00400000u;
    // Adding 0x7fff rounds halfway cases down, plus the kept lowest bit rounds
    // them to even; a carry into the exponent gives the next binade or inf.
    return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// The compiler's IEEE half type: _Float16 in C++ on x86-64 (GCC >= 12); on
// AArch64 GCC 12 has it only in C, and __fp16 is the same format there, with
// conversions by the FPU in its default round-to-nearest-even mode.
#if defined(__aarch64__)
using half = __fp16;
#else
using half = _Float16;
#endif

inline float from_f16(std::uint16_t h) {
    half x;
    __builtin_memcpy(&x, &h, sizeof x);
    return float(x);
}

inline std::uint16_t to_f16(float f) {
    const half x = static_cast<half>(f);
    std::uint16_t h;
    __builtin_memcpy(&h, &x, sizeof h);
    return h;
}

// A bfloat16 element for loops that convert as they go: load widens it,
// store rounds to nearest even; float and double load and store as they are.
struct Bf16 {
    std::uint16_t bits;
};
inline float load(Bf16 x) { return from_bf16(x.bits); }
inline void store(Bf16& x, float f) { x.bits = to_bf16(f); }
inline float load(float x) { return x; }
inline void store(float& x, float f) { x = f; }
inline double load(double x) { return x; }
inline void store(double& x, double f) { x = f; }

#if defined(__AVX512F__)
// 16 floats with the arithmetic of float, lane by lane (the same IEEE
// operations), for loops written once for scalars and vectors.
struct F32x16 {
    __m512 x;
    F32x16() = default;
    F32x16(__m512 v) : x(v) {}
    explicit F32x16(double d) : x(_mm512_set1_ps(float(d))) {}
};
inline F32x16 operator+(F32x16 a, F32x16 b) { return _mm512_add_ps(a.x, b.x); }
inline F32x16 operator-(F32x16 a, F32x16 b) { return _mm512_sub_ps(a.x, b.x); }
inline F32x16 operator*(F32x16 a, F32x16 b) { return _mm512_mul_ps(a.x, b.x); }
inline F32x16 operator/(F32x16 a, F32x16 b) { return _mm512_div_ps(a.x, b.x); }
inline F32x16 root(F32x16 a) { return _mm512_sqrt_ps(a.x); }
// a > b ? a : b, as for scalars (b when either is NaN): vmaxps' rule.
inline F32x16 maximum(F32x16 a, F32x16 b) { return _mm512_max_ps(a.x, b.x); }

// 32 bfloat16 elements from 64 bytes: the even-numbered ones (each the low
// half of a 32-bit word) and the odd ones (the high half), widened in place
// by a shift and a mask, without reordering lanes.
inline void load_bf16x32(const Bf16* in, F32x16& even, F32x16& odd) {
    const __m512i w = _mm512_loadu_si512(in);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(int(0xffff0000u))));
}

// x rounded to bfloat16 (to_bf16) in the high half of each 32-bit lane: u +
// 0x7fff, plus 1 if bit 16 is set (ties to even); a NaN keeps its high half
// with the quiet bit set.
inline __m512i round_bf16_high(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    __m512i r = _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff));
    r = _mm512_mask_add_epi32(r, _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000)), r,
                              _mm512_set1_epi32(1));
    return _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), u,
                                _mm512_set1_epi32(0x00400000));
}

// The inverse of load_bf16x32, rounding to nearest even.
inline void store_bf16x32(Bf16* out, F32x16 even, F32x16 odd) {
    const __m512i low = _mm512_srli_epi32(round_bf16_high(even.x), 16);
    // 0xCA: bits of the mask from the first operand, the rest from the second.
    _mm512_storeu_si512(out, _mm512_ternarylogic_epi32(_mm512_set1_epi32(int(0xffff0000u)),
                                                       round_bf16_high(odd.x), low, 0xCA));
}
#endif

// out[i] = in[i] rounded to bfloat16, nearest even (to_bf16 on each element).
// AVX-512 rounds 16 lanes with round_bf16_high and narrows them with vpmovdw. (The
// compiler's own vectorisation of to_bf16 packs with vpermt2w, several times
// slower here; vcvtneps2bf16 of AVX512_BF16 would not do: it flushes float32
// subnormals to zero.)
inline void narrow_bf16(const float* __restrict in, std::uint16_t* __restrict out,
                        std::int64_t n) {
    std::int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(
                                round_bf16_high(_mm512_loadu_ps(in + i)), 16)));
#elif defined(__AVX2__)
    // The same on 8 lanes; |u| and inf are non-negative as int32, so a signed
    // compare orders them, and vpackusdw packs the (< 2^16) results.
    const __m256i half_ulp = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(in + i));
        const __m256i high = _mm256_srli_epi32(u, 16);
        const __m256i even = _mm256_and_si256(high, one);
        const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, half_ulp), even), 16);
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        const __m256i w = _mm256_blendv_epi8(r, _mm256_or_si256(high, quiet), nan);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                         _mm_packus_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
    }
#endif
    for (; i < n; ++i) out[i] = to_bf16(in[i]);
}

// out[i] = float(in[i]) for float16 in.
inline void widen_f16(const std::uint16_t* __restrict in, float* __restrict out,
                      std::int64_t n) {
    std::int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(
                                      reinterpret_cast<const __m256i*>(in + i))));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                      reinterpret_cast<const __m128i*>(in + i))));
#endif
    for (; i < n; ++i) out[i] = from_f16(in[i]);
}

// out[i] = in[i] rounded to float16, nearest even.
inline void narrow_f16(const float* __restrict in, std::uint16_t* __restrict out,
                       std::int64_t n) {
    std::int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(in + i),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + i),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; ++i) out[i] = to_f16(in[i]);
}

// out[0..n) = elements [lo, lo + n) of x, widened to T (float or double).
// x's storage is float32 (then T is double), bfloat16, float16, q8 or q4
// (whole blocks: see q8.hpp and q4.hpp).
template <class T>
inline void widen(const Operand& x, std::int64_t lo, std::int64_t n, T* __restrict out) {
    const void* data = x.data;
    switch (x.storage) {
        case Storage::f32: {
            const float* in = static_cast<const float*>(data) + lo;
            for (std::int64_t i = 0; i < n; ++i) out[i] = T(in[i]);
            break;
        }
        case Storage::bf16: {
            const std::uint16_t* in = static_cast<const std::uint16_t*>(data) + lo;
            for (std::int64_t i = 0; i < n; ++i) out[i] = T(from_bf16(in[i]));
            break;
        }
        case Storage::f16: {
            const std::uint16_t* in = static_cast<const std::uint16_t*>(data) + lo;
            if constexpr (std::is_same_v<T, float>) {
                widen_f16(in, out, n);
            } else {
                for (std::int64_t i = 0; i < n; ++i) out[i] = T(from_f16(in[i]));
            }
            break;
        }
        case Storage::q8_signed:
        case Storage::q8_unsigned: dequantize(x, lo, n, out); break;
        case Storage::q4_signed:
        case Storage::q4_unsigned: dequantize_q4(x, lo, n, out); break;
        default: break;
    }
}

// Elements [lo, lo + n) of x = in[0..n), rounded to x's storage (as for widen).
template <class T>
inline void narrow(const T* __restrict in, const Operand& x, std::int64_t lo, std::int64_t n) {
    void* data = x.data;
    switch (x.storage) {
        case Storage::f32: {
            float* out = static_cast<float*>(data) + lo;
            for (std::int64_t i = 0; i < n; ++i) out[i] = float(in[i]);
            break;
        }
        case Storage::bf16: {
            std::uint16_t* out = static_cast<std::uint16_t*>(data) + lo;
            if constexpr (std::is_same_v<T, float>) {
                narrow_bf16(in, out, n);
            } else {
                for (std::int64_t i = 0; i < n; ++i) out[i] = to_bf16(float(in[i]));
            }
            break;
        }
        case Storage::f16: {
            std::uint16_t* out = static_cast<std::uint16_t*>(data) + lo;
            if constexpr (std::is_same_v<T, float>) {
                narrow_f16(in, out, n);
            } else {
                for (std::int64_t i = 0; i < n; ++i) out[i] = to_f16(float(in[i]));
            }
            break;
        }
        case Storage::q8_signed:
        case Storage::q8_unsigned: quantize(in, x, lo, n); break;
        case Storage::q4_signed:
        case Storage::q4_unsigned: quantize_q4(in, x, lo, n); break;
        default: break;
    }
}

}  // namespace lrfast::LRFAST_ISA_NS
