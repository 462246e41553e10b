// Stochastic rounding of float to bfloat16 and float16, bit for bit the rules
// of lrfast.precision.round_stochastic, with the counter-based random numbers
// of lrfast.precision.random_bits. Only 32-bit multiplies, shifts and
// compares, so the loops vectorise on every ISA.
#pragma once

#include <cstdint>

#include "convert.hpp"

namespace lrfast::LRFAST_ISA_NS {

// Chris Wellons' lowbias32.
inline std::uint32_t lowbias32(std::uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// out[j] = R(position + j) for j < n, with seed_key the host's key of (seed,
// step): R(i) = H(H(seed_key ^ hi(i)) + lo(i) * 0x9E3779B9). The inner key
// changes only every 2^32 positions, so each run of one hi(i) computes it once.
inline void random_bits(std::uint32_t seed_key, std::int64_t position, std::int64_t n,
                        std::uint32_t* __restrict out) {
    std::int64_t j = 0;
    while (j < n) {
        const std::uint64_t at = std::uint64_t(position + j);
        const std::uint64_t run_end = ((at >> 32) + 1) << 32;
        const std::int64_t m = std::int64_t(run_end - at) < n - j ? std::int64_t(run_end - at) : n - j;
        const std::uint32_t key = lowbias32(seed_key ^ std::uint32_t(at >> 32));
        const std::uint32_t lo = std::uint32_t(at);
        for (std::int64_t i = 0; i < m; ++i)
            out[j + i] = lowbias32(key + (lo + std::uint32_t(i)) * 0x9e3779b9u);
        j += m;
    }
}

// A state that holds weights (schedule-free's z) draws R(2^63 + i) for its
// element at position i, apart from every param's bits: positions stay below
// 2^63, so hi(2^63 + i) = hi(i) ^ 2^31, and its key is the call's XOR this.
constexpr std::uint32_t kWeightStream = 0x80000000u;

inline std::uint32_t bits_of(float f) {
    std::uint32_t u;
    __builtin_memcpy(&u, &f, sizeof u);
    return u;
}

// bfloat16: the truncation, plus one ulp when (R >> 16) < the dropped bits;
// NaN keeps its high half with the quiet bit set.
inline void stochastic_bf16(const float* __restrict in, const std::uint32_t* __restrict r,
                            std::uint16_t* __restrict out, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        const std::uint32_t u = bits_of(in[i]);
        const std::uint32_t up = (r[i] >> 16) < (u & 0xffffu) ? 1u : 0u;
        const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
        out[i] = std::uint16_t(nan ? (u >> 16) | 0x40u : (u >> 16) + up);
    }
}

// float16. Normal range (2^-14 <= |x| < 2^16): the truncation (exponent
// rebiased, 13 mantissa bits dropped) plus one ulp when (R >> 19) < the
// dropped bits. Subnormal range: ulps of 2^-24; |x| * 2^24 is exact, its
// integer part is the truncation and the fraction f gives one ulp more when
// R < f * 2^32 (exact in double). |x| >= 2^16 gives inf; NaN rounds as to_f16.
inline std::uint16_t stochastic_f16_one(float x, std::uint32_t r) {
    const std::uint32_t u = bits_of(x);
    const std::uint32_t a = u & 0x7fffffffu;
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    if (a > 0x7f800000u) return to_f16(x);
    if (a >= 0x47800000u) return std::uint16_t(sign | 0x7c00u);
    if (a >= 0x38800000u) {
        const std::uint32_t truncated = (a - (112u << 23)) >> 13;
        return std::uint16_t(sign | (truncated + ((r >> 19) < (a & 0x1fffu) ? 1u : 0u)));
    }
    float ax;
    __builtin_memcpy(&ax, &a, sizeof ax);
    const float scaled = ax * 16777216.0f;  // 2^24
    const std::uint32_t whole = std::uint32_t(scaled);
    const double threshold = double(scaled - float(whole)) * 4294967296.0;
    return std::uint16_t(sign | (whole + (double(r) < threshold ? 1u : 0u)));
}

// Elements [lo, lo + n) of the 16-bit param x = in[0..n), rounded
// stochastically; `position` is the call position of element lo.
inline void narrow_stochastic(const float* __restrict in, const Operand& x, std::int64_t lo,
                              std::int64_t n, std::uint32_t seed_key, std::int64_t position,
                              std::uint32_t* __restrict r) {
    random_bits(seed_key, position, n, r);
    std::uint16_t* out = static_cast<std::uint16_t*>(x.data) + lo;
    if (x.storage == Storage::bf16) {
        stochastic_bf16(in, r, out, n);
    } else {
        for (std::int64_t i = 0; i < n; ++i) out[i] = stochastic_f16_one(in[i], r[i]);
    }
}

}  // namespace lrfast::LRFAST_ISA_NS
