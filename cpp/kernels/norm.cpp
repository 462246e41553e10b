// Norm partials and the in-place clip kernels.
//
// Sums run in double over kLanes interleaved accumulators that are combined
// pairwise in a fixed order at the end. The association is written out in the
// source and no fast-math flag lets the compiler change it, so every ISA (and
// any split of the work into the same fixed ranges) gives the same bits; the
// lanes are what lets the compiler vectorise the loop.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

constexpr int kLanes = 16;

template <class T, class F>
static double lane_sum(const T* __restrict x, std::int64_t n, F f) {
    double acc[kLanes] = {};
    std::int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) acc[j] += f(double(x[i + j]));
    for (int j = 0; i + j < n; ++j) acc[j] += f(double(x[i + j]));
    for (int width = kLanes / 2; width > 0; width /= 2)
        for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
    return acc[0];
}

static double magnitude(double a) { return __builtin_fabs(a); }

template <class T>
NormPartial norm_partial(const T* x, std::int64_t n, NormKind kind, double p) {
    switch (kind) {
        case NormKind::l1:
            return {lane_sum(x, n, magnitude), 0};
        case NormKind::l2:
            return {lane_sum(x, n, [](double a) { return a * a; }), 0};
        case NormKind::lp:
            return {lane_sum(x, n, [p](double a) { return __builtin_pow(magnitude(a), p); }), 0};
        case NormKind::linf:
            break;
    }
    // A maximum comparison drops NaN, so NaNs are counted beside it.
    T best = 0;
    std::int64_t nans = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const T a = x[i] < 0 ? -x[i] : x[i];
        best = a > best ? a : best;
        nans += x[i] != x[i];
    }
    return {double(best), nans};
}

template <class T>
void scale(T* __restrict x, std::int64_t n, double factor) {
    const T f = T(factor);
    for (std::int64_t i = 0; i < n; ++i) x[i] = x[i] * f;
}

// NaN compares false both ways and passes through, as in torch.clamp.
template <class T>
void clamp(T* __restrict x, std::int64_t n, double limit) {
    const T hi = T(limit), lo = T(-limit);
    for (std::int64_t i = 0; i < n; ++i) x[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}

template NormPartial norm_partial<float>(const float*, std::int64_t, NormKind, double);
template NormPartial norm_partial<double>(const double*, std::int64_t, NormKind, double);
template void scale<float>(float*, std::int64_t, double);
template void scale<double>(double*, std::int64_t, double);
template void clamp<float>(float*, std::int64_t, double);
template void clamp<double>(double*, std::int64_t, double);

}  // namespace lrfast::LRFAST_ISA_NS
