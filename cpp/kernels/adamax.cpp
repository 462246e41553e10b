// Adamax (torch.optim.Adamax, single-tensor formulas), in its order:
//   g = grad * grad_scale (+ weight_decay * p)
//   m = m + (1 - beta1) * (g - m)                        (torch's lerp)
//   u = max(beta2 * u, |g| + eps)                        (the infinity norm)
//   p = p - clr * m / u
// with clr = lr / (1 - beta1^step). u >= eps > 0 after every step whatever it
// held, so the division is safe even after a low-bit u rounded to zero.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

// torch.maximum: NaN if either is NaN (a comparison alone would drop one).
template <class T>
static T nan_maximum(T a, T b) {
    return (a > b || a != a) ? a : b;
}

inline float magnitude(float x) { return __builtin_fabsf(x); }
inline double magnitude(double x) { return __builtin_fabs(x); }

template <class T, bool WD>
static void adamax_loop(const AdamaxParams& hp, T* __restrict p, const T* __restrict g,
                        T* __restrict m, T* __restrict u, std::int64_t n) {
    const T gs = T(hp.grad_scale), wd = T(hp.weight_decay), neg_clr = T(-hp.clr);
    const T w1 = T(1.0 - hp.beta1), beta2 = T(hp.beta2), eps = T(hp.eps);
    for (std::int64_t i = 0; i < n; ++i) {
        T d = g[i] * gs;
        if constexpr (WD) d = d + wd * p[i];
        const T mi = m[i] + w1 * (d - m[i]);
        const T ui = nan_maximum(u[i] * beta2, magnitude(d) + eps);
        p[i] = p[i] + neg_clr * mi / ui;
        m[i] = mi;
        u[i] = ui;
    }
}

template <class T>
void adamax_update(const AdamaxParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    branch([&](auto wd) { adamax_loop<T, wd.value>(hp, p, g, s[0], s[1], n); },
           hp.weight_decay != 0);
}

LRFAST_INSTANTIATE_UPDATE(adamax, AdamaxParams)

}  // namespace lrfast::LRFAST_ISA_NS
