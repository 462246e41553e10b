// RAdam (torch.optim.RAdam, single-tensor formulas), in its order:
//   p = p * (1 - lr * weight_decay)                      (decoupled_weight_decay)
//   g = grad * grad_scale (+ weight_decay * p otherwise)
//   m = m + (1 - beta1) * (g - m)                        (torch's lerp)
//   v = beta2 * v + (1 - beta2) * g * g
//   b = m * (1 / (1 - beta1^step))
//   p = p - b * lr * (sqrt(1 - beta2^step) / (sqrt(v) + eps)) * rect   if rectified
//   p = p - b * lr                                                     otherwise
// The rectification switch (rho_t > 5) and rect depend on the step alone: the
// host decides them in double, and each choice gets its own branch-free loop.
// torch divides m by the bias correction; the multiplication by its
// reciprocal (an ulp apart) leaves one division per element, as in Adam.
#include "adam_moments.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T>
void radam_update(const RadamParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    const T inv_bc1 = T(1.0 / hp.bias_correction1), bc2_sqrt = T(hp.bias_correction2_sqrt);
    const T eps = T(hp.eps), lr = T(hp.lr), rect = T(hp.rect);
    branch(
        [&](auto rectified) {
            constexpr bool RECTIFIED = decltype(rectified)::value;
            with_moments(hp, p, g, s[0], s[1], n, [=](T pi, T, T mi, T vi) {
                const T b = mi * inv_bc1;
                if constexpr (RECTIFIED)
                    return pi - b * lr * (bc2_sqrt / (root(vi) + eps)) * rect;
                else
                    return pi - b * lr;
            });
        },
        hp.rectified != 0);
}

LRFAST_INSTANTIATE_UPDATE(radam, RadamParams)

}  // namespace lrfast::LRFAST_ISA_NS
