// Prodigy (Mishchenko & Defazio 2024; prodigyopt's Prodigy), in two passes.
//
// The reduction pass, over the slice [::slice_p] of each flattened tensor:
//   g = grad * grad_scale (+ weight_decay * p, coupled decay)
//   dot += g * (p0 - p)                          (products and sums in double)
//   s = beta3 * s + s_rate * g,   s_rate = (d / d0) * (safeguard_warmup ? d : dlr)
//   s_abs += |s|                                 (the new s, in double)
// The sums run over kLanes lanes folded in a fixed order (kernel.hpp), per
// range of the driver's fixed blocks, so they are bitwise independent of the
// thread count and the ISA.
//
// The update pass, per element, with d the estimate the step started with:
//   g = grad * grad_scale (+ weight_decay * p, coupled decay)
//   m = beta1 * m + d * (1 - beta1) * g                     (beta1 > 0)
//   v = beta2 * v + d * d * (1 - beta2) * g * g
//   p = p + (-weight_decay * dlr) * p                       (decoupled decay)
//   p = p - dlr * m / (sqrt(v) + d_new * eps)               (beta1 > 0)
//   p = p - dlr * d_new * g / (sqrt(v) + d_new * eps)       (beta1 == 0)
#include "convert.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool COUPLED, bool DECOUPLED, bool FIRST_MOMENT>
static void update_loop(const ProdigyParams& hp, T* __restrict p, const T* __restrict g,
                        T* __restrict m, T* __restrict v, std::int64_t n) {
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay), decay = T(-hp.weight_decay * hp.dlr);
    const T beta1 = T(hp.beta1), m_rate = T(hp.d * (1.0 - hp.beta1));
    const T beta2 = T(hp.beta2), v_rate = T(hp.d * hp.d * (1.0 - hp.beta2));
    const T eps = T(hp.d_new * hp.eps), neg_dlr = T(-hp.dlr), neg_dlr_d = T(-hp.dlr * hp.d_new);
    for (std::int64_t i = 0; i < n; ++i) {
        T pi = p[i], d = g[i] * gs;
        if constexpr (COUPLED) d = d + wd * pi;
        const T vi = v[i] * beta2 + v_rate * d * d;
        v[i] = vi;
        const T denom = root(vi) + eps;
        if constexpr (DECOUPLED) pi = pi + decay * pi;
        if constexpr (FIRST_MOMENT) {
            const T mi = m[i] * beta1 + m_rate * d;
            m[i] = mi;
            p[i] = pi + neg_dlr * (mi / denom);
        } else {
            p[i] = pi + neg_dlr_d * (d / denom);
        }
    }
}

template <class T>
void prodigy_update(const ProdigyParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    const bool decay = hp.weight_decay != 0;
    branch(
        [&](auto coupled, auto decoupled, auto first_moment) {
            update_loop<T, coupled.value, decoupled.value, first_moment.value>(hp, p, g, s[0],
                                                                                s[1], n);
        },
        decay && hp.decouple == 0, decay && hp.decouple != 0, hp.beta1 > 0);
}

LRFAST_INSTANTIATE_UPDATE(prodigy, ProdigyParams)

// STRIDE1: the slice is the whole tensor (slice_p == 1), a loop the compiler
// vectorises; otherwise p and g are read every `stride` elements.
template <class T, bool COUPLED, bool STRIDE1>
static ProdigySums reduce_loop(const ProdigyReduceParams& hp, const T* __restrict p,
                               const T* __restrict g, std::int64_t stride, T* __restrict s,
                               const T* __restrict p0, std::int64_t n) {
    const std::int64_t step = STRIDE1 ? 1 : stride;
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay), beta3 = T(hp.beta3);
    const T s_rate = T((hp.d / hp.d0) * (hp.safeguard_warmup != 0 ? hp.d : hp.dlr));
    double dot[kLanes] = {}, s_abs[kLanes] = {};
    auto visit = [&](int j, std::int64_t i) {
        const T pi = p[i * step];
        T d = g[i * step] * gs;
        if constexpr (COUPLED) d = d + wd * pi;
        dot[j] += double(d) * (double(p0[i]) - double(pi));
        const T si = s[i] * beta3 + s_rate * d;
        s[i] = si;
        s_abs[j] += __builtin_fabs(double(si));
    };
    std::int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) visit(j, i + j);
    for (int j = 0; i + j < n; ++j) visit(j, i + j);
    return {fold_lanes(dot), fold_lanes(s_abs)};
}

