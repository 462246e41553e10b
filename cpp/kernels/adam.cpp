// Adam and AdamW (torch.optim.Adam / AdamW, single-tensor formulas):
//   g = grad * grad_scale (+ weight_decay * p, Adam only)
//   p = p * (1 - lr * weight_decay)                      (AdamW only)
//   m = m + (1 - beta1) * (g - m)                        (torch's lerp)
//   v = beta2 * v + (1 - beta2) * g * g
//   vmax = max(vmax, v) and use vmax for v               (amsgrad)
//   p = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
// with step_size = lr / (1 - beta1^step). The division by the bias correction
// is a multiplication by its reciprocal, computed in double on the host: it
// changes the result by at most an ulp and saves a division per element.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool COUPLED_WD, bool AMSGRAD>
static void adam_loop(const AdamParams& hp, T* __restrict p, const T* __restrict g,
                      T* __restrict m, T* __restrict v, T* __restrict vmax, std::int64_t n) {
    const bool decay_param = hp.decoupled != 0 && hp.weight_decay != 0;
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay);
    const T param_decay = T(decay_param ? 1.0 - hp.lr * hp.weight_decay : 1.0);
    const T w1 = T(1.0 - hp.beta1), beta2 = T(hp.beta2), w2 = T(1.0 - hp.beta2);
    const T inv_bc2 = T(1.0 / hp.bias_correction2_sqrt), eps = T(hp.eps);
    const T neg_step = T(-hp.step_size);
    for (std::int64_t i = 0; i < n; ++i) {
        T d = g[i] * gs;
        if constexpr (COUPLED_WD) d = d + wd * p[i];
        const T mi = m[i] + w1 * (d - m[i]);
        T vi = v[i] * beta2 + w2 * d * d;
        m[i] = mi;
        v[i] = vi;
        if constexpr (AMSGRAD) {
            vi = vmax[i] > vi ? vmax[i] : vi;
            vmax[i] = vi;
        }
        const T denom = root(vi) * inv_bc2 + eps;
        p[i] = p[i] * param_decay + neg_step * (mi / denom);
    }
}

template <class T>
void adam_update(const AdamParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    const bool coupled_wd = hp.decoupled == 0 && hp.weight_decay != 0;
    branch(
        [&](auto coupled, auto amsgrad) {
            adam_loop<T, coupled.value, amsgrad.value>(hp, p, g, s[0], s[1], s[2], n);
        },
        coupled_wd, hp.amsgrad != 0);
}

LRFAST_INSTANTIATE_UPDATE(adam, AdamParams)

}  // namespace lrfast::LRFAST_ISA_NS
