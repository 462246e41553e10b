// Shared by the kernel files, which CMake compiles once per ISA with
// -DLRFAST_ISA_NS=isa_<name> and that ISA's flags.
//
// Kernels are plain loops over __restrict pointers that the compiler
// vectorises. Nothing here may instantiate a template or inline function that
// lives outside the per-ISA namespace (std::max, std::sqrt, ...): the linker
// would keep one copy of it, possibly the AVX-512 one, for every ISA.
#pragma once

#include <cstdint>
#include <type_traits>

#include "lrfast/dispatch.hpp"

#ifndef LRFAST_ISA_NS
#error "kernel files are compiled once per ISA with -DLRFAST_ISA_NS=isa_<name>"
#endif

namespace lrfast::LRFAST_ISA_NS {

inline float root(float x) { return __builtin_sqrtf(x); }
inline double root(double x) { return __builtin_sqrt(x); }
// a > b ? a : b (b when either is NaN).
inline float maximum(float a, float b) { return a > b ? a : b; }
inline double maximum(double a, double b) { return a > b ? a : b; }

// branch(f, b1, b2, ...) calls f(std::integral_constant<bool, b1>{}, ...), so a
// kernel states its options as compile-time flags and each combination gets
// its own branch-free loop.
template <class F>
inline void branch(F&& f) { f(); }

template <class F, class... Rest>
inline void branch(F&& f, bool flag, Rest... rest) {
    if (flag)
        branch([&](auto... t) { f(std::true_type{}, t...); }, rest...);
    else
        branch([&](auto... t) { f(std::false_type{}, t...); }, rest...);
}

// Declarations of the per-ISA entry points, defined in the kernel files and
// gathered into this ISA's KernelTable by table.cpp.
#define LRFAST_OPTIMIZER(name, P, nstates)                                      \
    template <class T>                                                          \
    void name##_update(const P& hp, T* param, const T* grad, T* const* state,   \
                       std::int64_t n);
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER

// The same updates for tensors whose arrays mix storages (cpp/kernels/tiles.cpp).
#define LRFAST_OPTIMIZER(name, P, nstates)                                                \
    template <class T>                                                                    \
    void name##_mixed(const P& hp, const MixedTensor& t, std::int64_t lo, std::int64_t n);
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER

// Adam/AdamW on a tensor whose arrays are all bfloat16 (cpp/kernels/adam.cpp).
struct Bf16;
void adam_bf16(const AdamParams& hp, Bf16* p, const Bf16* g, Bf16* const* s, std::int64_t n);

// Prodigy's reduction (cpp/kernels/prodigy.cpp), on arrays of T and on mixed tensors.
template <class T>
ProdigySums prodigy_reduce(const ProdigyReduceParams& hp, const T* p, const T* g,
                           std::int64_t stride, T* s, const T* p0, std::int64_t n);
template <class T>
ProdigySums prodigy_reduce_mixed(const ProdigyReduceParams& hp, const MixedTensor& t,
                                 std::int64_t lo, std::int64_t n);

// Adafactor's pieces (cpp/kernels/adafactor.cpp; see AdafactorKernels).
template <class T>
double adafactor_rows(const AdafactorParams& hp, const T* p, const T* g, std::int64_t rows,
                      std::int64_t cols, T* row_var, double* col_sums, double* col_weights,
                      T* run);
template <class T>
AdafactorSums adafactor_full(const AdafactorParams& hp, const T* p, const T* g, T* v,
                             std::int64_t n, double eps1);
template <class T>
double adafactor_factored_norm(const AdafactorParams& hp, const T* g, std::int64_t rows,
                               std::int64_t cols, const T* row_rsqrt, const T* col_rsqrt,
                               double eps1);
template <class T>
void adafactor_factored_apply(const AdafactorParams& hp, T* p, const T* g, std::int64_t rows,
                              std::int64_t cols, const T* row_rsqrt, const T* col_rsqrt,
                              double eps1, double scale);
template <class T>
void adafactor_rsqrt(const T* x, T divisor, T* out, std::int64_t n);
template <class T>
void adafactor_widen(const Operand& x, std::int64_t lo, std::int64_t n, T* out);
template <class T>
void adafactor_narrow(const T* in, const Operand& x, std::int64_t lo, std::int64_t n);
template <class T>
void adafactor_full_apply(const AdafactorParams& hp, T* p, const T* g, const T* v,
                          std::int64_t n, double eps1, double scale);
template <class T>
void adafactor_factor(const AdafactorParams& hp, T* x, const double* sums, double count,
                      std::int64_t n);

// Sums in double run over kLanes interleaved accumulators (which lets the
// compiler vectorise them) combined pairwise in this fixed order, so the
// bits depend on neither the ISA nor the thread count.
constexpr int kLanes = 16;

inline double fold_lanes(double* acc) {
    for (int width = kLanes / 2; width > 0; width /= 2)
        for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
    return acc[0];
}

NormPartial half_norm(const Operand& x, std::int64_t lo, std::int64_t n, NormKind kind, double p);
void half_scale(const Operand& x, std::int64_t lo, std::int64_t n, double factor);
void half_clamp(const Operand& x, std::int64_t lo, std::int64_t n, double limit);
void mixed_stream(const Operand* x, std::int64_t lo, std::int64_t n, bool write);

template <class T>
NormPartial norm_partial(const T* x, std::int64_t n, NormKind kind, double p);
template <class T>
void scale(T* x, std::int64_t n, double factor);
template <class T>
void clamp(T* x, std::int64_t n, double limit);
template <class T>
void stream(T* const* x, int k, const T* g, std::int64_t n, bool write);

}  // namespace lrfast::LRFAST_ISA_NS

// Explicit instantiation of an update kernel for both floating types.
#define LRFAST_INSTANTIATE_UPDATE(name, P)                                              \
    template void name##_update<float>(const P&, float*, const float*, float* const*,   \
                                       std::int64_t);                                   \
    template void name##_update<double>(const P&, double*, const double*,               \
                                        double* const*, std::int64_t);
