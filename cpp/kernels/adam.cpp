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
//
// A tensor whose param, grad and states are all bfloat16 runs the same loop
// on its arrays directly: each element is widened to float on load and
// rounded to nearest even on store (load/store in convert.hpp), exactly what
// the tile layer does through its float buffers, without the buffers, so the
// conversions overlap the divisions and square roots.
#include "convert.hpp"

namespace lrfast::LRFAST_ISA_NS {

// T: the arithmetic type; S: the storage of every array (T, or Bf16 with T float).
template <class T, class S, bool COUPLED_WD, bool AMSGRAD>
static void adam_loop(const AdamParams& hp, S* __restrict p, const S* __restrict g,
                      S* __restrict m, S* __restrict v, S* __restrict vmax, std::int64_t n) {
    const bool decay_param = hp.decoupled != 0 && hp.weight_decay != 0;
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay);
    const T param_decay = T(decay_param ? 1.0 - hp.lr * hp.weight_decay : 1.0);
    const T w1 = T(1.0 - hp.beta1), beta2 = T(hp.beta2), w2 = T(1.0 - hp.beta2);
    const T inv_bc2 = T(1.0 / hp.bias_correction2_sqrt), eps = T(hp.eps);
    const T neg_step = T(-hp.step_size);
    for (std::int64_t i = 0; i < n; ++i) {
        const T pi = load(p[i]), mi_old = load(m[i]);
        T d = load(g[i]) * gs;
        if constexpr (COUPLED_WD) d = d + wd * pi;
        const T mi = mi_old + w1 * (d - mi_old);
        T vi = load(v[i]) * beta2 + w2 * d * d;
        store(m[i], mi);
        store(v[i], vi);
        if constexpr (AMSGRAD) {
            const T vmax_i = load(vmax[i]);
            vi = vmax_i > vi ? vmax_i : vi;
            store(vmax[i], vi);
        }
        const T denom = root(vi) * inv_bc2 + eps;
        store(p[i], pi * param_decay + neg_step * (mi / denom));
    }
}

template <class T>
void adam_update(const AdamParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    const bool coupled_wd = hp.decoupled == 0 && hp.weight_decay != 0;
    branch(
        [&](auto coupled, auto amsgrad) {
            adam_loop<T, T, coupled.value, amsgrad.value>(hp, p, g, s[0], s[1], s[2], n);
        },
        coupled_wd, hp.amsgrad != 0);
}

void adam_bf16(const AdamParams& hp, Bf16* p, const Bf16* g, Bf16* const* s, std::int64_t n) {
    const bool coupled_wd = hp.decoupled == 0 && hp.weight_decay != 0;
    branch(
        [&](auto coupled, auto amsgrad) {
            adam_loop<float, Bf16, coupled.value, amsgrad.value>(hp, p, g, s[0], s[1], s[2], n);
        },
        coupled_wd, hp.amsgrad != 0);
}

LRFAST_INSTANTIATE_UPDATE(adam, AdamParams)

}  // namespace lrfast::LRFAST_ISA_NS
