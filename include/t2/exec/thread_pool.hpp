#pragma once
// A fork-join pool of std::threads. The user creates it and passes it (through
// exec::threads) to kernels; nothing in t2 starts threads behind the user's back.
//
// run(n, f) calls f(task) for every task in [0, n) and returns when all are done. The
// calling thread works too, so a pool of size 1 has no worker threads at all. Tasks are
// handed out by an atomic counter (cheap dynamic balancing). The first exception a task
// throws is rethrown by run() after every task has finished.
//
// Nesting: a run() issued while a job of the same pool is in progress further up the call
// chain runs its tasks serially on the calling thread, instead of waiting for a pool that is
// busy with the very job that waits for it. The chain is followed across pools: a task of A
// that runs B, whose task runs A again (A → B → A), finds A busy even on B's worker threads,
// because each job carries the chain of pools it was started from. (Two unrelated threads
// that nest two pools in opposite orders at the same moment can still wait on each other, as
// two mutexes taken in opposite orders would.)
//
// A pool whose threads cannot all be started (the system refuses one) joins those that did
// start and throws t2::error.
//
// Between jobs, workers and the waiting caller spin for a short while (spin_time) before
// they sleep: a model's forward pass is a chain of short kernels, and waking a sleeping
// thread takes longer than many of them. Measured on decode, without the spin the second
// thread joined most kernels too late to help.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace exec {

class thread_pool {
public:
    // n_threads counts the caller; 0 means std::thread::hardware_concurrency().
    explicit thread_pool(std::size_t n_threads = 0) {
        if (n_threads == 0)
            n_threads = std::max(1u, std::thread::hardware_concurrency());
        workers_.reserve(n_threads - 1);
        try {
            for (std::size_t i = 0; i + 1 < n_threads; ++i)
                workers_.emplace_back([this] { work_loop(); });
        } catch (const std::system_error& e) {
            const std::size_t started = workers_.size();
            stop_workers();
            t2::detail::throw_error("thread_pool: could not start thread ", started + 2, " of ", n_threads,
                                    " (", e.what(), "); the ", started + 1,
                                    " already running were joined. Ask for fewer threads.");
        }
    }
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;
    ~thread_pool() { stop_workers(); }

    std::size_t size() const noexcept { return workers_.size() + 1; }

    template <class F>
    void run(std::size_t n_tasks, F&& task) {
        if (n_tasks == 0)
            return;
        if (n_tasks == 1 || workers_.empty() || busy_up_the_chain()) {
            // Same contract as the parallel path: every task runs, then the first error.
            std::exception_ptr first_error;
            for (std::size_t i = 0; i < n_tasks; ++i) {
                try {
                    task(i);
                } catch (...) {
                    if (!first_error)
                        first_error = std::current_exception();
                }
            }
            if (first_error)
                std::rethrow_exception(first_error);
            return;
        }
        std::lock_guard one_job_at_a_time(run_mutex_);
        job_ = std::ref(task);
        job_parent_ = current_frame();
        n_tasks_ = n_tasks;
        next_task_.store(0, std::memory_order_relaxed);
        error_ = nullptr;
        {
            std::lock_guard lock(mutex_);
            active_workers_.store(workers_.size(), std::memory_order_relaxed);
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        do_tasks();
        spin_until([this] { return active_workers_.load(std::memory_order_acquire) == 0; });
        std::unique_lock lock(mutex_);
        finished_.wait(lock, [this] { return active_workers_.load(std::memory_order_acquire) == 0; });
        job_ = nullptr;
        if (error_)
            std::rethrow_exception(std::exchange(error_, nullptr));
    }

private:
    // One link per job in progress on a thread: the pool, and the link of the thread that
    // started the job (which lives on that thread's stack while it waits in run()).
    struct frame {
        const thread_pool* pool;
        const frame* parent;
    };
    static const frame*& current_frame() noexcept {
        thread_local const frame* top = nullptr;
        return top;
    }
    bool busy_up_the_chain() const noexcept {
        for (const frame* f = current_frame(); f; f = f->parent)
            if (f->pool == this)
                return true;
        return false;
    }

    void stop_workers() noexcept {
        {
            std::lock_guard lock(mutex_);
            stopping_.store(true, std::memory_order_release);
        }
        wake_.notify_all();
        for (auto& w : workers_)
            w.join();
    }

    void do_tasks() {
        const frame here{this, job_parent_};
        const frame* outer = std::exchange(current_frame(), &here);
        for (;;) {
            const std::size_t i = next_task_.fetch_add(1, std::memory_order_relaxed);
            if (i >= n_tasks_)
                break;
            try {
                job_(i);
            } catch (...) {
                std::lock_guard lock(mutex_);
                if (!error_)
                    error_ = std::current_exception();
            }
        }
        current_frame() = outer;
    }

    // Polls `done` for up to spin_time, pausing the core between polls.
    template <class Done>
    static bool spin_until(Done&& done) {
        using clock = std::chrono::steady_clock;
        const auto deadline = clock::now() + spin_time;
        for (unsigned i = 1;; ++i) {
            if (done())
                return true;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            if (i % 64 == 0 && clock::now() > deadline)
                return false;
        }
    }

    void work_loop() {
        std::size_t seen = 0;
        for (;;) {
            const auto job_arrived = [&] {
                return stopping_.load(std::memory_order_acquire) ||
                       generation_.load(std::memory_order_acquire) != seen;
            };
            if (!spin_until(job_arrived)) {
                std::unique_lock lock(mutex_);
                wake_.wait(lock, job_arrived);
            }
            if (stopping_.load(std::memory_order_acquire))
                return;
            seen = generation_.load(std::memory_order_acquire);
            do_tasks();
            if (active_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard lock(mutex_);
                finished_.notify_one();
            }
        }
    }

    static constexpr std::chrono::microseconds spin_time{100};

    std::vector<std::thread> workers_;
    std::mutex run_mutex_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable finished_;
    std::function<void(std::size_t)> job_;
    const frame* job_parent_ = nullptr; // the chain the current job was started from
    std::size_t n_tasks_ = 0;
    std::atomic<std::size_t> next_task_{0};
    std::atomic<std::size_t> generation_{0};
    std::atomic<std::size_t> active_workers_{0};
    std::atomic<bool> stopping_{false};
    std::exception_ptr error_;
};

} // namespace exec
T2_NAMESPACE_END
