#pragma once
// A writer killed mid-way: for the tests that check that t2's atomic writes never leave a
// truncated file where a good one stood.
#include <doctest/doctest.h>

#include <cstddef>
#include <functional>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "t2/io/safetensors.hpp"

namespace t2_test {

// Runs write(options) in a child process, 1 MiB at a time; once `stop_after` bytes are
// written the child's progress callback blocks forever. Then `while_blocked` runs (to look
// at the half-written state), and the child is killed with SIGKILL. Fails the test unless
// the child was really stopped in the middle and killed.
inline void kill_writer_midway(const std::function<void(const t2::io::safetensors_write_options&)>& write,
                               std::size_t stop_after, const std::function<void()>& while_blocked = {}) {
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::close(ready[0]);
        try {
            t2::io::safetensors_write_options options;
            options.chunk_bytes = std::size_t{1} << 20;
            options.progress = [&](std::size_t written, std::size_t) {
                if (written >= stop_after) {
                    const char c = 'w';
                    (void)!::write(ready[1], &c, 1);
                    for (;;)
                        ::pause();
                }
            };
            write(options);
        } catch (...) {
            ::_exit(2);
        }
        ::_exit(3); // finished: the test could not interrupt it
    }
    ::close(ready[1]);
    char c = 0;
    const auto got = ::read(ready[0], &c, 1);
    ::close(ready[0]);
    if (got == 1 && while_blocked)
        while_blocked();
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(got == 1);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
}

} // namespace t2_test
