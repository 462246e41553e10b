// NAdam (torch.optim.NAdam, single-tensor formulas), in its order:
//   p = p * (1 - lr * weight_decay)                      (decoupled_weight_decay)
//   g = grad * grad_scale (+ weight_decay * p otherwise)
//   m = m + (1 - beta1) * (g - m)                        (torch's lerp)
//   v = beta2 * v + (1 - beta2) * g * g
//   denom = sqrt(v * (1 / (1 - beta2^step))) + eps
//   r = 1 / denom
//   p = p + (grad_coef * g) * r
//   p = p + (avg_coef * m) * r
// with grad_coef = -lr * (1 - mu) / (1 - mu_product) and avg_coef =
// -lr * mu_next / (1 - mu_product * mu_next), computed in double on the host
// from the momentum schedule. torch divides three times (v by the bias
// correction, then each term by denom); one division and multiplications by
// reciprocals change a result by an ulp or two, and make the loop as cheap as
// Adam's (a division and a square root per element), where three divisions
// left it bound by the divider on a core with fast memory. The two param
// updates stay two additions, in torch's order.
#include "adam_moments.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T>
void nadam_update(const NadamParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    const T inv_bc2 = T(1.0 / hp.bias_correction2), eps = T(hp.eps), one = T(1);
    const T grad_coef = T(hp.grad_coef), avg_coef = T(hp.avg_coef);
    with_moments(hp, p, g, s[0], s[1], n, [=](T pi, T d, T mi, T vi) {
        const T r = one / (root(vi * inv_bc2) + eps);
        pi = pi + grad_coef * d * r;
        return pi + avg_coef * mi * r;
    });
}

LRFAST_INSTANTIATE_UPDATE(nadam, NadamParams)

}  // namespace lrfast::LRFAST_ISA_NS
