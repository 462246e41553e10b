// SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD):
//   g = grad * grad_scale (+ weight_decay * p)
//   b = g on the first step, else momentum * b + (1 - dampening) * g
//   g = g + momentum * b (Nesterov) or b
//   p = p - lr * g
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool WD, bool MOMENTUM, bool NESTEROV, bool FIRST>
static void sgd_loop(const SgdParams& hp, T* __restrict p, const T* __restrict g,
                     T* __restrict buf, std::int64_t n) {
    const T neg_lr = T(-hp.lr), gs = T(hp.grad_scale), wd = T(hp.weight_decay);
    const T mom = T(hp.momentum), one_minus_damp = T(1.0 - hp.dampening);
    for (std::int64_t i = 0; i < n; ++i) {
        T d = g[i] * gs;
        if constexpr (WD) d = d + wd * p[i];
        if constexpr (MOMENTUM) {
            T b;
            if constexpr (FIRST) b = d;
            else b = buf[i] * mom + one_minus_damp * d;
            buf[i] = b;
            if constexpr (NESTEROV) d = d + mom * b;
            else d = b;
        }
        p[i] = p[i] + neg_lr * d;
    }
}

template <class T>
void sgd_update(const SgdParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    branch(
        [&](auto wd, auto momentum, auto nesterov, auto first) {
            sgd_loop<T, wd.value, momentum.value, nesterov.value, first.value>(hp, p, g, s[0], n);
        },
        hp.weight_decay != 0, hp.momentum != 0, hp.nesterov != 0, hp.first_step != 0);
}

LRFAST_INSTANTIATE_UPDATE(sgd, SgdParams)

}  // namespace lrfast::LRFAST_ISA_NS
