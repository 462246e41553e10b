// SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD):
//   g = grad * grad_scale (+ weight_decay * p)
//   b = g on the first step, else momentum * b + (1 - dampening) * g
//   g = g + momentum * b (Nesterov) or b
//   p = p - lr * g
//
// A tensor whose param, grad and buffer are all bfloat16 runs the same loop on
// its arrays directly, widening on load and rounding to nearest even on store
// (convert.hpp): the bits of the tile layer's float buffers, without the buffers.
#include "convert.hpp"

namespace lrfast::LRFAST_ISA_NS {

// T: the arithmetic type; S: the storage of every array (T, or Bf16 with T float).
template <class T, class S, bool WD, bool MOMENTUM, bool NESTEROV, bool FIRST>
static void sgd_loop(const SgdParams& hp, S* __restrict p, const S* __restrict g,
                     S* __restrict buf, std::int64_t n) {
    const T neg_lr = T(-hp.lr), gs = T(hp.grad_scale), wd = T(hp.weight_decay);
    const T mom = T(hp.momentum), one_minus_damp = T(1.0 - hp.dampening);
    for (std::int64_t i = 0; i < n; ++i) {
        const T pi = load(p[i]);
        T d = load(g[i]) * gs;
        if constexpr (WD) d = d + wd * pi;
        if constexpr (MOMENTUM) {
            T b;
            if constexpr (FIRST) b = d;
            else b = load(buf[i]) * mom + one_minus_damp * d;
            store(buf[i], b);
            if constexpr (NESTEROV) d = d + mom * b;
            else d = b;
        }
        store(p[i], pi + neg_lr * d);
    }
}

template <class T, class S>
static void sgd_any(const SgdParams& hp, S* p, const S* g, S* const* s, std::int64_t n) {
    branch(
        [&](auto wd, auto momentum, auto nesterov, auto first) {
            sgd_loop<T, S, wd.value, momentum.value, nesterov.value, first.value>(hp, p, g, s[0], n);
        },
        hp.weight_decay != 0, hp.momentum != 0, hp.nesterov != 0, hp.first_step != 0);
}

template <class T>
void sgd_update(const SgdParams& hp, T* p, const T* g, T* const* s, std::int64_t n) {
    sgd_any<T>(hp, p, g, s, n);
}

void sgd_bf16(const SgdParams& hp, Bf16* p, const Bf16* g, Bf16* const* s, std::int64_t n) {
    sgd_any<float>(hp, p, g, s, n);
}

LRFAST_INSTANTIATE_UPDATE(sgd, SgdParams)

}  // namespace lrfast::LRFAST_ISA_NS
