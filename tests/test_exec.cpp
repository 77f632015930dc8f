// Executors: the concepts, the thread pool and threads<Inner>::parallel_for.
//
// The pool tests are also meant to run under -fsanitize=thread. Tasks only touch atomics
// (or memory guarded by a mutex); doctest assertions run on the test's own thread.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/exec/cuda.hpp"
#include "t2/exec/executor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/thread_pool.hpp"
#include "t2/exec/threads.hpp"

#if defined(__linux__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#if defined(__has_feature)
#if !__has_feature(address_sanitizer) && !__has_feature(thread_sanitizer)
#define T2_TEST_CAN_LIMIT_ADDRESS_SPACE 1 // sanitizers reserve terabytes of shadow memory
#endif
#else
#define T2_TEST_CAN_LIMIT_ADDRESS_SPACE 1
#endif
#endif
#if T2_TEST_CAN_LIMIT_ADDRESS_SPACE
#include <cstdio>
#include <cstdlib>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

namespace exec = t2::exec;

// ---- concepts ------------------------------------------------------------------------------

static_assert(exec::executor<exec::scalar> && exec::cpu_executor<exec::scalar>);
static_assert(exec::cpu_executor<exec::threads<exec::scalar>>);
static_assert(exec::cpu_executor<exec::threads<exec::threads<exec::scalar>>>);
#if T2_ENABLE_SIMD
static_assert(exec::cpu_executor<exec::simd<>>);
static_assert(exec::cpu_executor<exec::threads<exec::simd<>>>);
static_assert(exec::simd<>::lanes >= 1);
#endif
static_assert(exec::executor<exec::cuda> && !exec::cpu_executor<exec::cuda>);
static_assert(std::is_same_v<exec::cuda::space, t2::cuda_memory>);
static_assert(std::is_same_v<exec::threads<exec::scalar>::inner_type, exec::scalar>);
static_assert(!exec::executor<int> && !exec::executor<exec::thread_pool>);
namespace exec_test {
struct no_name {
    using space = t2::host_memory;
};
struct bad_space {
    using space = int;
    static constexpr const char* name = "bad";
};
struct user_executor { // users can write their own
    using space = t2::host_memory;
    static constexpr const char* name = "mine";
};
} // namespace exec_test
static_assert(!exec::executor<exec_test::no_name> && !exec::executor<exec_test::bad_space>);
static_assert(exec::cpu_executor<exec_test::user_executor> &&
              exec::cpu_executor<exec::threads<exec_test::user_executor>>);
static_assert(!std::is_copy_constructible_v<exec::thread_pool>);
static_assert(std::is_trivially_copyable_v<exec::threads<exec::scalar>>);

namespace {

constexpr std::size_t pool_sizes[] = {1, 2, 3, 4};
constexpr std::size_t task_counts[] = {0, 1, 2, 3, 4, 5, 7, 8, 16, 31, 100, 1000, 4097};

struct task_failure { // not derived from std::exception: the type must survive as is
    std::size_t task;
};

// Spins (yielding) until pred() holds or `seconds` pass; returns pred().
template <class P>
bool wait_for(P&& pred, double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline)
            return pred();
        std::this_thread::yield();
    }
    return true;
}

} // namespace

TEST_CASE("thread_pool: size counts the calling thread") {
    for (std::size_t n : pool_sizes) {
        exec::thread_pool pool(n);
        CHECK(pool.size() == n);
    }
    exec::thread_pool hardware;
    CHECK(hardware.size() == std::max(1u, std::thread::hardware_concurrency()));
    CHECK(exec::threads<exec::scalar>(hardware).concurrency() == hardware.size());
}

