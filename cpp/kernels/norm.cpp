// Norm partials and the in-place clip kernels.
//
// Sums run in double over kLanes interleaved accumulators that are combined
// pairwise in a fixed order at the end (fold_lanes, kernel.hpp). The
// association is written out in the source and no fast-math flag lets the
// compiler change it, so every ISA (and any split of the work into the same
// fixed ranges) gives the same bits; the lanes are what lets the compiler
// vectorise the loop.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

// Calls visit(j, x[i]) for every element, lane j = i mod kLanes counted from
// the start of the range, in whole rounds of kLanes and then the tail.
template <class T, class V>
static void for_lanes(const T* __restrict x, std::int64_t n, V visit) {
    std::int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) visit(j, x[i + j]);
    for (int j = 0; i + j < n; ++j) visit(j, x[i + j]);
}

template <class T, class F>
static double lane_sum(const T* __restrict x, std::int64_t n, F f) {
    double acc[kLanes] = {};
    for_lanes(x, n, [&](int j, T v) { acc[j] += f(double(v)); });
    return fold_lanes(acc);
}

static double magnitude(double a) { return __builtin_fabs(a); }

template <class T>
NormPartial norm_partial(const T* x, std::int64_t n, NormKind kind, double p) {
    switch (kind) {
        case NormKind::l1:
            return {lane_sum(x, n, [](double a) { return magnitude(a); }), 0};
        case NormKind::l2:
            return {lane_sum(x, n, [](double a) { return a * a; }), 0};
        case NormKind::lp:
            return {lane_sum(x, n, [p](double a) { return __builtin_pow(magnitude(a), p); }), 0};
        case NormKind::linf:
            break;
    }
    // The maximum runs per lane too (a select per element, which vectorises
    // where a single running maximum would not). A comparison drops NaN, so
    // a NaN is flagged beside it, in a lane of the same type (selects of one
    // width vectorise; a mix of float and 64-bit counters does not).
    T best[kLanes] = {}, nan_seen[kLanes] = {};
    for_lanes(x, n, [&](int j, T v) {
        const T a = v < 0 ? -v : v;
        best[j] = a > best[j] ? a : best[j];
        nan_seen[j] = v != v ? T(1) : nan_seen[j];
    });
    NormPartial out{0.0, 0};
    for (int j = 0; j < kLanes; ++j) {
        out.value = double(best[j]) > out.value ? double(best[j]) : out.value;
        out.nans += nan_seen[j] != 0;
    }
    return out;
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
