// Resident memory of one frozen base serving N contexts, each with its own SVF adapter, KV
// cache and workspace: the base is counted once, and what each further context costs is
// what it owns.
//
//   t2_bench_contexts [--model stories15M|stories42M|stories110M|stories260K] [--contexts 1,8]
//                     [--context 256] [--matrices all] [--modes factored,composed]
//
// The model has random weights of the named shape, decomposed (SVD) on the selected
// matrices. Each configuration runs in a child process, so that memory freed by one does
// not hide the next: the child measures its resident set (/proc/self/statm) after loading
// the base and again after N contexts have each prefilled 16 tokens and decoded 16 more,
// with a different expert per context. A composed context also holds its own W' for every
// adapted matrix (what makes long decoding with one expert as fast as the base); a
// factored one holds only its z.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "t2/adapt/model.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/t2.hpp"

#include "support.hpp"

namespace {

constexpr const char* program = "t2_bench_contexts";

[[noreturn]] void fail(const std::string& message) { t2_bench::usage_failure(program, message); }

double resident_mib() {
    std::ifstream statm("/proc/self/statm");
    std::size_t size = 0, resident = 0;
    statm >> size >> resident;
    return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

struct result {
    double base_mib = 0, total_mib = 0;
};

result measure(const t2::nn::llama_config& config, const std::string& matrices, std::size_t contexts,
               std::size_t context_length, t2::adapt::svf_mode mode) {
    const t2::exec::simd<> ex;
    const auto weights = t2::nn::random_weights(config, 1234);
    const auto decomposition =
        t2::adapt::decompose(ex, config, weights, t2::adapt::selection::parse(matrices));
    const auto model = t2::adapt::make_svf_model(config, weights, decomposition);
    result r;
    r.base_mib = resident_mib();

    std::vector<t2::adapt::svf_adapter> adapters;
    std::vector<t2::nn::llama_state> states;
    adapters.reserve(contexts);
    states.reserve(contexts);
    for (std::size_t i = 0; i < contexts; ++i) {
        adapters.push_back(t2::adapt::make_svf_adapter(model));
        for (std::size_t j = 0; j < adapters.back().parameters().size(); ++j)
            adapters.back().parameters()[j] = 0.5f + float((i * 7919 + j * 104729) % 1000) / 1000.f;
        t2::adapt::prepare(ex, model, adapters.back(), context_length, mode);
        states.push_back(model.make_state(context_length));
    }
    std::vector<std::int32_t> prompt(16);
    for (std::size_t t = 0; t < prompt.size(); ++t)
        prompt[t] = std::int32_t((t * 31 + 1) % config.vocab_size);
    for (std::size_t i = 0; i < contexts; ++i) {
        auto logits = model.forward(ex, states[i], prompt, t2::nn::logits_for::last, &adapters[i]);
        for (int t = 0; t < 16; ++t) {
            const std::int32_t next = t2::ops::argmax(logits.span());
            logits = model.forward(ex, states[i], std::span(&next, 1), t2::nn::logits_for::last, &adapters[i]);
        }
    }
    r.total_mib = resident_mib();
    return r;
}

} // namespace

int main(int argc, char** argv) try {
    std::string model_name = "stories15M", matrices = "all";
    std::vector<std::size_t> counts{1, 8};
    std::size_t context_length = 256;
    std::vector<std::string> modes{"factored", "composed"};
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            std::puts("usage: t2_bench_contexts [--model stories15M|stories42M|stories110M|stories260K]\n"
                      "                         [--contexts 1,8] [--context 256] [--matrices all]\n"
                      "                         [--modes factored,composed]\n"
                      "Resident memory of one frozen base (random weights of the shape, SVD of the\n"
                      "selected matrices) serving N contexts, each with its own SVF adapter.");
            return 0;
        }
        if (i + 1 >= argc)
            fail("unknown argument '" + arg + "' (see --help)");
        const std::string value = argv[++i];
        if (arg == "--model")
            model_name = value;
        else if (arg == "--contexts") {
            counts.clear();
            for (const auto& n : t2_bench::split(value))
                counts.push_back(t2_bench::parse_count(program, arg, n));
        } else if (arg == "--context")
            context_length = t2_bench::parse_count(program, arg, value);
        else if (arg == "--matrices")
            matrices = value;
        else if (arg == "--modes") {
            modes = t2_bench::split(value);
            for (const auto& m : modes)
                if (m != "factored" && m != "composed")
                    fail("unknown mode '" + m + "' (factored or composed)");
        } else
            fail("unknown argument '" + arg + "' (see --help)");
    }
    const t2::nn::llama_config* found = t2_bench::find_tinyllama(model_name);
    if (!found)
        fail("unknown model '" + model_name + "' (stories260K, stories15M, stories42M or stories110M)");
    if (context_length < 32 || context_length > found->seq_len)
        fail("--context must be between 32 and " + std::to_string(found->seq_len));
    (void)t2::adapt::selection::parse(matrices); // a bad selection fails here, not in a child

    std::printf("%-11s %-9s %8s %10s %10s %14s\n", "model", "mode", "contexts", "base MiB", "total MiB",
                "per context");
    for (const std::string& mode : modes)
        for (const std::size_t n : counts) {
            int pipe_fds[2];
            if (pipe(pipe_fds) != 0)
                fail("cannot create a pipe");
            const pid_t child = fork();
            if (child == 0) {
                close(pipe_fds[0]);
                const result r = measure(*found, matrices, n, context_length,
                                         mode == "composed" ? t2::adapt::svf_mode::composed
                                                            : t2::adapt::svf_mode::factored);
                const bool written = write(pipe_fds[1], &r, sizeof r) == ssize_t(sizeof r);
                _exit(written ? 0 : 1);
            }
            close(pipe_fds[1]);
            result r;
            const bool read_all = read(pipe_fds[0], &r, sizeof r) == ssize_t(sizeof r);
            close(pipe_fds[0]);
            int status = 0;
            waitpid(child, &status, 0);
            if (!read_all || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail("the measurement of " + std::to_string(n) + " contexts failed");
            std::printf("%-11s %-9s %8zu %10.1f %10.1f %14.2f\n", model_name.c_str(), mode.c_str(), n, r.base_mib,
                        r.total_mib, (r.total_mib - r.base_mib) / double(n));
            std::fflush(stdout);
        }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 1;
}
