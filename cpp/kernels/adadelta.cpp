// Adadelta (torch.optim.Adadelta):
//   g = grad * grad_scale (+ weight_decay * p)
//   s = rho * s + (1 - rho) * g * g
//   delta = sqrt(u + eps) / sqrt(s + eps) * g
//   u = rho * u + (1 - rho) * delta * delta
//   p = p - lr * delta
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool WD>
static void adadelta_loop(const AdadeltaParams& hp, T* __restrict p, const T* __restrict g,
                          T* __restrict sq, T* __restrict acc, std::int64_t n) {
    const T neg_lr = T(-hp.lr), gs = T(hp.grad_scale), wd = T(hp.weight_decay);
    const T rho = T(hp.rho), w = T(1.0 - hp.rho), eps = T(hp.eps);
    for (std::int64_t i = 0; i < n; ++i) {
        T d = g[i] * gs;
        if constexpr (WD) d = d + wd * p[i];
        const T si = sq[i] * rho + w * d * d;
        sq[i] = si;
        const T delta = root(acc[i] + eps) / root(si + eps) * d;
        acc[i] = acc[i] * rho + w * delta * delta;
        p[i] = p[i] + neg_lr * delta;
    }
}

template <class T>
void adadelta_update(const AdadeltaParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    branch([&](auto wd) { adadelta_loop<T, wd.value>(hp, p, g, s[0], s[1], n); },
           hp.weight_decay != 0);
}

LRFAST_INSTANTIATE_UPDATE(adadelta, AdadeltaParams)

}  // namespace lrfast::LRFAST_ISA_NS
