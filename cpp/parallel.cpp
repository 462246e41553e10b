#include "parallel.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace lrfast {
namespace {

// The CPUs this process may run on, at most kMaxThreads.
int cpu_count() {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        return std::clamp(CPU_COUNT(&set), 1, kMaxThreads);
#endif
    return std::clamp(int(std::thread::hardware_concurrency()), 1, kMaxThreads);
}

class Pool {
  public:
    // Starts up to `workers` threads. When one cannot start (the process is out
    // of threads or address space) the pool keeps those already running and
    // failure() says why. Everything that may throw otherwise is allocated
    // before the first thread starts: the constructor must not unwind while a
    // worker waits on the members it would destroy.
    explicit Pool(int workers) : parts_(std::size_t(workers) + 1) {
        threads_.reserve(std::size_t(workers));
        for (int i = 0; i < workers; ++i) {
            try {
                threads_.emplace_back([this, i] { work(i + 1); });
            } catch (const std::system_error& e) {
                failure_ = e.code();
                break;
            } catch (const std::bad_alloc&) {
                failure_ = std::make_error_code(std::errc::not_enough_memory);
                break;
            }
        }
        n_parts_ = threads_.size() + 1;
    }

    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        wake_.notify_all();
        for (auto& t : threads_) t.join();
    }

    int workers() const { return int(threads_.size()); }
    std::error_code failure() const { return failure_; }

    // Runs a job on the caller and whichever workers wake in time; returns when
    // every block is done. The caller never waits for a worker that has not
    // started, only for blocks that a worker has claimed.
    void run(std::int64_t n_blocks, const std::function<void(std::int64_t)>& body) {
        {
            std::unique_lock<std::mutex> lock(mu_);
            // A late worker may still be leaving the previous job's claim loop.
            done_.wait(lock, [this] { return active_ == 0; });
            body_ = &body;
            const std::int64_t n_parts = std::int64_t(n_parts_);
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
        for (std::size_t k = 0; k < n_parts_; ++k) {
            Part& part = parts_[(self + k) % n_parts_];
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

    std::vector<Part> parts_;  // one per thread asked for, the caller's first
    std::size_t n_parts_ = 1;  // one per thread started, the caller included
    std::vector<std::thread> threads_;
    std::error_code failure_;  // why the first thread that did not start failed
    std::mutex mu_;
    std::condition_variable wake_, done_;
    std::uint64_t generation_ = 0;
    int active_ = 0;  // workers inside claim()
    bool stop_ = false;
    const std::function<void(std::int64_t)>* body_ = nullptr;
    std::atomic<std::int64_t> completed_{0};
};

// Lock order: g_running, then g_config.
std::mutex g_running;  // held by the one call using the pool
std::mutex g_config;   // guards g_threads, g_pool's replacement and g_warning
int g_threads = 1;     // until init_num_threads
Pool* g_pool = nullptr;
std::string g_warning;  // for take_pool_warning

// fork() copies only the calling thread, so a lock another thread holds at
// that moment would stay locked in the child forever. The forking thread takes
// both locks first (waiting for a step in flight to finish) and releases them
// on both sides. The child has none of the pool's threads: it forgets the pool
// (leaking it, as its threads cannot be joined there) and starts one on demand.
void before_fork() {
    g_running.lock();
    g_config.lock();
}
void after_fork_in_parent() {
    g_config.unlock();
    g_running.unlock();
}
void after_fork_in_child() {
    g_pool = nullptr;
    g_config.unlock();
    g_running.unlock();
}
[[maybe_unused]] const int g_atfork =
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);

// Starts g_pool for g_threads; with fewer threads when not all can start.
// Called with both locks held.
void start_pool() {
    const int wanted = g_threads;
    g_pool = new Pool(wanted - 1);
    const int started = g_pool->workers() + 1;
    if (started == wanted) return;
    g_warning = "lrfast: only " + std::to_string(started) + " of the " + std::to_string(wanted) +
                " threads asked for could run (starting a thread failed: " +
                g_pool->failure().message() + "); steps use " + std::to_string(started);
    g_threads = started;
    if (started == 1) {
        delete g_pool;
        g_pool = nullptr;
    }
}

}  // namespace

void set_num_threads(int n) {
    std::lock_guard<std::mutex> running(g_running);
    std::lock_guard<std::mutex> lock(g_config);
    g_threads = std::clamp(n, 1, kMaxThreads);
    delete g_pool;
    g_pool = nullptr;
}

std::string init_num_threads() {
    const int cpus = cpu_count();
    int n = cpus;
    std::string warning;
    if (const char* env = std::getenv("LRFAST_NUM_THREADS")) {
        const std::string value(env), max = std::to_string(kMaxThreads);
        const bool digits = std::all_of(value.begin(), value.end(),
                                        [](char c) { return c >= '0' && c <= '9'; });
        errno = 0;
        const long parsed = digits ? std::strtol(env, nullptr, 10) : 0;
        if (parsed < 1) {
            warning = "ignoring LRFAST_NUM_THREADS=" + value +
                      " (expected a whole number from 1 to " + max + "); using " +
                      std::to_string(cpus) + ", the CPU count";
        } else if (errno == ERANGE || parsed > kMaxThreads) {
            n = kMaxThreads;
            warning = "LRFAST_NUM_THREADS=" + value + " is above the maximum of " + max +
                      " threads; using " + max;
        } else {
            n = int(parsed);
        }
    }
    std::lock_guard<std::mutex> lock(g_config);
    g_threads = n;
    return warning;
}

std::string take_pool_warning() {
    std::lock_guard<std::mutex> lock(g_config);
    return std::exchange(g_warning, std::string());
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
            if (g_threads > 1 && g_pool == nullptr) start_pool();
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
