// What a training step costs with each gradient estimator, in forward passes over the same
// batch, and what scoring a CEM population costs against scoring one member: SVF on the MLP
// matrices (the reference's choice) of a random-weight model at a TinyStories shape.
//
//   t2_bench_estimators [--model stories15M|stories42M|stories110M] [--threads 1,2] [--batch 4]
//                       [--tokens 64] [--samples 1,4,16] [--repeat 5] [--max-rows 4096]
//
// forward      one adapter_objective loss of the batch (one candidate): the unit
// exact        a trainer<exact, adam> step: forward, backward, update
// spsa S       a trainer<spsa, adam> step with S samples: 2S perturbed losses in batched passes
//              of at most --max-rows rows (their logits, rows × vocab floats, are the memory
//              a population adds; --max-rows = batch × tokens scores one candidate at a time,
//              in an inference's memory)
// es S         antithetic ES with S pairs (2S losses), rank-shaped
// cem P        few_shot_objective on 10 shots (16-token prompts, 4-token answers): greedy
//              answers and answer likelihoods of P = 32 candidates, against P = 1
// Each figure is the median of --repeat runs after one warm-up; the ratio column divides by
// the forward (steps) or by one member (CEM). Targets (issue #11): an SPSA step ≤ 2.1
// forwards per sample; a 32-member population ≤ 4× one member.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "t2/adapt/model.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/t2.hpp"

#include "support.hpp"

namespace {

constexpr const char* program = "t2_bench_estimators";

[[noreturn]] void fail(const std::string& message) { t2_bench::usage_failure(program, message); }

template <class F>
double median_seconds(std::size_t repeat, F&& f) {
    std::vector<double> times;
    for (std::size_t r = 0; r <= repeat; ++r) {
        const auto start = std::chrono::steady_clock::now();
        f();
        if (r > 0) // the first run sizes workspaces and pools
            times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return t2_bench::median(times);
}

void row(const char* model, std::size_t threads, const std::string& what, double seconds, double unit,
         const char* unit_name, double per = 1) {
    std::printf("%-11s %7zu  %-14s %10.2f ms %9.2f %s\n", model, threads, what.c_str(), seconds * 1e3,
                seconds / unit / per, unit_name);
    std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv) try {
    std::string model_name = "stories15M";
    std::vector<std::size_t> threads{1, 2}, samples{1, 4, 16};
    std::size_t batch_size = 4, tokens = 64, repeat = 5, max_rows = 4096;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            std::puts("usage: t2_bench_estimators [--model stories15M|stories42M|stories110M] [--threads 1,2]\n"
                      "                           [--batch 4] [--tokens 64] [--samples 1,4,16] [--repeat 5]\n"
                      "                           [--max-rows 4096]\n"
                      "Time of a training step per gradient estimator in forward passes of the same batch,\n"
                      "and of a 32-member CEM population on 10 shots against one member; medians of R runs.");
            return 0;
        }
        if (i + 1 >= argc)
            fail("unknown argument '" + arg + "' (see --help)");
        const std::string value = argv[++i];
        const auto counts = [&] {
            std::vector<std::size_t> out;
            for (const auto& t : t2_bench::split(value))
                out.push_back(t2_bench::parse_count(program, arg, t));
            return out;
        };
        if (arg == "--model") model_name = value;
        else if (arg == "--threads") threads = counts();
        else if (arg == "--samples") samples = counts();
        else if (arg == "--batch") batch_size = t2_bench::parse_count(program, arg, value);
        else if (arg == "--tokens") tokens = t2_bench::parse_count(program, arg, value);
        else if (arg == "--repeat") repeat = t2_bench::parse_count(program, arg, value);
        else if (arg == "--max-rows") max_rows = t2_bench::parse_count(program, arg, value);
        else fail("unknown argument '" + arg + "' (see --help)");
    }
    const t2::nn::llama_config* found = t2_bench::find_tinyllama(model_name);
    if (!found)
        fail("unknown model '" + model_name + "' (stories15M, stories42M or stories110M)");
    const t2::nn::llama_config c = *found;
    if (tokens + 1 > c.seq_len || tokens < 2 || batch_size == 0)
        fail("--tokens must be in [2, " + std::to_string(c.seq_len - 1) + "] and --batch at least 1");
    if (max_rows < batch_size * tokens)
        fail("--max-rows must hold one batch (" + std::to_string(batch_size * tokens) + " rows)");

