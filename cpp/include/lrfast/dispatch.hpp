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

template <class T>
struct TypedKernels {
#define LRFAST_OPTIMIZER(name, P, nstates) UpdateFn<P, T> name;
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER
    NormPartial (*norm)(const T*, std::int64_t, NormKind, double p);
    void (*scale)(T*, std::int64_t, double factor);        // x *= factor
    void (*clamp)(T*, std::int64_t, double limit);         // x = clamp(x, -limit, limit)
    void (*stream)(T* const*, int k, const T*, std::int64_t);  // x[j] += 0 * g: bandwidth probe
};

struct KernelTable {
    TypedKernels<float> f32;
    TypedKernels<double> f64;
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
