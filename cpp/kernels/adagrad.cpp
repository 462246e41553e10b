// Adagrad (torch.optim.Adagrad):
//   g = grad * grad_scale (+ weight_decay * p)
//   s = s + g * g
//   p = p - clr * g / (sqrt(s) + eps),   clr = lr / (1 + (step - 1) * lr_decay)
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool WD>
static void adagrad_loop(const AdagradParams& hp, T* __restrict p, const T* __restrict g,
                         T* __restrict sum, std::int64_t n) {
    const T neg_clr = T(-hp.clr), gs = T(hp.grad_scale), wd = T(hp.weight_decay);
    const T eps = T(hp.eps);
    for (std::int64_t i = 0; i < n; ++i) {
        T d = g[i] * gs;
        if constexpr (WD) d = d + wd * p[i];
        const T si = sum[i] + d * d;
        sum[i] = si;
        p[i] = p[i] + neg_clr * (d / (root(si) + eps));
    }
}

template <class T>
void adagrad_update(const AdagradParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    branch([&](auto wd) { adagrad_loop<T, wd.value>(hp, p, g, s[0], n); }, hp.weight_decay != 0);
}

LRFAST_INSTANTIATE_UPDATE(adagrad, AdagradParams)

}  // namespace lrfast::LRFAST_ISA_NS
