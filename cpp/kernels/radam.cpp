// RAdam (torch.optim.RAdam, single-tensor formulas), in its order:
//   p = p * (1 - lr * weight_decay)                      (decoupled_weight_decay)
//   g = grad * grad_scale (+ weight_decay * p otherwise)
//   m = m + (1 - beta1) * (g - m)                        (torch's lerp)
//   v = beta2 * v + (1 - beta2) * g * g
//   b = m / (1 - beta1^step)
//   p = p - b * lr * (sqrt(1 - beta2^step) / (sqrt(v) + eps)) * rect   if rectified
//   p = p - b * lr                                                     otherwise
// The rectification switch (rho_t > 5) and rect depend on the step alone: the
// host decides them in double, and each choice gets its own branch-free loop.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool COUPLED_WD, bool DECOUPLED_WD, bool RECTIFIED>
static void radam_loop(const RadamParams& hp, T* __restrict p, const T* __restrict g,
                       T* __restrict m, T* __restrict v, std::int64_t n) {
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay), decay = T(1.0 - hp.lr * hp.weight_decay);
    const T w1 = T(1.0 - hp.beta1), beta2 = T(hp.beta2), w2 = T(1.0 - hp.beta2);
    const T bc1 = T(hp.bias_correction1), bc2_sqrt = T(hp.bias_correction2_sqrt);
    const T eps = T(hp.eps), lr = T(hp.lr), rect = T(hp.rect);
    for (std::int64_t i = 0; i < n; ++i) {
        T pi = p[i];
        if constexpr (DECOUPLED_WD) pi = pi * decay;
        T d = g[i] * gs;
        if constexpr (COUPLED_WD) d = d + wd * pi;
        const T mi = m[i] + w1 * (d - m[i]);
        const T vi = v[i] * beta2 + w2 * d * d;
        const T b = mi / bc1;
        if constexpr (RECTIFIED)
            p[i] = pi - b * lr * (bc2_sqrt / (root(vi) + eps)) * rect;
        else
            p[i] = pi - b * lr;
        m[i] = mi;
        v[i] = vi;
    }
}

template <class T>
void radam_update(const RadamParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    const bool wd = hp.weight_decay != 0;
    branch(
        [&](auto coupled, auto decoupled, auto rectified) {
            radam_loop<T, coupled.value, decoupled.value, rectified.value>(hp, p, g, s[0], s[1],
                                                                           n);
        },
        wd && hp.decoupled == 0, wd && hp.decoupled != 0, hp.rectified != 0);
}

LRFAST_INSTANTIATE_UPDATE(radam, RadamParams)

}  // namespace lrfast::LRFAST_ISA_NS