TEST_CASE("thread_pool: every task runs exactly once") {
    for (std::size_t size : pool_sizes) {
        exec::thread_pool pool(size);
        for (std::size_t n : task_counts) {
            std::vector<std::atomic<int>> count(n);
            std::atomic<std::size_t> total{0};
            pool.run(n, [&](std::size_t i) {
                count[i].fetch_add(1, std::memory_order_relaxed);
                total.fetch_add(1, std::memory_order_relaxed);
            });
            // run() returning means every task is done: no synchronisation needed here.
            std::size_t wrong = 0;
            for (auto& c : count)
                wrong += c.load(std::memory_order_relaxed) != 1;
            INFO("pool size " << size << ", " << n << " tasks");
            CHECK(wrong == 0);
            CHECK(total.load() == n);
        }
    }
}

TEST_CASE("thread_pool: the workers really run tasks in parallel") {
    // Two tasks that each wait for the other: they finish only if they run concurrently.
    for (std::size_t size : {2, 3, 4}) {
        exec::thread_pool pool(size);
        std::atomic<std::size_t> arrived{0};
        std::atomic<bool> all_met{true};
        pool.run(size, [&](std::size_t) {
            arrived.fetch_add(1);
            if (!wait_for([&] { return arrived.load() == size; }, 20.0))
                all_met = false;
        });
        CHECK(all_met.load());
    }
}

TEST_CASE("thread_pool: the first exception is rethrown after every task has finished") {
    for (std::size_t size : pool_sizes) {
        exec::thread_pool pool(size);
        for (std::size_t n : {1, 2, 5, 64, 1000}) {
            INFO("pool size " << size << ", " << n << " tasks");
            std::vector<std::atomic<int>> count(n);
            const std::size_t bad = n / 2;
            bool caught = false;
            try {
                pool.run(n, [&](std::size_t i) {
                    count[i].fetch_add(1);
                    if (i == bad)
                        throw task_failure{i};
                });
            } catch (const task_failure& e) {
                caught = true;
                CHECK(e.task == bad);
            }
            CHECK(caught);
            std::size_t wrong = 0;
            for (auto& c : count)
                wrong += c.load() != 1;
            CHECK(wrong == 0); // the tasks after the failing one ran too

            // Several failing tasks: one exception comes out, of the type thrown.
            std::atomic<std::size_t> ran{0};
            CHECK_THROWS_AS(pool.run(n,
                                     [&](std::size_t i) {
                                         ran.fetch_add(1);
                                         if (i % 3 == 0)
                                             throw t2::error("task " + std::to_string(i));
                                     }),
                            t2::error);
            CHECK(ran.load() == n);
            CHECK_THROWS_WITH_AS(pool.run(n, [](std::size_t) { throw std::out_of_range("oops"); }),
                                 "oops", std::out_of_range);

            // The pool is still usable afterwards.
            std::atomic<std::size_t> after{0};
            pool.run(n, [&](std::size_t) { after.fetch_add(1); });
            CHECK(after.load() == n);
        }
    }
}

TEST_CASE("thread_pool: with one thread the first failing task is the one rethrown") {
    exec::thread_pool pool(1);
    try {
        pool.run(10, [](std::size_t i) {
            if (i >= 3)
                throw task_failure{i};
        });
        FAIL("no exception");
    } catch (const task_failure& e) {
        CHECK(e.task == 3);
    }
}

TEST_CASE("thread_pool: a run from inside a task does not deadlock") {
    for (std::size_t size : pool_sizes) {
        exec::thread_pool pool(size);
        exec::thread_pool other(2);
        std::atomic<std::size_t> inner{0}, nested_other{0};
        std::vector<std::atomic<int>> outer(13);
        pool.run(outer.size(), [&](std::size_t i) {
            outer[i].fetch_add(1);
            pool.run(7, [&](std::size_t) {
                inner.fetch_add(1);
                pool.run(2, [&](std::size_t) { inner.fetch_add(1); }); // and deeper
            });
            other.run(5, [&](std::size_t) { nested_other.fetch_add(1); }); // another pool
        });
        INFO("pool size " << size);
        CHECK(inner.load() == outer.size() * 7 * 3);
        CHECK(nested_other.load() == outer.size() * 5);
        std::size_t wrong = 0;
        for (auto& c : outer)
            wrong += c.load() != 1;
        CHECK(wrong == 0);
        // An exception from a nested run reaches the outermost caller.
        CHECK_THROWS_AS(pool.run(4,
                                 [&](std::size_t) {
                                     pool.run(3, [](std::size_t j) {
                                         if (j == 1)
                                             throw task_failure{j};
                                     });
                                 }),
                        task_failure);
    }
}

