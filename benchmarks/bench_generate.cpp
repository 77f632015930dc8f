// End-to-end prefill and decode speed of the Llama decoder at the tinyllamas sizes
// (stories15M, stories42M, stories110M: vocab 32000, tied classifier; and stories260K's shape) with random weights,
// stored as f32 and as bf16.
//
//   t2_bench_generate [--models stories15M,stories110M] [--threads 1,2] [--prefill N]
//                     [--decode N] [--repeat R] [--batch 1,4,16,64] [--write-llama2c DIR]
//
// Each measurement is the median of --repeat runs. Decode is memory-bound: every token
// streams all weights once, so it also prints the weight bytes per token and the implied
// read bandwidth. --write-llama2c writes the same random weights as llama2.c checkpoints,
// so that run.c (or llama.cpp after conversion) can be measured on identical models.
// --batch adds lockstep decoding of B sequences (a B-row gemm per matrix instead of B
// gemvs): the weights streamed once per step serve B tokens.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "t2/io/llama2c.hpp"
#include "t2/nn/convert.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/t2.hpp"

#include "support.hpp"

namespace {

constexpr const char* program = "t2_bench_generate";

using t2_bench::median;
using t2_bench::split;

[[noreturn]] void fail(const std::string& message) { t2_bench::usage_failure(program, message); }

std::size_t parse_size(const std::string& flag, const std::string& text) {
    return t2_bench::parse_count(program, flag, text);
}

std::size_t weight_bytes(const t2::nn::llama_config& c, std::size_t element_size) {
    // What one decoded token reads: every block matrix and the classifier (the embedding
    // row itself is negligible).
    const std::size_t kv = t2::nn::kv_dim(c);
    const std::size_t per_layer = 2 * c.dim * c.dim + 2 * kv * c.dim + 3 * c.dim * c.hidden_dim;
    return (per_layer * c.n_layers + c.vocab_size * c.dim) * element_size;
}

struct measurement {
    double prefill, decode;
};

// Medians over `repeat` runs of a prefill of `prompt` followed by `decode` greedy steps.
template <class Model>
measurement measure(const Model& model, const std::vector<std::int32_t>& prompt, std::size_t decode,
                    std::size_t repeat, std::size_t threads) {
    t2::exec::thread_pool pool(threads);
    const t2::exec::threads<t2::exec::simd<>> ex(pool);
    std::vector<double> prefill_rate, decode_rate;
    for (std::size_t r = 0; r < repeat; ++r) {
        auto state = model.make_state();
        using clock = std::chrono::steady_clock;
        const auto t0 = clock::now();
        auto logits = model.forward(ex, state, prompt);
        const auto t1 = clock::now();
        for (std::size_t s = 0; s < decode; ++s) {
            const std::int32_t next = t2::ops::argmax(logits.span());
            logits = model.forward(ex, state, std::span<const std::int32_t>(&next, 1));
        }
        const auto t2_end = clock::now();
        prefill_rate.push_back(double(prompt.size()) / std::chrono::duration<double>(t1 - t0).count());
        decode_rate.push_back(double(decode) / std::chrono::duration<double>(t2_end - t1).count());
    }
    return {median(prefill_rate), median(decode_rate)};
}

// Median tokens/s of B sequences decoding `decode` tokens in lockstep (one B-row forward
// per step) after a prefill of `prompt` each; all tokens of all sequences count.
template <class Model>
double measure_batch(const Model& model, const std::vector<std::int32_t>& prompt, std::size_t decode,
                     std::size_t repeat, std::size_t threads, std::size_t B) {
    t2::exec::thread_pool pool(threads);
    const t2::exec::threads<t2::exec::simd<>> ex(pool);
    std::vector<double> rate;
    for (std::size_t r = 0; r < repeat; ++r) {
        std::vector<t2::nn::llama_state> states;
        for (std::size_t b = 0; b < B; ++b)
            states.push_back(model.make_state(prompt.size() + decode));
        std::vector<std::int32_t> next(B);
        std::vector<t2::nn::sequence_step> steps(B);
        t2::nn::decoder_workspace ws;
        for (std::size_t b = 0; b < B; ++b)
            steps[b] = {&states[b], prompt};
        const auto pick = [&](t2::matrix_view<const float> logits) {
            for (std::size_t b = 0; b < B; ++b) {
                next[b] = t2::ops::argmax(std::span<const float>(logits.row(b).data(), logits.extent(1)));
                steps[b] = {&states[b], std::span<const std::int32_t>(&next[b], 1)};
            }
        };
        pick(model.forward(ex, std::span<const t2::nn::sequence_step>(steps), ws));
        using clock = std::chrono::steady_clock;
        const auto t0 = clock::now();
        for (std::size_t s = 0; s < decode; ++s)
            pick(model.forward(ex, std::span<const t2::nn::sequence_step>(steps), ws));
        rate.push_back(double(B * decode) / std::chrono::duration<double>(clock::now() - t0).count());
    }
    return median(rate);
}

} // namespace

