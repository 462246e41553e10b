// This ISA's table of kernels, built from the one list in optimizers.def.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

template <class T>
static constexpr TypedKernels<T> typed_kernels() {
    return {
#define LRFAST_OPTIMIZER(name, P, nstates) &name##_update<T>,
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER
        &prodigy_reduce<T>,
        {&adafactor_rows<T>, &adafactor_full<T>, &adafactor_factored_norm<T>,
         &adafactor_factored_apply<T>, &adafactor_full_apply<T>, &adafactor_factor<T>,
         &adafactor_rsqrt<T>, &adafactor_widen<T>, &adafactor_narrow<T>},
        &norm_partial<T>, &scale<T>, &clamp<T>, &stream<T>,
    };
}

template <class T>
static constexpr MixedKernels<T> mixed_kernels() {
    return {
#define LRFAST_OPTIMIZER(name, P, nstates) &name##_mixed<T>,
#include "lrfast/optimizers.def"
#undef LRFAST_OPTIMIZER
        &prodigy_reduce_mixed<T>,
    };
}

extern const KernelTable table = {
    typed_kernels<float>(), typed_kernels<double>(), mixed_kernels<float>(),
    mixed_kernels<double>(), {&half_norm, &half_scale, &half_clamp, &mixed_stream},
};

}  // namespace lrfast::LRFAST_ISA_NS