TEST_CASE("thread_pool: nesting across pools (A → B → A, and deeper) completes") {
    // Each inner run of A happens while A's outer job is still waiting for B: it must run
    // serially wherever it lands, on A's caller, A's workers or B's workers.
    for (std::size_t size : pool_sizes) {
        exec::thread_pool a(size), b(3), c(2);
        std::atomic<std::size_t> innermost{0};
        a.run(5, [&](std::size_t) {
            b.run(4, [&](std::size_t) {
                a.run(3, [&](std::size_t) {
                    c.run(2, [&](std::size_t) {
                        b.run(2, [&](std::size_t) { innermost.fetch_add(1); }); // A → B → A → C → B
                    });
                });
            });
        });
        INFO("pool size " << size);
        CHECK(innermost.load() == 5 * 4 * 3 * 2 * 2);
        // And an exception from the innermost run reaches the outermost caller.
        CHECK_THROWS_AS(a.run(2,
                              [&](std::size_t) {
                                  b.run(2, [&](std::size_t) {
                                      a.run(2, [](std::size_t j) {
                                          if (j == 1)
                                              throw task_failure{j};
                                      });
                                  });
                              }),
                        task_failure);
        // The pools are usable afterwards, in parallel again.
        std::atomic<std::size_t> total{0};
        a.run(16, [&](std::size_t) { total.fetch_add(1); });
        b.run(16, [&](std::size_t) { total.fetch_add(1); });
        CHECK(total.load() == 32);
    }
}

#if T2_TEST_CAN_LIMIT_ADDRESS_SPACE
TEST_CASE("thread_pool: a thread that cannot start is a t2::error, and the started ones are joined") {
    // In a child process, the address space is capped a few thread stacks above what is in
    // use, so the pool's constructor fails part-way. Without the fix the destroyed, still
    // joinable std::threads call std::terminate, which the exit status shows.
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        std::size_t pages = 0;
        if (FILE* statm = std::fopen("/proc/self/statm", "r")) {
            if (std::fscanf(statm, "%zu", &pages) != 1)
                pages = 0;
            std::fclose(statm);
        }
        rlimit stack{};
        ::getrlimit(RLIMIT_STACK, &stack);
        const std::size_t stack_bytes = stack.rlim_cur == RLIM_INFINITY ? (8u << 20) : stack.rlim_cur;
        const rlimit cap{pages * 4096 + 3 * stack_bytes, pages * 4096 + 3 * stack_bytes};
        if (pages == 0 || ::setrlimit(RLIMIT_AS, &cap) != 0)
            std::_Exit(3);
        int status = 4; // no error thrown
        try {
            exec::thread_pool too_many(64);
        } catch (const t2::error& e) {
            const std::string what = e.what();
            status = what.find("could not start thread") != std::string::npos &&
                             what.find(" of 64") != std::string::npos
                         ? 0
                         : 5;
        }
        std::_Exit(status);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    INFO("child exit status " << status << " (0: t2::error thrown; 3: no cap; 4: no error; 5: wrong message)");
    REQUIRE(WIFEXITED(status)); // a signal here (SIGABRT) is std::terminate
    CHECK(WEXITSTATUS(status) == 0);
}
#endif

TEST_CASE("thread_pool: many consecutive small runs complete (no lost wake-ups)") {
    for (std::size_t size : {2, 4}) {
        exec::thread_pool pool(size);
        std::atomic<std::size_t> total{0};
        constexpr std::size_t runs = 10000;
        for (std::size_t r = 0; r < runs; ++r)
            pool.run(size, [&](std::size_t) { total.fetch_add(1, std::memory_order_relaxed); });
        CHECK(total.load() == runs * size);
    }
}