int main(int argc, char** argv) try {
    std::vector<std::string> models{"stories15M", "stories42M", "stories110M"};
    std::vector<std::size_t> threads{1, 2};
    std::vector<std::size_t> batches;
    std::size_t prefill = 128, decode = 64, repeat = 5;
    std::string write_dir;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            std::puts("usage: t2_bench_generate [--models stories260K,stories15M,stories42M,stories110M] [--threads 1,2]\n"
                      "                         [--prefill N] [--decode N] [--repeat R] [--batch 1,4,16,64]\n"
                      "                         [--write-llama2c DIR]\n"
                      "Prefill and decode tokens/s of random-weight models; medians of R runs (default 5).\n"
                      "--batch: also decode B sequences in lockstep and report tokens/s of all of them.");
            return 0;
        }
        if (i + 1 >= argc)
            fail("unknown argument '" + arg + "' (see --help)");
        const std::string value = argv[++i];
        if (arg == "--models") models = split(value);
        else if (arg == "--threads") {
            threads.clear();
            for (const auto& t : split(value))
                threads.push_back(parse_size("--threads", t));
        } else if (arg == "--prefill") prefill = parse_size(arg, value);
        else if (arg == "--decode") decode = parse_size(arg, value);
        else if (arg == "--repeat") repeat = parse_size(arg, value);
        else if (arg == "--batch") {
            for (const auto& b : split(value))
                batches.push_back(parse_size("--batch", b));
        } else if (arg == "--write-llama2c") write_dir = value;
        else fail("unknown argument '" + arg + "' (see --help)");
    }
    std::printf("%-12s %7s %8s %12s %12s %10s %12s\n", "model", "threads", "storage", "prefill tok/s",
                "decode tok/s", "MB/token", "decode GB/s");
    for (const std::string& name : models) {
        const t2::nn::llama_config* found = t2_bench::find_tinyllama(name);
        if (!found)
            fail("unknown model '" + name + "' (stories260K, stories15M, stories42M or stories110M)");
        const t2::nn::llama_config& config = *found;
        if (prefill + decode > config.seq_len)
            fail("--prefill + --decode exceeds the context of " + std::to_string(config.seq_len));
        std::fprintf(stderr, "%s: making random weights...\n", name.c_str());
        auto weights = t2::nn::random_weights(config, 1234);
        if (!write_dir.empty()) {
            const std::string path = write_dir + "/" + name + "-random.bin";
            t2::io::write_llama2c(path, config, weights);
            std::fprintf(stderr, "wrote %s\n", path.c_str());
        }
        std::vector<std::int32_t> prompt(prefill);
        for (std::size_t i = 0; i < prefill; ++i)
            prompt[i] = std::int32_t((i * 7919 + 1) % config.vocab_size);
        const auto report = [&](const char* storage, std::size_t threads_used, std::size_t element_size,
                                measurement m) {
            const double mb = double(weight_bytes(config, element_size)) / 1e6;
            std::printf("%-12s %7zu %8s %12.1f %12.1f %10.1f %12.1f\n", name.c_str(), threads_used,
                        storage, m.prefill, m.decode, mb, m.decode * mb / 1e3);
            std::fflush(stdout);
        };
        const t2::nn::llama<t2::nn::llama_config, t2::nn::dense<t2::bf16>> model_bf16(
            config, t2::nn::convert_weights<t2::bf16>(weights));
        const t2::nn::llama<t2::nn::llama_config> model(config, std::move(weights));
        for (std::size_t n : threads) {
            report("f32", n, sizeof(float), measure(model, prompt, decode, repeat, n));
            report("bf16", n, sizeof(t2::bf16), measure(model_bf16, prompt, decode, repeat, n));
        }
        for (std::size_t n : threads) {
            double single = 0;
            for (std::size_t B : batches) {
                const double rate = measure_batch(model, prompt, decode, repeat, n, B);
                if (B == 1)
                    single = rate;
                std::printf("%-12s %7zu %8s  batch %3zu: %10.1f decode tok/s", name.c_str(), n, "f32", B, rate);
                if (single > 0)
                    std::printf("  (%.2fx batch 1)", rate / single);
                std::printf("\n");
                std::fflush(stdout);
            }
        }
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "t2_bench_generate: %s\n", e.what());
    return 1;
}