    std::fprintf(stderr, "%s: random weights and the SVD of the MLP matrices...\n", model_name.c_str());
    const auto weights = t2::nn::random_weights(c, 1234);
    const auto decomposition = t2::adapt::decompose(t2::exec::threads<t2::exec::simd<>>(t2_bench::pool(2)), c, weights,
                                                    t2::adapt::selection::mlp());
    const auto model = t2::adapt::make_svf_model(c, weights, decomposition);
    const auto make_adapter = [&] { return t2::adapt::make_svf_adapter(model, {.rescale = true}); };

    std::vector<std::vector<std::int32_t>> sequences(batch_size);
    for (std::size_t b = 0; b < batch_size; ++b)
        for (std::size_t t = 0; t <= tokens; ++t)
            sequences[b].push_back(std::int32_t((t * 7919 + b * 104729 + 1) % c.vocab_size));
    const std::vector<std::span<const std::int32_t>> views(sequences.begin(), sequences.end());
    const t2::nn::training_batch batch(views);
    std::vector<t2::train::labelled_example> shots(10);
    for (std::size_t s = 0; s < shots.size(); ++s) {
        for (std::size_t t = 0; t < 16; ++t)
            shots[s].prompt.push_back(t == 0 ? t2::nn::bos_token : std::int32_t((s * 31 + t * 17 + 2) % c.vocab_size));
        for (std::size_t t = 0; t < 4; ++t)
            shots[s].answer.push_back(std::int32_t((s * 13 + t * 7 + 3) % c.vocab_size));
    }

    std::printf("%-11s %7s  %-14s %13s %9s\n", "model", "threads", "workload", "time", "ratio");
    for (const std::size_t n : threads) {
        const t2::exec::threads<t2::exec::simd<>> ex(t2_bench::pool(n));
        auto adapter = make_adapter();
        const std::size_t P = adapter.parameters().size();
        t2::train::adapter_objective objective(ex, model, adapter, batch, t2::nn::next_token_cross_entropy{},
                                               make_adapter, {.max_rows = max_rows});
        std::vector<float> theta(adapter.parameters().begin(), adapter.parameters().end()), loss(1);
        const double forward = median_seconds(repeat, [&] { objective.losses(theta, loss); });
        row(model_name.c_str(), n, "forward", forward, forward, "forwards");
        {
            t2::train::trainer step(t2::train::exact{}, t2::train::adam(P));
            row(model_name.c_str(), n, "exact", median_seconds(repeat, [&] { step.step(objective, theta); }), forward,
                "forwards");
        }
        for (const std::size_t s : samples) {
            t2::train::trainer spsa(t2::train::spsa({.samples = s, .seed = 1}), t2::train::adam(P));
            row(model_name.c_str(), n, "spsa " + std::to_string(s),
                median_seconds(repeat, [&] { spsa.step(objective, theta); }), forward, "forwards/sample", double(s));
            t2::train::trainer es(t2::train::es({.pairs = s, .seed = 1}), t2::train::adam(P));
            row(model_name.c_str(), n, "es " + std::to_string(s), median_seconds(repeat, [&] { es.step(objective, theta); }),
                forward, "forwards/pair", double(s));
        }
        // CEM's population: one member against 32, on the mixture-free SVF adapter (any
        // parameter vector of the adapter is a member).
        t2::train::few_shot_objective few_shot(ex, model, adapter, shots, make_adapter);
        std::vector<float> population(32 * P), losses(32);
        for (std::size_t m = 0; m < 32; ++m)
            std::copy(theta.begin(), theta.end(), population.begin() + std::ptrdiff_t(m * P));
        std::vector<float> one(1);
        const double member = median_seconds(repeat, [&] { few_shot.losses(theta, one); });
        row(model_name.c_str(), n, "cem member", member, member, "members");
        row(model_name.c_str(), n, "cem 32", median_seconds(repeat, [&] { few_shot.losses(population, losses); }), member,
            "members");
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 1;
}
