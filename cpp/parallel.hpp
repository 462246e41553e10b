// A small thread pool for the kernels.
//
// Work is a count of equal blocks that threads claim one at a time from an
// atomic counter, the calling thread included. Claiming (rather than a static
// split) keeps a step fast when another runtime's threads (PyTorch's OpenMP
// pool, spinning after its last parallel region) hold a core for a while: the
// threads that do run take the blocks. Results never depend on which thread
// ran a block, only on the fixed block boundaries.
//
// Idle workers sleep on a condition variable; they never spin between calls.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace lrfast {

// The most threads the kernels use. A step is bound by memory bandwidth, which
// a few dozen threads saturate on any machine; a mistaken count (10**6) must
// not start a thread per unit and exhaust the machine's processes.
constexpr int kMaxThreads = 256;

// Threads used by parallel_for, the caller included, in [1, kMaxThreads].
void set_num_threads(int n);
int get_num_threads();

// Sets the thread count from LRFAST_NUM_THREADS, or else the CPUs this process
// may run on (at most kMaxThreads). Returns a warning about an environment
// value it could not use as given, or "".
std::string init_num_threads();

// Set when a pool could not start all its threads: it runs on those that
// started, and the thread count drops to match. Returns the message once, then
// "" until another pool falls short. (Pools start where the GIL is released,
// so the binding reports this after taking it back.)
std::string take_pool_warning();

// Calls body(b) once for every block b in [0, n_blocks). Runs on the calling
// thread alone when there are fewer than `min_parallel_blocks` blocks, when one
// thread is configured, or when another call is using the pool.
void parallel_for(std::int64_t n_blocks, std::int64_t min_parallel_blocks,
                  const std::function<void(std::int64_t)>& body);

}  // namespace lrfast
