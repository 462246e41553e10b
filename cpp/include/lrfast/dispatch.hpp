// Run-time choice of the instruction set. Every kernel file is compiled once per
// ISA into its own namespace (lrfast::isa_baseline, isa_avx2, isa_avx512); each
// of those defines a KernelTable, and dispatch.cpp picks one at import.
#pragma once

#include <cstdint>

#include "lrfast/hparams.hpp"

namespace lrfast {

enum class Isa { baseline = 0, avx2 = 1, avx512 = 2 };

// Which sum a norm kernel accumulates (in double) over its range.
enum class NormKind { l1, l2, linf, lp };

// A norm kernel's result for one range: `value` is the sum (l1, l2, lp) or the
// maximum (linf) of |x|^p; `nans` is non-zero if a NaN was seen (a maximum drops it).
struct NormPartial {
    double value;
    std::int64_t nans;
};

// An update kernel: the param and grad of one tensor and up to three state
// arrays (nullptr where an optional state is not used), n elements each.
template <class P, class T>
using UpdateFn = void (*)(const P&, T*, const T*, T* const*, std::int64_t);

// How an array stores its numbers. Arithmetic runs in float for float32 and
// 16-bit arrays, in double for float64 params. q8: a state of uint8 codes
// into the signed or unsigned dynamic map, with a float32 absmax per block of
// 256 elements (lrfast/q8_tables.hpp); q4: two 4-bit codes a byte (element 2i
// in the high nibble) into torchao's maps, a float32 absmax per block of 128.
enum class Storage : std::uint8_t { none, f32, f64, bf16, f16, q8_signed, q8_unsigned,
                                    q4_signed, q4_unsigned };

// One array of a call that mixes storages; data is nullptr for an unused state.
// For a q8 or q4 state, data holds the codes and absmax the block scales.
struct Operand {
    void* data;
    Storage storage;
    float* absmax;
};

// The arrays of a tensor in a mixed call: param, grad, then three state slots.
constexpr int kOperands = 5;

// A tensor of a mixed call: its arrays, its size, and the position of its
// first element in the call (the params of the list laid end to end, without
// the padding the driver may add): the counter of stochastic rounding.
struct MixedTensor {
    Operand x[kOperands];
    std::int64_t size;
    std::int64_t position;
};

// An update kernel for a tensor whose arrays are not all of the arithmetic
// type (16-bit params, grads or states, q8 states, or float32/bfloat16 states
// of a float64 param): elements [lo, lo + n) of the tensor. A tensor with a q8
// or q4 state gets lo a multiple of 256 and n one too, or reaching its end.
template <class P>
using MixedFn = void (*)(const P&, const MixedTensor&, std::int64_t lo, std::int64_t n);

// Prodigy's reduction over a range of one tensor's slice: the sums of
// g * (p0 - p) and of |s| (the new s), in double.
struct ProdigySums {
    double dot, s_abs;
};

// The reduction over slice elements [0, n) of one tensor: p and g point at the
// first element's source and step by `stride` (slice_p); s and p0 are the
// slice's own arrays, contiguous.
template <class T>
using ProdigyReduceFn = ProdigySums (*)(const ProdigyReduceParams&, const T* p, const T* g,
                                        std::int64_t stride, T* s, const T* p0, std::int64_t n);

// Adafactor's pieces (cpp/kernels/adafactor.cpp; run by cpp/adafactor_driver.hpp).
struct AdafactorSums {
    double p_sq, u_sq;
};

template <class T>
struct AdafactorKernels {
    // Pass 1 over `rows` rows of a factored matrix: returns sum(p^2), updates
    // the rows' factors in row_var from their sums of g^2, writes the
    // columns' sums of g^2 and of g^2 / R to col_sums and col_weights (`run`:
    // 2 * cols of scratch).
    double (*rows)(const AdafactorParams&, const T* p, const T* g, std::int64_t rows,
                   std::int64_t cols, T* row_var, double* col_sums, double* col_weights,
                   T* run);
    // Pass 1 of a full-variance range: updates v; sum(p^2) and sum(u^2).
    AdafactorSums (*full)(const AdafactorParams&, const T* p, const T* g, T* v, std::int64_t n,
                          double eps1);
    // Pass 2 over `rows` rows of a factored matrix whose u may be capped:
    // sum(u^2), u from the rows' 1 / sqrt(R / rmean) and the columns'
    // 1 / sqrt(C).
    double (*factored_norm)(const AdafactorParams&, const T* g, std::int64_t rows,
                            std::int64_t cols, const T* row_rsqrt, const T* col_rsqrt,
                            double eps1);
    // Pass 3: p = p * decay + scale * u.
    void (*factored_apply)(const AdafactorParams&, T* p, const T* g, std::int64_t rows,
                           std::int64_t cols, const T* row_rsqrt, const T* col_rsqrt,
                           double eps1, double scale);
    void (*full_apply)(const AdafactorParams&, T* p, const T* g, const T* v, std::int64_t n,
                       double eps1, double scale);
    // The column factors from their sums: x = lerp(x, sums / count, w).
    void (*factor)(const AdafactorParams&, T* x, const double* sums, double count,
                   std::int64_t n);
    // out[i] = 1 / sqrt(x[i] / divisor).
    void (*rsqrt)(const T* x, T divisor, T* out, std::int64_t n);
    // A 16-bit array's elements [lo, lo + n) as T, and back (nearest even).
    void (*widen)(const Operand& x, std::int64_t lo, std::int64_t n, T* out);
    void (*narrow)(const T* in, const Operand& x, std::int64_t lo, std::int64_t n);
};

template <class T>
struct TypedKernels {
#define LRFAST_OPTIMIZER(name, P, nstates) UpdateFn<P, T> name;
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER
    ProdigyReduceFn<T> prodigy_reduce;
    AdafactorKernels<T> adafactor;
    NormPartial (*norm)(const T*, std::int64_t, NormKind, double p);
    void (*scale)(T*, std::int64_t, double factor);        // x *= factor
    void (*clamp)(T*, std::int64_t, double limit);         // x = clamp(x, -limit, limit)
    // The bandwidth probe: x[j] += 0 * g, or (write false) x[j] and g only read.
    void (*stream)(T* const*, int k, const T*, std::int64_t, bool write);
};

// Updates of mixed tensors, computed in T on tiles converted from storage.
template <class T>
struct MixedKernels {
#define LRFAST_OPTIMIZER(name, P, nstates) MixedFn<P> name;
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER
    // Slice elements [lo, lo + n) of a mixed tensor (x[2] = s, x[3] = p0).
    ProdigySums (*prodigy_reduce)(const ProdigyReduceParams&, const MixedTensor&, std::int64_t lo,
                                  std::int64_t n);
};

// Norms and clips of 16-bit gradients (float arithmetic) and the bandwidth
// probe of mixed tensors, all over elements [lo, lo + n).
struct HalfKernels {
    NormPartial (*norm)(const Operand&, std::int64_t lo, std::int64_t n, NormKind, double p);
    void (*scale)(const Operand&, std::int64_t lo, std::int64_t n, double factor);
    void (*clamp)(const Operand&, std::int64_t lo, std::int64_t n, double limit);
    // Reads x[1] (the grad), reads and writes back the other non-null operands
    // (write false: only reads them).
    void (*stream)(const Operand* x, std::int64_t lo, std::int64_t n, bool write);
};

struct KernelTable {
    TypedKernels<float> f32;
    TypedKernels<double> f64;
    MixedKernels<float> mixed32;
    MixedKernels<double> mixed64;
    HalfKernels half;
};

// The table for the ISA in use: the best this CPU supports, capped by
// LRFAST_CPU_ISA=baseline|avx2|avx512 (read once, at the first call).
const KernelTable& kernels();
Isa active_isa();
const char* isa_name(Isa isa);

namespace isa_baseline { extern const KernelTable table; }
namespace isa_avx2 { extern const KernelTable table; }
namespace isa_avx512 { extern const KernelTable table; }

}  // namespace lrfast
