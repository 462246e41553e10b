// The tile layer: tensors whose arrays mix storages (16-bit params, grads or
// states; q8 and q4 states; float32 or bfloat16 states of a float64 param).
//
// Such a tensor is processed kTile elements at a time: each array that does
// not hold the arithmetic type T is widened into a T buffer, the very update
// kernel of all-T tensors runs on the buffers (and on the arrays that do hold
// T, in place), and the written buffers are rounded back to their storage.
// The maths stays in one place, and the result is by construction that of
// the T kernel on widened copies, each written array rounded to its storage.
// q8 and q4 states are dequantized and re-quantized the same way (tiles hold
// whole 256-blocks), and with stochastic_rounding a 16-bit param rounds with the
// random bits of its elements' call positions, a 16-bit state that holds
// weights (schedule-free's z) with those of its own stream (kWeightStream).
#include "convert.hpp"
#include "rounding.hpp"

namespace lrfast::LRFAST_ISA_NS {

constexpr int kGrad = 1;  // the one operand an update only reads

// The kernel that runs a tensor of bfloat16 arrays directly, converting in
// its loop (same bits as the tiles), if the optimizer has one.
template <class P>
constexpr UpdateFn<P, Bf16> bf16_kernel = nullptr;
template <>
constexpr UpdateFn<AdamParams, Bf16> bf16_kernel<AdamParams> = &adam_bf16;

// The state slots an update only reads, a bit each (slot k: bit k - 2), whose
// buffers are not written back: schedule-free's eval()/train() reads z.
template <class P>
constexpr unsigned read_only_states = 0;
template <>
constexpr unsigned read_only_states<ScheduleFreeLerpParams> = 1;

// The state slots that hold weights, a bit each as above: schedule-free's z,
// which rounds stochastically as its param does.
template <class P>
constexpr unsigned weight_states = 0;
template <>
constexpr unsigned weight_states<ScheduleFreeSgdParams> = 1;
template <>
constexpr unsigned weight_states<ScheduleFreeAdamwParams> = 1;

static bool is_16bit(Storage s) { return s == Storage::bf16 || s == Storage::f16; }

static bool all_bf16(const Operand* x) {
    for (int k = 0; k < kOperands; ++k)
        if (x[k].data != nullptr && x[k].storage != Storage::bf16) return false;
    return true;
}

template <class T, class P>
static void tiled(UpdateFn<P, T> update, const P& hp, const MixedTensor& tensor,
                  std::int64_t lo, std::int64_t n) {
    const Operand* x = tensor.x;
    // Stochastic rounding applies to 16-bit params and weight states
    // (arithmetic in float); `stochastic` says whether the param rounds so.
    const bool rounds = std::is_same_v<T, float> && hp.stochastic_rounding != 0;
    const bool stochastic = rounds && is_16bit(x[0].storage);
    if constexpr (std::is_same_v<T, float> && bf16_kernel<P> != nullptr) {
        if (!stochastic && all_bf16(x)) {
            Bf16* s[3];
            for (int k = 0; k < 3; ++k)
                s[k] = x[k + 2].data == nullptr ? nullptr : static_cast<Bf16*>(x[k + 2].data) + lo;
            bf16_kernel<P>(hp, static_cast<Bf16*>(x[0].data) + lo,
                           static_cast<const Bf16*>(x[1].data) + lo, s, n);
            return;
        }
    }
    const std::uint32_t seed_key = std::uint32_t(hp.sr_key);
    alignas(64) T buffer[kOperands][kTile];
    alignas(64) std::uint32_t random[kTile];
    for (std::int64_t at = 0; at < n; at += kTile) {
        const std::int64_t m = n - at < kTile ? n - at : kTile;
        T* v[kOperands];
        for (int k = 0; k < kOperands; ++k) {
            if (x[k].data == nullptr) {
                v[k] = nullptr;
            } else if (x[k].storage == own_storage<T>()) {
                v[k] = static_cast<T*>(x[k].data) + lo + at;
            } else {
                widen(x[k], lo + at, m, buffer[k]);
                v[k] = buffer[k];
            }
        }
        update(hp, v[0], v[1], v + 2, m);
        for (int k = 0; k < kOperands; ++k) {
            const bool state = k > kGrad;
            if (k == kGrad || (state && (read_only_states<P> >> (k - 2)) & 1) || v[k] != buffer[k])
                continue;
            const bool weights = state && (weight_states<P> >> (k - 2)) & 1;
            if constexpr (std::is_same_v<T, float>) {
                if (rounds && (k == 0 || weights) && is_16bit(x[k].storage)) {
                    narrow_stochastic(buffer[k], x[k], lo + at, m,
                                      weights ? seed_key ^ kWeightStream : seed_key,
                                      tensor.position + lo + at, random);
                    continue;
                }
            }
            narrow(buffer[k], x[k], lo + at, m);
        }
    }
}

#define LRFAST_OPTIMIZER(name, P, nstates)                                                \
    template <class T>                                                                    \
    void name##_mixed(const P& hp, const MixedTensor& t, std::int64_t lo, std::int64_t n) { \
        tiled<T, P>(&name##_update<T>, hp, t, lo, n);                                     \
    }                                                                                     \
    template void name##_mixed<float>(const P&, const MixedTensor&, std::int64_t,         \
                                      std::int64_t);                                      \
    template void name##_mixed<double>(const P&, const MixedTensor&, std::int64_t,        \
                                       std::int64_t);
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER

