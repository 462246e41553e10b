// NAdam (torch.optim.NAdam, single-tensor formulas), in its order:
//   p = p * (1 - lr * weight_decay)                      (decoupled_weight_decay)
//   g = grad * grad_scale (+ weight_decay * p otherwise)
//   m = m + (1 - beta1) * (g - m)                        (torch's lerp)
//   v = beta2 * v + (1 - beta2) * g * g
//   denom = sqrt(v / (1 - beta2^step)) + eps
//   p = p + grad_coef * g / denom
//   p = p + avg_coef * m / denom
// with grad_coef = -lr * (1 - mu) / (1 - mu_product) and avg_coef =
// -lr * mu_next / (1 - mu_product * mu_next), computed in double on the host
// from the momentum schedule. The two param updates stay two additions, each
// (coef * x) / denom as torch's addcdiv rounds it.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool COUPLED_WD, bool DECOUPLED_WD>
static void nadam_loop(const NadamParams& hp, T* __restrict p, const T* __restrict g,
                       T* __restrict m, T* __restrict v, std::int64_t n) {
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay), decay = T(1.0 - hp.lr * hp.weight_decay);
    const T w1 = T(1.0 - hp.beta1), beta2 = T(hp.beta2), w2 = T(1.0 - hp.beta2);
    const T bc2 = T(hp.bias_correction2), eps = T(hp.eps);
    const T grad_coef = T(hp.grad_coef), avg_coef = T(hp.avg_coef);
    for (std::int64_t i = 0; i < n; ++i) {
        T pi = p[i];
        if constexpr (DECOUPLED_WD) pi = pi * decay;
        T d = g[i] * gs;
        if constexpr (COUPLED_WD) d = d + wd * pi;
        const T mi = m[i] + w1 * (d - m[i]);
        const T vi = v[i] * beta2 + w2 * d * d;
        const T denom = root(vi / bc2) + eps;
        pi = pi + grad_coef * d / denom;
        p[i] = pi + avg_coef * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

template <class T>
void nadam_update(const NadamParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    const bool wd = hp.weight_decay != 0;
    branch(
        [&](auto coupled, auto decoupled) {
            nadam_loop<T, coupled.value, decoupled.value>(hp, p, g, s[0], s[1], n);
        },
        wd && hp.decoupled == 0, wd && hp.decoupled != 0);
}

LRFAST_INSTANTIATE_UPDATE(nadam, NadamParams)

}  // namespace lrfast::LRFAST_ISA_NS
