// Adafactor (Shazeer & Stern 2018; torch 2.13's torch.optim.Adafactor), the
// pieces of its passes over memory (lrfast/reference_adafactor.py has the
// maths; cpp/adafactor_driver.hpp runs them):
//
//   1. a reduction: sum(p^2) (the param's RMS, before weight decay); for a
//      factored param, each row's sum of g^2, from which the row's factor R_i
//      is updated here, each column's sum of g^2, and each column's sum of
//      g^2 / R_i (the column sums per chunk of rows, added by the driver in
//      chunk order); a full-variance param updates v here, elementwise, and
//      sums u^2 too;
//   2. factored params whose u may be capped only: sum(u^2), u = g *
//      min(a_i b_j, 1 / eps1) with a_i = 1 / sqrt(R_i / rmean), b_j =
//      1 / sqrt(C_j) (torch's g / sqrt(max(R_i C_j / rmean, eps1^2)), rounded
//      differently). Where no a_i b_j reaches the cap, sum(u^2) is
//      rmean * sum_j (sum_i g_ij^2 / R_i) / C_j, from pass 1's sums: the
//      driver skips this pass, a read of the grad;
//   3. the update p = p * decay + scale * u.
//
// Every sum runs over kLanes lanes folded in a fixed order (or, for the
// columns, row after row), on ranges that depend only on the shapes: the bits
// are those of any thread count and ISA. Pass 1 sums its squares in T over
// short runs (kRounds rounds of lanes along a row, kWeightRun rows down a
// column), then in double: a run's error is a few ulps of T at most, as
// torch's own float32 sums, and the factors it makes are rounded to T anyway.
// The other sums run in double.
#include "convert.hpp"

namespace lrfast::LRFAST_ISA_NS {

// torch's clamp_(min=lo): lo where x < lo; a NaN stays NaN.
template <class T>
static T at_least(T x, T lo) {
    return x < lo ? lo : x;
}

// u for one element: g / sqrt(max(v, eps1^2)) as torch computes it, the
// reciprocal square root first (rsqrt_ then mul_).
template <class T>
static T scaled(T g, T v, T eps1_sq) {
    return g * (T(1) / root(at_least(v, eps1_sq)));
}

// torch's lerp(x, target, w) in T.
template <class T>
struct Lerp {
    T w, w_rest;
    bool near;

