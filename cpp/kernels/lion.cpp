// Lion (Chen et al. 2023; lion-pytorch's Lion), in its order:
//   g = grad * grad_scale
//   p = p * (1 - lr * weight_decay)
//   c = beta1 * m + (1 - beta1) * g
//   p = p - lr * sign(c)
//   m = beta2 * m + (1 - beta2) * g
// The decay multiplies also when weight_decay == 0 (by 1, exact), as the
// reference does.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

// np.sign: -1, 0 or 1 (0 for -0.0 too), NaN for NaN. Selects, which vectorise.
template <class T>
static T sign_of(T c) {
    return c > 0 ? T(1) : (c < 0 ? T(-1) : (c == 0 ? T(0) : c));
}

template <class T>
void lion_update(const LionParams& hp, T* __restrict p, const T* __restrict g, T* const* s,
                 std::int64_t n) {
    T* __restrict m = s[0];
    const T gs = T(hp.grad_scale), decay = T(1.0 - hp.lr * hp.weight_decay), neg_lr = T(-hp.lr);
    const T beta1 = T(hp.beta1), w1 = T(1.0 - hp.beta1);
    const T beta2 = T(hp.beta2), w2 = T(1.0 - hp.beta2);
    for (std::int64_t i = 0; i < n; ++i) {
        const T d = g[i] * gs, mi = m[i];
        const T c = mi * beta1 + w1 * d;
        p[i] = p[i] * decay + neg_lr * sign_of(c);
        m[i] = mi * beta2 + w2 * d;
    }
}

LRFAST_INSTANTIATE_UPDATE(lion, LionParams)

}  // namespace lrfast::LRFAST_ISA_NS