TEST_CASE("thread_pool: runs from several outside threads are serialised safely") {
    exec::thread_pool pool(3);
    std::atomic<std::size_t> total{0};
    constexpr std::size_t runs = 300, tasks = 6;
    std::vector<std::thread> callers;
    for (int t = 0; t < 3; ++t)
        callers.emplace_back([&] {
            for (std::size_t r = 0; r < runs; ++r)
                pool.run(tasks, [&](std::size_t) { total.fetch_add(1, std::memory_order_relaxed); });
        });
    for (auto& c : callers)
        c.join();
    CHECK(total.load() == 3 * runs * tasks);
}

TEST_CASE("thread_pool: destruction with idle workers is clean") {
    for (int round = 0; round < 50; ++round) {
        exec::thread_pool never_used(4);
    }
    for (std::size_t size : pool_sizes) {
        auto pool = std::make_unique<exec::thread_pool>(size);
        std::atomic<std::size_t> total{0};
        pool->run(8, [&](std::size_t) { total.fetch_add(1); });
        std::this_thread::sleep_for(std::chrono::milliseconds(5)); // workers back asleep
        pool.reset();
        CHECK(total.load() == 8);
    }
    // Destroyed right after a run, workers possibly not yet back to waiting.
    for (int round = 0; round < 50; ++round) {
        exec::thread_pool pool(3);
        pool.run(3, [](std::size_t) {});
    }
}

TEST_CASE("threads<scalar>::parallel_for covers [0, n) exactly once in chunks of at least grain") {
    for (std::size_t size : pool_sizes) {
        exec::thread_pool pool(size);
        const exec::threads<exec::scalar> ex(pool);
        CHECK(&ex.pool() == &pool);
        CHECK(ex.concurrency() == size);
        for (std::size_t n : {0, 1, 2, 3, 5, 10, 17, 64, 100, 1000, 4099}) {
            for (std::size_t grain : {0, 1, 3, 16, 64, 1000, 5000}) {
                INFO("threads " << size << ", n " << n << ", grain " << grain);
                std::vector<std::atomic<int>> count(n);
                std::mutex chunks_mutex;
                std::vector<std::pair<std::size_t, std::size_t>> chunks;
                ex.parallel_for(n, grain, [&](std::size_t begin, std::size_t end) {
                    {
                        std::lock_guard lock(chunks_mutex);
                        chunks.emplace_back(begin, end);
                    }
                    for (std::size_t i = begin; i < end && i < n; ++i)
                        count[i].fetch_add(1, std::memory_order_relaxed);
                });
                std::size_t wrong = 0;
                for (auto& c : count)
                    wrong += c.load() != 1;
                CHECK(wrong == 0);
                if (n == 0) {
                    CHECK(chunks.empty());
                    continue;
                }
                const std::size_t min_chunk = std::min(n, std::max<std::size_t>(grain, 1));
                std::size_t too_small = 0, empty_or_inverted = 0, past_end = 0;
                for (const auto& [b, e] : chunks) {
                    too_small += e - b < min_chunk;
                    empty_or_inverted += b >= e;
                    past_end += e > n;
                }
                CHECK(too_small == 0);
                CHECK(empty_or_inverted == 0);
                CHECK(past_end == 0);
                CHECK(chunks.size() <= (size == 1 ? 1 : 4 * size));
                if (n >= size * std::max<std::size_t>(grain, 1))
                    CHECK(chunks.size() >= size); // enough work: every thread gets a chunk
            }
        }
    }
}

TEST_CASE("threads<scalar>::parallel_for propagates exceptions from the body") {
    exec::thread_pool pool(2);
    const exec::threads<exec::scalar> ex(pool);
    CHECK_THROWS_AS(ex.parallel_for(100, 1,
                                    [](std::size_t begin, std::size_t) {
                                        if (begin == 0)
                                            throw t2::error("first chunk");
                                    }),
                    t2::error);
    std::atomic<std::size_t> covered{0};
    ex.parallel_for(100, 1, [&](std::size_t b, std::size_t e) { covered.fetch_add(e - b); });
    CHECK(covered.load() == 100);
}