    explicit Lerp(double weight)
        : w(T(weight)), w_rest(T(1) - T(weight)), near(__builtin_fabs(weight) < 0.5) {}
    T operator()(T x, T target) const {
        return near ? x + w * (target - x) : target - (target - x) * w_rest;
    }
};

constexpr std::int64_t kWeightRun = 16;

// g * grad_scale, the multiply left out where grad_scale is 1 (x * 1 == x):
// a quarter of pass 1's arithmetic, which is as long as its memory traffic.
template <class T, bool SCALED>
struct GradScale {
    T s;
    T operator()(T g) const { return SCALED ? g * s : g; }
};

// Squares are summed in T over kRounds rounds of kLanes (a lane's run of
// kRounds terms), then in double: a run's rounding error is kRounds ulps at
// most, below the float32 rounding of the factors they make, for half the
// arithmetic of converting every square.
constexpr int kRounds = 16;

// The second sweep over M rows of g: g^2 * q (q = 1 / R of each row) added
// to column c's run in `run`, for columns [lo, hi).
template <class T, bool SCALED, int M>
static void weigh(const GradScale<T, SCALED>& gs, const T* __restrict g, std::int64_t cols,
                  const T* q, std::int64_t lo, std::int64_t hi, T* __restrict run) {
    for (std::int64_t c = lo; c < hi; ++c) {
        T weight = run[c];
        for (int m = 0; m < M; ++m) {
            const T d = gs(g[m * cols + c]);
            weight += (d * d) * q[m];
        }
        run[c] = weight;
    }
}

// Rows of a pass-1 chunk go N at a time (N = 2, and 1 for an odd last row),
// so each column's run is loaded and stored once per N rows; the adds keep
// row order. For each row: its squares go to lane j = c mod kLanes of its sum
// and to column c's run in run_sq (and the param's to the lanes of p_sq); its
// factor R then known, q = 1 / R goes out. The second sweep, g^2 * q into
// `run`, runs for the previous group's M rows (g_prev, q_prev, from cache) in
// the same rounds, so the two sweeps share the loop. (Plain loops, no lambda:
// GCC vectorises the rounds of kLanes only so.)
template <class T, bool SCALED, int N, int M>
static void row_group(const GradScale<T, SCALED>& gs, const Lerp<T>& lerp,
                      const T* __restrict p, const T* __restrict g, std::int64_t cols,
                      T* __restrict row_var, T* __restrict run_sq, T* __restrict run,
                      double* __restrict p_sq, const T* g_prev, const T* q_prev, T* q) {
    double g_sq[N][kLanes] = {};
    const std::int64_t whole = cols - cols % kLanes;
    std::int64_t c = 0;
    while (c < whole) {
        const std::int64_t end = std::min<std::int64_t>(whole, c + kRounds * kLanes);
        T p_run[kLanes] = {}, g_run[N][kLanes] = {};
        for (; c < end; c += kLanes) {
            // pointers at the round (with offsets from c, GCC leaves the
            // one-row case unvectorised)
            const T* __restrict pc = p + c;
            const T* __restrict gc = g + c;
            T* __restrict sc = run_sq + c;
            for (int j = 0; j < kLanes; ++j) {
                T col = sc[j];
                for (int n = 0; n < N; ++n) {
                    const T x = pc[n * cols + j], d = gs(gc[n * cols + j]), sq = d * d;
                    p_run[j] += x * x;
                    g_run[n][j] += sq;
                    col += sq;
                }
                sc[j] = col;
            }
            if (M > 0) weigh<T, SCALED, M>(gs, g_prev, cols, q_prev, c, c + kLanes, run);
        }
        for (int j = 0; j < kLanes; ++j) {
            p_sq[j] += double(p_run[j]);
            for (int n = 0; n < N; ++n) g_sq[n][j] += double(g_run[n][j]);
        }
    }
    for (int j = 0; c + j < cols; ++j)
        for (int n = 0; n < N; ++n) {
            const T x = p[n * cols + c + j], d = gs(g[n * cols + c + j]);
            p_sq[j] += double(x * x);
            g_sq[n][j] += double(d * d);
            run_sq[c + j] += d * d;
        }
    if (M > 0) weigh<T, SCALED, M>(gs, g_prev, cols, q_prev, c, cols, run);
    for (int n = 0; n < N; ++n) {
        row_var[n] = lerp(row_var[n], T(fold_lanes(g_sq[n]) / double(cols)));
        q[n] = T(1.0 / double(row_var[n]));
    }
}

// `run`: 2 * cols of scratch (the runs of g^2 / R, then of g^2). The runs go
// to the column sums in double every kWeightRun rows (those of g^2 / R a
// group of rows behind).
template <class T, bool SCALED>
static double rows_pass(const AdafactorParams& hp, const T* p, const T* g, std::int64_t rows,
                        std::int64_t cols, T* row_var, double* __restrict col_sums,
                        double* __restrict col_weights, T* __restrict run) {
    const GradScale<T, SCALED> gs{T(hp.grad_scale)};
    const Lerp<T> lerp(hp.beta2_weight);
    T* __restrict run_sq = run + cols;
    for (std::int64_t c = 0; c < cols; ++c) {
        col_sums[c] = 0.0;
        col_weights[c] = 0.0;
        run[c] = T(0);
        run_sq[c] = T(0);
    }
    double p_sq[kLanes] = {};
    T q_prev[2], q[2];
    const T* g_prev = nullptr;
    std::int64_t m = 0;  // rows of the previous group
    auto flush = [&] {
        for (std::int64_t c = 0; c < cols; ++c) {
            col_sums[c] += double(run_sq[c]);
            col_weights[c] += double(run[c]);
            run_sq[c] = T(0);
            run[c] = T(0);
        }
    };
    for (std::int64_t r = 0; r < rows;) {
        // two rows while there are two, after a group of two or none
        const std::int64_t n = rows - r >= 2 ? 2 : 1;
        auto group = n == 2 ? (m == 0 ? row_group<T, SCALED, 2, 0> : row_group<T, SCALED, 2, 2>)
                            : (m == 0 ? row_group<T, SCALED, 1, 0> : row_group<T, SCALED, 1, 2>);
        group(gs, lerp, p + r * cols, g + r * cols, cols, row_var + r, run_sq, run, p_sq, g_prev,
              q_prev, q);
        g_prev = g + r * cols;
        m = n;
        q_prev[0] = q[0];
        q_prev[1] = q[1];
        r += n;
        if (r % kWeightRun == 0 && r < rows) flush();
    }
    (m == 2 ? weigh<T, SCALED, 2> : weigh<T, SCALED, 1>)(gs, g_prev, cols, q_prev, 0, cols, run);
    flush();
    return fold_lanes(p_sq);
}

template <class T>
double adafactor_rows(const AdafactorParams& hp, const T* p, const T* g, std::int64_t rows,
                      std::int64_t cols, T* row_var, double* col_sums, double* col_weights,
                      T* run) {
    if (hp.grad_scale == 1.0)
        return rows_pass<T, false>(hp, p, g, rows, cols, row_var, col_sums, col_weights, run);
    return rows_pass<T, true>(hp, p, g, rows, cols, row_var, col_sums, col_weights, run);
}

template <class T>
AdafactorSums adafactor_full(const AdafactorParams& hp, const T* __restrict p,
                             const T* __restrict g, T* __restrict v, std::int64_t n,
                             double eps1) {
    const T gs = T(hp.grad_scale), eps1_sq = T(eps1 * eps1);
    const Lerp<T> lerp(hp.beta2_weight);
    double p_sq[kLanes] = {}, u_sq[kLanes] = {};
    auto visit = [&](int j, std::int64_t i) {
        const T d = g[i] * gs, vn = lerp(v[i], d * d);
        v[i] = vn;
        const double x = double(p[i]), u = double(scaled(d, vn, eps1_sq));
        p_sq[j] += x * x;
        u_sq[j] += u * u;
    };
    std::int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) visit(j, i + j);
    for (int j = 0; i + j < n; ++j) visit(j, i + j);
    return {fold_lanes(p_sq), fold_lanes(u_sq)};
}

