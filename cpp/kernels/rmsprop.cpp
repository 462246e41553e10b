// RMSprop (torch.optim.RMSprop):
//   g = grad * grad_scale (+ weight_decay * p)
//   s = alpha * s + (1 - alpha) * g * g
//   a = a + (1 - alpha) * (g - a)                 (centered: running mean of g)
//   avg = sqrt(s - a * a) if centered else sqrt(s), then avg + eps
//   b = momentum * b + g / avg, p = p - lr * b    (momentum > 0)
//   p = p - lr * g / avg                          (otherwise)
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T, bool WD, bool MOMENTUM, bool CENTERED>
static void rmsprop_loop(const RmspropParams& hp, T* __restrict p, const T* __restrict g,
                         T* __restrict sq, T* __restrict buf, T* __restrict ga,
                         std::int64_t n) {
    const T neg_lr = T(-hp.lr), gs = T(hp.grad_scale), wd = T(hp.weight_decay);
    const T alpha = T(hp.alpha), w = T(1.0 - hp.alpha), eps = T(hp.eps), mom = T(hp.momentum);
    for (std::int64_t i = 0; i < n; ++i) {
        T d = g[i] * gs;
        if constexpr (WD) d = d + wd * p[i];
        const T si = sq[i] * alpha + w * d * d;
        sq[i] = si;
        T avg;
        if constexpr (CENTERED) {
            const T ai = ga[i] + w * (d - ga[i]);
            ga[i] = ai;
            avg = root(si - ai * ai) + eps;
        } else {
            avg = root(si) + eps;
        }
        if constexpr (MOMENTUM) {
            const T b = buf[i] * mom + d / avg;
            buf[i] = b;
            p[i] = p[i] + neg_lr * b;
        } else {
            p[i] = p[i] + neg_lr * (d / avg);
        }
    }
}

template <class T>
void rmsprop_update(const RmspropParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    branch(
        [&](auto wd, auto momentum, auto centered) {
            rmsprop_loop<T, wd.value, momentum.value, centered.value>(hp, p, g, s[0], s[1], s[2], n);
        },
        hp.weight_decay != 0, hp.momentum != 0, hp.centered != 0);
}

LRFAST_INSTANTIATE_UPDATE(rmsprop, RmspropParams)

}  // namespace lrfast::LRFAST_ISA_NS
