// Picks the kernel table once, from what the CPU and the OS support.
//
// Each variant's compile flags (CMakeLists.txt) and its check here name the
// same features: avx2 is built with -mavx2 -mfma -mf16c, avx512 with
// -mavx512f -mavx512vl -mavx512bw -mavx512dq -mavx2 -mfma -mf16c. GCC's and Clang's
// __builtin_cpu_supports also require the OS to save the wider registers
// (XGETBV), so a feature reported here is usable.
#include <cstdlib>
#include <cstring>

#include "lrfast/dispatch.hpp"

namespace lrfast {
namespace {

Isa best_supported() {
#if defined(LRFAST_X86_VARIANTS)
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    if (avx512) return Isa::avx512;
    if (avx2) return Isa::avx2;
#endif
    return Isa::baseline;
}

// LRFAST_CPU_ISA caps the choice; it never enables what the CPU lacks.
Isa choose() {
    Isa isa = best_supported();
    if (const char* cap = std::getenv("LRFAST_CPU_ISA")) {
        for (Isa candidate : {Isa::baseline, Isa::avx2, Isa::avx512})
            if (std::strcmp(cap, isa_name(candidate)) == 0 && candidate < isa) isa = candidate;
    }
    return isa;
}

const Isa g_isa = choose();

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        case Isa::baseline: break;
    }
    return "baseline";
}

Isa active_isa() { return g_isa; }

const KernelTable& kernels() {
#if defined(LRFAST_X86_VARIANTS)
    if (g_isa == Isa::avx512) return isa_avx512::table;
    if (g_isa == Isa::avx2) return isa_avx2::table;
#endif
    return isa_baseline::table;
}

}  // namespace lrfast
