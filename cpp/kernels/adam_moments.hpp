// What NAdam and RAdam share with torch's Adam, in torch's order: the weight
// decay of either kind, then the two moments. with_moments runs it over a
// tensor and hands each element's param (decayed), gradient and new moments
// to `update`, which returns the new param; each kernel file supplies only
// that. The weight-decay options are compile-time flags, one loop each.
#pragma once

#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool COUPLED_WD, bool DECOUPLED_WD, class P, class Update>
static void moments_loop(const P& hp, T* __restrict p, const T* __restrict g, T* __restrict m,
                         T* __restrict v, std::int64_t n, Update update) {
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay), decay = T(1.0 - hp.lr * hp.weight_decay);
    const T w1 = T(1.0 - hp.beta1), beta2 = T(hp.beta2), w2 = T(1.0 - hp.beta2);
    for (std::int64_t i = 0; i < n; ++i) {
        T pi = p[i];
        if constexpr (DECOUPLED_WD) pi = pi * decay;  // p *= 1 - lr * weight_decay
        T d = g[i] * gs;
        if constexpr (COUPLED_WD) d = d + wd * pi;
        const T mi = m[i] + w1 * (d - m[i]);  // torch's lerp
        const T vi = v[i] * beta2 + w2 * d * d;
        p[i] = update(pi, d, mi, vi);
        m[i] = mi;
        v[i] = vi;
    }
}

// hp: a Params struct with lr, beta1, beta2, weight_decay, grad_scale and the
// flag `decoupled`; m and v the two state arrays.
template <class T, class P, class Update>
static void with_moments(const P& hp, T* p, const T* g, T* m, T* v, std::int64_t n,
                         Update update) {
    const bool wd = hp.weight_decay != 0;
    branch(
        [&](auto coupled, auto decoupled) {
            moments_loop<T, coupled.value, decoupled.value>(hp, p, g, m, v, n, update);
        },
        wd && hp.decoupled == 0, wd && hp.decoupled != 0);
}

}  // namespace lrfast::LRFAST_ISA_NS