// A factored param's u = g * min(a_i * b_j, 1 / eps1), with a_i =
// 1 / sqrt(R_i / rmean) per row and b_j = 1 / sqrt(C_j) per column (the
// driver's, from adafactor_rsqrt): torch's g / sqrt(max(R_i C_j / rmean,
// eps1^2)) rounded differently, at three multiplies and a min per element.
template <class T>
static T factored_u(T g, T a, T b, T cap) {
    const T w = a * b;
    return g * (w < cap ? w : cap);
}

template <class T>
double adafactor_factored_norm(const AdafactorParams& hp, const T* __restrict g,
                               std::int64_t rows, std::int64_t cols, const T* __restrict row_rsqrt,
                               const T* __restrict col_rsqrt, double eps1) {
    const T gs = T(hp.grad_scale), cap = T(1.0 / eps1);
    double u_sq[kLanes] = {};
    for (std::int64_t r = 0; r < rows; ++r) {
        const T* __restrict gr = g + r * cols;
        const T a = row_rsqrt[r];
        std::int64_t c = 0;
        for (; c + kLanes <= cols; c += kLanes)
            for (int j = 0; j < kLanes; ++j) {
                const double u = double(factored_u(gr[c + j] * gs, a, col_rsqrt[c + j], cap));
                u_sq[j] += u * u;
            }
        for (int j = 0; c + j < cols; ++j) {
            const double u = double(factored_u(gr[c + j] * gs, a, col_rsqrt[c + j], cap));
            u_sq[j] += u * u;
        }
    }
    return fold_lanes(u_sq);
}

// decay multiplies only when weight_decay != 0, as torch's mul_ (a multiply
// by 1 would be exact anyway).
template <class T, bool DECAY, bool SCALED>
static void factored_apply(const AdafactorParams& hp, T* __restrict p, const T* __restrict g,
                           std::int64_t rows, std::int64_t cols, const T* __restrict row_rsqrt,
                           const T* __restrict col_rsqrt, double eps1, double scale) {
    const GradScale<T, SCALED> gs{T(hp.grad_scale)};
    const T cap = T(1.0 / eps1);
    const T decay = T(1.0 - hp.lr * hp.weight_decay), s = T(scale);
    for (std::int64_t r = 0; r < rows; ++r) {
        T* __restrict pr = p + r * cols;
        const T* __restrict gr = g + r * cols;
        const T a = row_rsqrt[r];
        for (std::int64_t c = 0; c < cols; ++c) {
            const T u = factored_u(gs(gr[c]), a, col_rsqrt[c], cap);
            const T x = DECAY ? pr[c] * decay : pr[c];
            pr[c] = x + s * u;
        }
    }
}