template <class T>
ProdigySums prodigy_reduce(const ProdigyReduceParams& hp, const T* p, const T* g,
                           std::int64_t stride, T* s, const T* p0, std::int64_t n) {
    ProdigySums out{0.0, 0.0};
    branch(
        [&](auto coupled, auto stride1) {
            out = reduce_loop<T, coupled.value, stride1.value>(hp, p, g, stride, s, p0, n);
        },
        hp.weight_decay != 0 && hp.decouple == 0, stride == 1);
    return out;
}

template ProdigySums prodigy_reduce<float>(const ProdigyReduceParams&, const float*, const float*,
                                           std::int64_t, float*, const float*, std::int64_t);
template ProdigySums prodigy_reduce<double>(const ProdigyReduceParams&, const double*,
                                            const double*, std::int64_t, double*, const double*,
                                            std::int64_t);

// Mixed tensors (16-bit params or grads, float32/bfloat16/q8 s, p0 of the
// param's dtype), as the tile layer runs the updates (tiles.cpp): kTile
// slice elements at a time, each array not of type T widened into a buffer
// (p and g gathered from the slice), the T kernel run on the buffers, and s
// rounded back to its storage. The tiles' sums add up in order. A tensor with
// a q8 s gets `lo` a multiple of kQ8Block (the driver's blocks), so its tiles
// hold whole q8 blocks.

// Elements first, first + stride, ... (m of them) of x as T: x's own memory
// where it holds T contiguously, else `buffer` filled.
template <class T>
static T* gathered(const Operand& x, std::int64_t first, std::int64_t stride, std::int64_t m,
                   T* buffer) {
    if (x.storage == own_storage<T>()) {
        T* data = static_cast<T*>(x.data) + first;
        if (stride == 1) return data;
        for (std::int64_t i = 0; i < m; ++i) buffer[i] = data[i * stride];
    } else if (stride == 1) {
        widen(x, first, m, buffer);
    } else {
        for (std::int64_t i = 0; i < m; ++i) widen(x, first + i * stride, 1, buffer + i);
    }
    return buffer;
}

template <class T>
ProdigySums prodigy_reduce_mixed(const ProdigyReduceParams& hp, const MixedTensor& t,
                                 std::int64_t lo, std::int64_t n) {
    const std::int64_t stride = std::int64_t(hp.slice_p);
    const Operand &param = t.x[0], &grad = t.x[1], &s = t.x[2], &p0 = t.x[3];
    alignas(64) T buffer[4][kTile];
    ProdigySums out{0.0, 0.0};
    for (std::int64_t at = lo; at < lo + n; at += kTile) {
        const std::int64_t m = lo + n - at < kTile ? lo + n - at : kTile;
        T* sv = gathered(s, at, 1, m, buffer[2]);
        const ProdigySums part = prodigy_reduce<T>(
            hp, gathered(param, at * stride, stride, m, buffer[0]),
            gathered(grad, at * stride, stride, m, buffer[1]), 1, sv,
            gathered(p0, at, 1, m, buffer[3]), m);
        if (sv == buffer[2]) narrow(sv, s, at, m);
        out.dot += part.dot;
        out.s_abs += part.s_abs;
    }
    return out;
}

template ProdigySums prodigy_reduce_mixed<float>(const ProdigyReduceParams&, const MixedTensor&,
                                                 std::int64_t, std::int64_t);
template ProdigySums prodigy_reduce_mixed<double>(const ProdigyReduceParams&, const MixedTensor&,
                                                  std::int64_t, std::int64_t);

}  // namespace lrfast::LRFAST_ISA_NS
