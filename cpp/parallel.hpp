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

namespace lrfast {

// Threads used by parallel_for, the caller included (default: the CPUs this
// process may run on, or LRFAST_NUM_THREADS).
void set_num_threads(int n);
int get_num_threads();

// Calls body(b) once for every block b in [0, n_blocks). Runs on the calling
// thread alone when there are fewer than `min_parallel_blocks` blocks, when one
// thread is configured, or when another call is using the pool.
void parallel_for(std::int64_t n_blocks, std::int64_t min_parallel_blocks,
                  const std::function<void(std::int64_t)>& body);

}  // namespace lrfast