template <class T>
void adafactor_factored_apply(const AdafactorParams& hp, T* p, const T* g, std::int64_t rows,
                              std::int64_t cols, const T* row_rsqrt, const T* col_rsqrt,
                              double eps1, double scale) {
    const bool decay = hp.weight_decay != 0, scaled = hp.grad_scale != 1.0;
    auto apply = decay ? (scaled ? factored_apply<T, true, true> : factored_apply<T, true, false>)
                       : (scaled ? factored_apply<T, false, true> : factored_apply<T, false, false>);
    apply(hp, p, g, rows, cols, row_rsqrt, col_rsqrt, eps1, scale);
}

template <class T, bool DECAY>
static void full_apply(const AdafactorParams& hp, T* __restrict p, const T* __restrict g,
                       const T* __restrict v, std::int64_t n, double eps1, double scale) {
    const T gs = T(hp.grad_scale), eps1_sq = T(eps1 * eps1);
    const T decay = T(1.0 - hp.lr * hp.weight_decay), s = T(scale);
    for (std::int64_t i = 0; i < n; ++i) {
        const T u = scaled(g[i] * gs, v[i], eps1_sq);
        const T x = DECAY ? p[i] * decay : p[i];
        p[i] = x + s * u;
    }
}

template <class T>
void adafactor_full_apply(const AdafactorParams& hp, T* p, const T* g, const T* v,
                          std::int64_t n, double eps1, double scale) {
    if (hp.weight_decay != 0)
        full_apply<T, true>(hp, p, g, v, n, eps1, scale);
    else
        full_apply<T, false>(hp, p, g, v, n, eps1, scale);
}

// A matrix's column factors from their sums: x = lerp(x, sum / count, w) in
// T, for `n` entries (pass 1 updates the row factors).
template <class T>
void adafactor_factor(const AdafactorParams& hp, T* __restrict x, const double* __restrict sums,
                      double count, std::int64_t n) {
    const Lerp<T> lerp(hp.beta2_weight);
    for (std::int64_t i = 0; i < n; ++i) x[i] = lerp(x[i], T(sums[i] / count));
}

// out[i] = 1 / sqrt(x[i] / divisor), in T.
template <class T>
void adafactor_rsqrt(const T* __restrict x, T divisor, T* __restrict out, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = T(1) / root(x[i] / divisor);
}

// A 16-bit param's (or grad's) elements [lo, lo + n) as T, and back, rounded
// to nearest even: the driver runs the T pieces on such buffers.
template <class T>
void adafactor_widen(const Operand& x, std::int64_t lo, std::int64_t n, T* out) {
    widen(x, lo, n, out);
}

template <class T>
void adafactor_narrow(const T* in, const Operand& x, std::int64_t lo, std::int64_t n) {
    narrow(in, x, lo, n);
}

#define LRFAST_ADAFACTOR_INSTANTIATE(T)                                                        \
    template double adafactor_rows<T>(const AdafactorParams&, const T*, const T*,              \
                                      std::int64_t, std::int64_t, T*, double*, double*, T*);   \
    template AdafactorSums adafactor_full<T>(const AdafactorParams&, const T*, const T*, T*,   \
                                             std::int64_t, double);                            \
    template double adafactor_factored_norm<T>(const AdafactorParams&, const T*,               \
                                               std::int64_t, std::int64_t, const T*, const T*, \
                                               double);                                        \
    template void adafactor_factored_apply<T>(const AdafactorParams&, T*, const T*,            \
                                              std::int64_t, std::int64_t, const T*, const T*,  \
                                              double, double);                                 \
    template void adafactor_rsqrt<T>(const T*, T, T*, std::int64_t);                           \
    template void adafactor_widen<T>(const Operand&, std::int64_t, std::int64_t, T*);          \
    template void adafactor_narrow<T>(const T*, const Operand&, std::int64_t, std::int64_t);   \
    template void adafactor_full_apply<T>(const AdafactorParams&, T*, const T*, const T*,      \
                                          std::int64_t, double, double);                       \
    template void adafactor_factor<T>(const AdafactorParams&, T*, const double*, double,       \
                                      std::int64_t);
LRFAST_ADAFACTOR_INSTANTIATE(float)
LRFAST_ADAFACTOR_INSTANTIATE(double)
#undef LRFAST_ADAFACTOR_INSTANTIATE

}  // namespace lrfast::LRFAST_ISA_NS
