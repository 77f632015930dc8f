// Forward+backward speed (training tokens/s) at the stories15M shape with random weights,
// next to PyTorch's CPU autograd on the same shapes in the same run.
//
//   t2_bench_train [--model stories15M|stories42M|stories110M] [--threads 1,2] [--tokens 256]
//                  [--repeat 5] [--matrices mlp] [--modes svf-z,full] [--torch PYTHON|none]
//
// Two workloads, as Transformer² trains:
//   svf-z  SVF on the selected matrices (default mlp, as the reference): gradients for z only
//   full   every weight trainable (dense gradients, norms and embedding included)
// One step = forward over --tokens positions, masked-mean cross-entropy, backward. Each
// number is the median of --repeat steps after one warm-up step. PyTorch runs
// benchmarks/train_torch.py (float32, the same model written with torch ops, z composed
// into W' each step as the reference code does) with the same threads; its tokens/s and
// the ratio t2 / PyTorch are printed beside t2's.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "t2/adapt/model.hpp"
#include "t2/nn/backprop.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/t2.hpp"

#include "support.hpp"

namespace {

constexpr const char* program = "t2_bench_train";

using t2_bench::median;
using t2_bench::split;

[[noreturn]] void fail(const std::string& message) { t2_bench::usage_failure(program, message); }

std::size_t parse_size(const std::string& flag, const std::string& text) {
    return t2_bench::parse_count(program, flag, text);
}

// Median tokens/s of forward_backward steps, on one reused training workspace (as a training
// loop runs them); `step(ex, batch, loss, ws)` runs one.
template <class Step>
double measure(const std::vector<std::int32_t>& tokens, const std::vector<float>& mask, std::size_t threads,
               std::size_t repeat, Step&& step) {
    t2::exec::thread_pool pool(threads);
    const t2::exec::threads<t2::exec::simd<>> ex(pool);
    const t2::nn::training_batch batch{std::span<const std::int32_t>(tokens)};
    t2::nn::training_workspace ws;
    std::vector<double> rates;
    for (std::size_t r = 0; r <= repeat; ++r) {
        const auto start = std::chrono::steady_clock::now();
        step(ex, batch, t2::nn::next_token_cross_entropy{mask}, ws);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (r > 0) // the first step sizes the workspace and warms the caches
            rates.push_back(double(tokens.size() - 1) / seconds);
    }
    return median(rates);
}

// PyTorch's tokens/s for the same workload, or a negative number when it could not run.
double measure_torch(const std::string& python, const std::string& script, const std::string& model,
                     const char* mode, std::size_t threads, std::size_t tokens, std::size_t repeat,
                     const std::string& matrices) {
    const std::string command = python + " " + script + " --model " + model + " --mode " + mode + " --threads " +
                                std::to_string(threads) + " --tokens " + std::to_string(tokens) + " --repeat " +
                                std::to_string(repeat) + " --matrices " + matrices;
    std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
    if (!pipe)
        return -1;
    std::array<char, 256> line{};
    double rate = -1;
    while (std::fgets(line.data(), int(line.size()), pipe.get()))
        std::sscanf(line.data(), "tokens_per_second %lf", &rate);
    return rate;
}

} // namespace

