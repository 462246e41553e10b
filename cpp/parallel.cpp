#include "parallel.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace lrfast {
namespace {

int default_threads() {
    if (const char* env = std::getenv("LRFAST_NUM_THREADS")) {
        const int n = std::atoi(env);
        if (n >= 1) return n;
    }
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
    return std::max(1u, std::thread::hardware_concurrency());
}

class Pool {
  public:
    explicit Pool(int workers) : parts_(std::size_t(workers) + 1) {
        for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i] { work(i + 1); });
    }

    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        wake_.notify_all();
        for (auto& t : threads_) t.join();
    }

    // Runs a job on the caller and whichever workers wake in time; returns when
    // every block is done. The caller never waits for a worker that has not
    // started, only for blocks that a worker has claimed.
    void run(std::int64_t n_blocks, const std::function<void(std::int64_t)>& body) {
        {
            std::unique_lock<std::mutex> lock(mu_);
            // A late worker may still be leaving the previous job's claim loop.
            done_.wait(lock, [this] { return active_ == 0; });
            body_ = &body;
            const std::int64_t n_parts = std::int64_t(parts_.size());
            for (std::int64_t k = 0; k < n_parts; ++k) {
                parts_[k].next.store(n_blocks * k / n_parts, std::memory_order_relaxed);
                parts_[k].end = n_blocks * (k + 1) / n_parts;
            }
            completed_.store(0, std::memory_order_relaxed);
            ++generation_;
        }
        wake_.notify_all();
        claim(0);
        std::unique_lock<std::mutex> lock(mu_);
        done_.wait(lock, [&] { return completed_.load(std::memory_order_acquire) == n_blocks; });
    }

  private:
    // The blocks are cut into one contiguous part per thread, so that each
    // thread streams through memory in order (the hardware prefetchers follow
    // a long run, not blocks dealt out alternately). A thread claims blocks
    // from its own part first, then from the others' parts in turn: a worker
    // that wakes late finds its part already taken over.
    void claim(std::size_t self) {
        for (std::size_t k = 0; k < parts_.size(); ++k) {
            Part& part = parts_[(self + k) % parts_.size()];
            for (std::int64_t b; (b = part.next.fetch_add(1, std::memory_order_relaxed)) < part.end;) {
                (*body_)(b);
                completed_.fetch_add(1, std::memory_order_release);
            }
        }
    }

    void work(std::size_t self) {
        std::uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mu_);
                wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
                ++active_;
            }
            claim(self);
            {
                std::lock_guard<std::mutex> lock(mu_);
                --active_;
            }
            done_.notify_all();
        }
    }

    struct Part {
        alignas(64) std::atomic<std::int64_t> next{0};  // own cache line: claimed concurrently
        std::int64_t end = 0;
    };

    std::vector<Part> parts_;  // one per thread, the caller's first
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable wake_, done_;
    std::uint64_t generation_ = 0;
    int active_ = 0;  // workers inside claim()
    bool stop_ = false;
    const std::function<void(std::int64_t)>* body_ = nullptr;
    std::atomic<std::int64_t> completed_{0};
};

std::mutex g_config;   // guards g_threads and g_pool's replacement
std::mutex g_running;  // held by the one call using the pool
int g_threads = default_threads();
Pool* g_pool = nullptr;

// A forked child has none of the parent's threads: forget the pool (leaking
// it, as its threads cannot be joined there) and start a new one on demand.
void forget_pool_in_child() { g_pool = nullptr; }
[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, forget_pool_in_child);

}  // namespace

void set_num_threads(int n) {
    std::lock_guard<std::mutex> running(g_running);
    std::lock_guard<std::mutex> lock(g_config);
    g_threads = std::max(1, n);
    delete g_pool;
    g_pool = nullptr;
}

int get_num_threads() {
    std::lock_guard<std::mutex> lock(g_config);
    return g_threads;
}

void parallel_for(std::int64_t n_blocks, std::int64_t min_parallel_blocks,
                  const std::function<void(std::int64_t)>& body) {
    std::unique_lock<std::mutex> running(g_running, std::defer_lock);
    if (n_blocks >= std::max<std::int64_t>(2, min_parallel_blocks) && running.try_lock()) {
        Pool* pool;
        {
            std::lock_guard<std::mutex> lock(g_config);
            if (g_threads > 1 && g_pool == nullptr) g_pool = new Pool(g_threads - 1);
            pool = g_threads > 1 ? g_pool : nullptr;
        }
        if (pool != nullptr) {
            pool->run(n_blocks, body);
            return;
        }
    }
    for (std::int64_t b = 0; b < n_blocks; ++b) body(b);
}

}  // namespace lrfast
