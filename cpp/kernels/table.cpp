// This ISA's table of kernels, built from the one list in optimizers.def.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T>
static constexpr TypedKernels<T> typed_kernels() {
    return {
#define LRFAST_OPTIMIZER(name, P, nstates) &name##_update<T>,
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER
        &norm_partial<T>, &scale<T>, &clamp<T>, &stream<T>,
    };
}

extern const KernelTable table = {typed_kernels<float>(), typed_kernels<double>()};

}  // namespace lrfast::LRFAST_ISA_NS
