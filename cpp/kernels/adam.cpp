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
// A tensor whose param, grad and states are all bfloat16 runs the same
// arithmetic on its arrays directly: each element is widened to float on load
// and rounded to nearest even on store (convert.hpp), exactly what the tile
// layer does through its float buffers, without the buffers, so the
// conversions overlap the divisions and square roots. AVX-512 runs it on 32
// elements at a time, as two vectors (load_bf16x32), the rest element by element.
#include "convert.hpp"

namespace lrfast::LRFAST_ISA_NS {

// One element's update, for T = float, double or F32x16 (16 floats): p, m, v
// and vmax (with AMSGRAD) are updated in place.
template <class T, bool COUPLED_WD, bool AMSGRAD>
struct AdamStep {
    T gs, wd, param_decay, w1, beta2, w2, inv_bc2, eps, neg_step;
    explicit AdamStep(const AdamParams& hp)
        : gs(hp.grad_scale), wd(hp.weight_decay),
          param_decay(hp.decoupled != 0 && hp.weight_decay != 0 ? 1.0 - hp.lr * hp.weight_decay : 1.0),
          w1(1.0 - hp.beta1), beta2(hp.beta2), w2(1.0 - hp.beta2),
          inv_bc2(1.0 / hp.bias_correction2_sqrt), eps(hp.eps), neg_step(-hp.step_size) {}

    void operator()(T& p, T g, T& m, T& v, T& vmax) const {
        T d = g * gs;
        if constexpr (COUPLED_WD) d = d + wd * p;
        m = m + w1 * (d - m);
        v = v * beta2 + w2 * d * d;
        T vi = v;
        if constexpr (AMSGRAD) vi = vmax = maximum(vmax, v);
        const T denom = root(vi) * inv_bc2 + eps;
        p = p * param_decay + neg_step * (m / denom);
    }
};

// T: the arithmetic type; S: the storage of every array (T, or Bf16 with T float).
template <class T, class S, bool COUPLED_WD, bool AMSGRAD>
static void adam_loop(const AdamParams& hp, S* __restrict p, const S* __restrict g,
                      S* __restrict m, S* __restrict v, S* __restrict vmax, std::int64_t n) {
    const AdamStep<T, COUPLED_WD, AMSGRAD> step(hp);
    std::int64_t i = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<S, Bf16>) {
        const AdamStep<F32x16, COUPLED_WD, AMSGRAD> step16(hp);
        for (; i + 32 <= n; i += 32) {
            F32x16 p2[2], g2[2], m2[2], v2[2], vmax2[2];
            load_bf16x32(p + i, p2[0], p2[1]);
            load_bf16x32(g + i, g2[0], g2[1]);
            load_bf16x32(m + i, m2[0], m2[1]);
            load_bf16x32(v + i, v2[0], v2[1]);
            if constexpr (AMSGRAD) load_bf16x32(vmax + i, vmax2[0], vmax2[1]);
            for (int k = 0; k < 2; ++k) step16(p2[k], g2[k], m2[k], v2[k], vmax2[k]);
            store_bf16x32(p + i, p2[0], p2[1]);
            store_bf16x32(m + i, m2[0], m2[1]);
            store_bf16x32(v + i, v2[0], v2[1]);
            if constexpr (AMSGRAD) store_bf16x32(vmax + i, vmax2[0], vmax2[1]);
        }
    }
#endif
    for (; i < n; ++i) {
        T pi = load(p[i]), mi = load(m[i]), vi = load(v[i]), vmax_i = T(0);
        if constexpr (AMSGRAD) vmax_i = load(vmax[i]);
        step(pi, load(g[i]), mi, vi, vmax_i);
        store(p[i], pi);
        store(m[i], mi);
        store(v[i], vi);
        if constexpr (AMSGRAD) store(vmax[i], vmax_i);
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
