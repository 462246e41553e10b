// Schedule-free SGD and AdamW (Defazio et al. 2024; the schedulefree
// package, train mode) and their eval()/train() switch. The param holds y;
// z is the state; x, the average, is implicit.
//
// SGD:    g = grad * grad_scale (+ weight_decay * y)
//         y = lerp(y, z, ckp1); y = y + lr * (momentum * (1 - ckp1) - 1) * g
//         z = z - lr * g
// AdamW:  v = beta2 * v + (1 - beta2) * g * g
//         u = g / (sqrt(v / (1 - beta2^step)) + eps) (+ weight_decay * y)
//         y = lerp(y, z, ckp1); y = y + lr * (beta1 * (1 - ckp1) - 1) * u
//         z = z - lr * u
// switch: p = lerp(p, z, weight)   (eval: weight = 1 - 1/beta1, train: 1 - beta1)
//
// lerp is torch's: a + w * (b - a) for |w| < 0.5, else b - (b - a) * (1 - w).
// The weight is a host scalar, so the branch is a compile-time flag of the
// loop. The division by the bias correction stays a division, as in the
// reference, so that the result is the reference's to the bit.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

// torch.lerp(a, b, w) with w (or 1 - w, when !NEAR_A) already in T.
template <bool NEAR_A, class T>
static T lerp(T a, T b, T w) {
    if constexpr (NEAR_A) return a + w * (b - a);
    else return b - (b - a) * w;
}

// The weight a lerp loop multiplies by: w, or 1 - w (in double, then T).
template <class T>
static T lerp_weight(double w) {
    return T(__builtin_fabs(w) < 0.5 ? w : 1.0 - w);
}

template <class T, bool WD, bool NEAR_A>
static void sgd_loop(const ScheduleFreeSgdParams& hp, T* __restrict y, const T* __restrict g,
                     T* __restrict z, std::int64_t n) {
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay), w = lerp_weight<T>(hp.ckp1);
    const T y_rate = T(hp.lr * (hp.momentum * (1.0 - hp.ckp1) - 1.0)), neg_lr = T(-hp.lr);
    for (std::int64_t i = 0; i < n; ++i) {
        const T yi = y[i], zi = z[i];
        T d = g[i] * gs;
        if constexpr (WD) d = d + wd * yi;
        y[i] = lerp<NEAR_A>(yi, zi, w) + y_rate * d;
        z[i] = zi + neg_lr * d;
    }
}

template <class T>
void schedulefree_sgd_update(const ScheduleFreeSgdParams& hp, T* y, const T* g, T* const* s,
                             std::int64_t n) {
    branch([&](auto wd, auto near_a) { sgd_loop<T, wd.value, near_a.value>(hp, y, g, s[0], n); },
           hp.weight_decay != 0, __builtin_fabs(hp.ckp1) < 0.5);
}

template <class T, bool WD, bool NEAR_A>
static void adamw_loop(const ScheduleFreeAdamwParams& hp, T* __restrict y, const T* __restrict g,
                       T* __restrict z, T* __restrict v, std::int64_t n) {
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay), w = lerp_weight<T>(hp.ckp1);
    const T beta2 = T(hp.beta2), w2 = T(1.0 - hp.beta2), bc2 = T(hp.bias_correction2);
    const T eps = T(hp.eps), neg_lr = T(-hp.lr);
    const T y_rate = T(hp.lr * (hp.beta1 * (1.0 - hp.ckp1) - 1.0));
    for (std::int64_t i = 0; i < n; ++i) {
        const T yi = y[i], zi = z[i], d = g[i] * gs;
        const T vi = v[i] * beta2 + w2 * d * d;
        T u = d / (root(vi / bc2) + eps);
        if constexpr (WD) u = u + wd * yi;
        v[i] = vi;
        y[i] = lerp<NEAR_A>(yi, zi, w) + y_rate * u;
        z[i] = zi + neg_lr * u;
    }
}

template <class T>
void schedulefree_adamw_update(const ScheduleFreeAdamwParams& hp, T* y, const T* g, T* const* s,
                               std::int64_t n) {
    branch([&](auto wd, auto near_a) {
               adamw_loop<T, wd.value, near_a.value>(hp, y, g, s[0], s[1], n);
           },
           hp.weight_decay != 0, __builtin_fabs(hp.ckp1) < 0.5);
}

template <class T, bool NEAR_A>
static void lerp_loop(T* __restrict p, const T* __restrict z, T w, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) p[i] = lerp<NEAR_A>(p[i], z[i], w);
}

// eval()/train(): no grads (g is nullptr); s[0] is z.
template <class T>
void schedulefree_lerp_update(const ScheduleFreeLerpParams& hp, T* p, const T*, T* const* s,
                              std::int64_t n) {
    branch([&](auto near_a) { lerp_loop<T, near_a.value>(p, s[0], lerp_weight<T>(hp.weight), n); },
           __builtin_fabs(hp.weight) < 0.5);
}

LRFAST_INSTANTIATE_UPDATE(schedulefree_sgd, ScheduleFreeSgdParams)
LRFAST_INSTANTIATE_UPDATE(schedulefree_adamw, ScheduleFreeAdamwParams)
LRFAST_INSTANTIATE_UPDATE(schedulefree_lerp, ScheduleFreeLerpParams)

}  // namespace lrfast::LRFAST_ISA_NS
