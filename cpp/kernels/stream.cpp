// The bandwidth probe of `lrfast bench`: the memory traffic of an optimizer
// step with almost no arithmetic. It reads the gradient and k arrays and
// writes the k arrays back, so it moves the same bytes as an update with k
// read-write arrays, through the same blocks and threads. It writes
// x + 0 * g: the values stay as they were (for finite g), so the probe can run
// between the steps it is compared with, and the compiler may not drop the
// read of g (0 * g is NaN for an infinite g; no fast-math here). Read only
// (`write` false: a reduction's pass), it sums every array in kLanes lanes
// and stores the sum to a volatile, so the compiler keeps every read.
#include "kernel.hpp"

namespace lrfast::LRFAST_ISA_NS {

static thread_local volatile double t_sink;

// g and x[0..K) read together, element by element, as a kernel reads them.
template <class T, int K>
static T read_lanes(const T* __restrict g, T* const* x, std::int64_t n) {
    const T* a[K];
    for (int k = 0; k < K; ++k) a[k] = x[k];
    T acc[kLanes] = {};
    std::int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) {
            T sum = g[i + j];
            for (int k = 0; k < K; ++k) sum += a[k][i + j];
            acc[j] += sum;
        }
    for (; i < n; ++i) {
        T sum = g[i];
        for (int k = 0; k < K; ++k) sum += a[k][i];
        acc[0] += sum;
    }
    T total = T(0);
    for (int j = 0; j < kLanes; ++j) total += acc[j];
    return total;
}

template <class T>
static void stream1(const T* __restrict g, T* __restrict a, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) a[i] = a[i] + T(0) * g[i];
}

template <class T>
static void stream2(const T* __restrict g, T* __restrict a, T* __restrict b, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        a[i] = a[i] + T(0) * g[i];
        b[i] = b[i] + T(0) * g[i];
    }
}

template <class T>
static void stream3(const T* __restrict g, T* __restrict a, T* __restrict b, T* __restrict c,
                    std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        a[i] = a[i] + T(0) * g[i];
        b[i] = b[i] + T(0) * g[i];
        c[i] = c[i] + T(0) * g[i];
    }
}

// x[0..k) are the read-write arrays (param and used states, k <= 4).
template <class T>
void stream(T* const* x, int k, const T* g, std::int64_t n, bool write) {
    if (!write) {
        switch (k) {
            case 1: t_sink = double(read_lanes<T, 1>(g, x, n)); break;
            case 2: t_sink = double(read_lanes<T, 2>(g, x, n)); break;
            case 3: t_sink = double(read_lanes<T, 3>(g, x, n)); break;
            default: t_sink = double(read_lanes<T, 4>(g, x, n));
        }
        return;
    }
    switch (k) {
        case 1: stream1(g, x[0], n); break;
        case 2: stream2(g, x[0], x[1], n); break;
        case 3: stream3(g, x[0], x[1], x[2], n); break;
        default:
            stream2(g, x[0], x[1], n);
            stream2(g, x[2], x[3], n);
    }
}

template void stream<float>(float* const*, int, const float*, std::int64_t, bool);
template void stream<double>(double* const*, int, const double*, std::int64_t, bool);

}  // namespace lrfast::LRFAST_ISA_NS