int main(int argc, char** argv) try {
    std::string model_name = "stories15M", matrices = "mlp";
    std::string python = "/usr/bin/python3";
    std::vector<std::size_t> threads{1, 2};
    std::vector<std::string> modes{"svf-z", "full"};
    std::size_t tokens_per_step = 256, repeat = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            std::puts("usage: t2_bench_train [--model stories15M|stories42M|stories110M] [--threads 1,2] [--tokens 256]\n"
                      "                      [--repeat 5] [--matrices mlp|attn|all|REGEX] [--modes svf-z,full]\n"
                      "                      [--torch PYTHON|none]\n"
                      "Forward+backward tokens/s of SVF (z only) and full-weight training, t2 next to\n"
                      "PyTorch (benchmarks/train_torch.py); medians of R steps.");
            return 0;
        }
        if (i + 1 >= argc)
            fail("unknown argument '" + arg + "' (see --help)");
        const std::string value = argv[++i];
        if (arg == "--model") model_name = value;
        else if (arg == "--threads") {
            threads.clear();
            for (const auto& t : split(value))
                threads.push_back(parse_size("--threads", t));
        } else if (arg == "--tokens") tokens_per_step = parse_size(arg, value);
        else if (arg == "--repeat") repeat = parse_size(arg, value);
        else if (arg == "--matrices") matrices = value;
        else if (arg == "--modes") {
            modes = split(value);
            for (const auto& m : modes)
                if (m != "svf-z" && m != "full")
                    fail("unknown mode '" + m + "' (svf-z or full)");
        }
        else if (arg == "--torch") python = value;
        else fail("unknown argument '" + arg + "' (see --help)");
    }
    const t2::nn::llama_config* found = t2_bench::find_tinyllama(model_name);
    if (!found)
        fail("unknown model '" + model_name + "' (stories15M, stories42M or stories110M)");
    const t2::nn::llama_config config = *found;
    if (tokens_per_step >= config.seq_len)
        fail("--tokens must be below the context of " + std::to_string(config.seq_len));
    const auto chosen = t2::adapt::selection::parse(matrices);
    const std::string script = T2_BENCHMARKS_DIR "/train_torch.py";

    std::fprintf(stderr, "%s: random weights and their SVD (%s)...\n", model_name.c_str(), matrices.c_str());
    const auto weights = t2::nn::random_weights(config, 1234);
    t2::exec::thread_pool pool(2);
    const auto decomposition =
        t2::adapt::decompose(t2::exec::threads<t2::exec::simd<>>(pool), config, weights, chosen);
    const t2::nn::llama<t2::nn::llama_config> dense(config, weights);
    const auto svf = t2::adapt::make_svf_model(config, weights, decomposition);
    auto adapter = t2::adapt::make_svf_adapter(svf);
    const t2::nn::backprop_options full_weights{.dense_weights = true};
    auto grads = t2::nn::make_gradients(dense, full_weights);

    std::vector<std::int32_t> tokens(tokens_per_step + 1);
    for (std::size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = std::int32_t((i * 7919 + 1) % config.vocab_size);
    std::vector<float> mask(tokens_per_step, 1.f);
    std::fill(mask.begin(), mask.begin() + tokens_per_step / 4, 0.f); // a prompt

    std::printf("%-10s %-6s %7s %14s %16s %8s\n", "model", "mode", "threads", "t2 tok/s", "PyTorch tok/s", "ratio");
    for (const std::size_t n : threads)
        for (const std::string& mode : modes) {
            const bool full = mode == "full";
            const double ours =
                full ? measure(tokens, mask, n, repeat,
                               [&](const auto& ex, const auto& batch, const auto& loss, auto& ws) {
                                   t2::nn::forward_backward(ex, dense, batch, loss, grads, ws, full_weights);
                               })
                     : measure(tokens, mask, n, repeat, [&](const auto& ex, const auto& batch, const auto& loss, auto& ws) {
                           t2::nn::forward_backward(ex, svf, adapter, batch, loss, ws);
                       });
            const double theirs = python == "none" ? -1
                                                   : measure_torch(python, script, model_name, mode.c_str(), n,
                                                                   tokens_per_step, repeat, matrices);
            if (theirs > 0)
                std::printf("%-10s %-6s %7zu %14.1f %16.1f %8.2f\n", model_name.c_str(), mode.c_str(), n, ours, theirs,
                            ours / theirs);
            else
                std::printf("%-10s %-6s %7zu %14.1f %16s %8s\n", model_name.c_str(), mode.c_str(), n, ours, "-", "-");
            std::fflush(stdout);
        }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "t2_bench_train: %s\n", e.what());
    return 1;
}