// Norms of 16-bit gradients: the float norm kernel per tile, the tiles' partials
// summed (or maximised) in order, so the bits depend only on the tensor sizes.
NormPartial half_norm(const Operand& x, std::int64_t lo, std::int64_t n, NormKind kind,
                      double p) {
    alignas(64) float buffer[kTile];
    NormPartial out{0.0, 0};
    for (std::int64_t at = 0; at < n; at += kTile) {
        const std::int64_t m = n - at < kTile ? n - at : kTile;
        widen(x, lo + at, m, buffer);
        const NormPartial part = norm_partial<float>(buffer, m, kind, p);
        out.value = kind == NormKind::linf ? (part.value > out.value ? part.value : out.value)
                                           : out.value + part.value;
        out.nans += part.nans;
    }
    return out;
}

// In-place clips of 16-bit gradients: float arithmetic, rounded back.
template <class F>
static void half_inplace(const Operand& x, std::int64_t lo, std::int64_t n, F kernel) {
    alignas(64) float buffer[kTile];
    for (std::int64_t at = 0; at < n; at += kTile) {
        const std::int64_t m = n - at < kTile ? n - at : kTile;
        widen(x, lo + at, m, buffer);
        kernel(buffer, m);
        narrow(buffer, x, lo + at, m);
    }
}

void half_scale(const Operand& x, std::int64_t lo, std::int64_t n, double factor) {
    half_inplace(x, lo, n, [factor](float* b, std::int64_t m) { scale<float>(b, m, factor); });
}

void half_clamp(const Operand& x, std::int64_t lo, std::int64_t n, double limit) {
    half_inplace(x, lo, n, [limit](float* b, std::int64_t m) { clamp<float>(b, m, limit); });
}

// The bandwidth probe of a mixed tensor moves the bytes its update moves, as
// raw words: each written array is read and written back as a ^ (g & zero),
// with a zero read from a volatile, so the compiler must keep every read.
static volatile std::uint32_t g_zero = 0;

template <class W>
static void xor_words(void* data, std::int64_t lo, const std::uint32_t* __restrict mask,
                      std::int64_t m) {
    W* __restrict a = static_cast<W*>(data) + lo;
    for (std::int64_t i = 0; i < m; ++i) a[i] = a[i] ^ W(mask[i]);
}

template <class W>
static void grad_words(const void* data, std::int64_t lo, std::uint32_t zero,
                       std::uint32_t* __restrict mask, std::int64_t m) {
    const W* __restrict g = static_cast<const W*>(data) + lo;
    for (std::int64_t i = 0; i < m; ++i) mask[i] = std::uint32_t(g[i]) & zero;
}

// Calls visit(W{}, data, first, count) for each array of words W that holds
// an operand's elements [lo, lo + m): its values, or a q8 or q4 state's codes
// and the absmax of their blocks (two q4 codes a byte; a tile starts on one).
template <class F>
static void for_each_words(const Operand& x, std::int64_t lo, std::int64_t m, F visit) {
    switch (x.storage) {
        case Storage::f64: visit(std::uint64_t{}, x.data, lo, m); break;
        case Storage::f32: visit(std::uint32_t{}, x.data, lo, m); break;
        case Storage::q8_signed:
        case Storage::q8_unsigned:
            visit(std::uint8_t{}, x.data, lo, m);
            visit(std::uint32_t{}, x.absmax, lo / kQ8Block, (m + kQ8Block - 1) / kQ8Block);
            break;
        case Storage::q4_signed:
        case Storage::q4_unsigned:
            visit(std::uint8_t{}, x.data, lo / 2, (m + 1) / 2);
            visit(std::uint32_t{}, x.absmax, lo / kQ4Block, (m + kQ4Block - 1) / kQ4Block);
            break;
        default: visit(std::uint16_t{}, x.data, lo, m);
    }
}

// Read only: every operand's words folded by xor into a volatile.
static thread_local volatile std::uint64_t t_fold;

template <class W>
static std::uint64_t fold_words(const void* data, std::int64_t lo, std::int64_t m) {
    const W* __restrict a = static_cast<const W*>(data) + lo;
    W acc = 0;
    for (std::int64_t i = 0; i < m; ++i) acc ^= a[i];
    return acc;
}

void mixed_stream(const Operand* x, std::int64_t lo, std::int64_t n, bool write) {
    if (!write) {  // tile by tile, so the operands' streams run together
        std::uint64_t fold = 0;
        for (std::int64_t at = 0; at < n; at += kTile) {
            const std::int64_t m = n - at < kTile ? n - at : kTile;
            for (int k = 0; k < kOperands; ++k)
                if (x[k].data != nullptr)
                    for_each_words(x[k], lo + at, m, [&](auto word, void* data, std::int64_t first,
                                                         std::int64_t count) {
                        fold ^= fold_words<decltype(word)>(data, first, count);
                    });
        }
        t_fold = fold;
        return;
    }
    const std::uint32_t zero = g_zero;
    alignas(64) std::uint32_t mask[kTile];
    for (std::int64_t at = 0; at < n; at += kTile) {
        const std::int64_t m = n - at < kTile ? n - at : kTile;
        switch (x[kGrad].storage) {
            case Storage::f64: grad_words<std::uint64_t>(x[kGrad].data, lo + at, zero, mask, m); break;
            case Storage::f32: grad_words<std::uint32_t>(x[kGrad].data, lo + at, zero, mask, m); break;
            default: grad_words<std::uint16_t>(x[kGrad].data, lo + at, zero, mask, m);
        }
        for (int k = 0; k < kOperands; ++k)
            if (k != kGrad && x[k].data != nullptr)
                for_each_words(x[k], lo + at, m, [&](auto word, void* data, std::int64_t first,
                                                     std::int64_t count) {
                    xor_words<decltype(word)>(data, first, mask, count);
                });
    }
}

}  // namespace lrfast::LRFAST_ISA_NS
