// What two-pass self-adaptation costs before pass 2 starts, and what switching experts costs
// against loading a model: SVF on the MLP matrices of a random-weight model at a TinyStories
// shape, a library of three experts, one prompt, a 128-token answer.
//
//   t2_bench_self_adaptive [--model stories15M|stories42M|stories110M] [--threads 1,2]
//                          [--answer 128] [--label-tokens 8] [--repeat 5] [--dir /tmp]
//
// dispatch   pass 1: prompt_based (the base answers a classification prompt, at most
//            --label-tokens tokens: "\boxed{math}" is 6 with the Llama 2 tokenizer) and
//            classification_expert (the same with a classifier z); router (one prefill of the
//            prompt, its pooled hidden state through the dual-attention router); "fixed"
//            decides without a pass 1, for reference
// adapt      the mixture at the decided α made and prepared (composed where cheaper); a
//            cached decision costs nothing
// answer     pass 2, --answer tokens
// Each is the median of --repeat calls after one warm-up, alternating the three experts so
// that every call switches. Target (issue #12): dispatch + adapt ≤ 10% of the answer.
//
// Then the switch itself: adapter_for a new expert (cache dropped each time) against
// io::load_checkpoint of the same model written as a llama2.c file in --dir (target: a switch
// ≤ 1/20 of a load), and resident memory after loading and after 30 switches (target: base +
// the composed cache, nothing per switch).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "t2/adapt/classify_dispatch.hpp"
#include "t2/adapt/router_dispatch.hpp"
#include "t2/adapt/self_adaptive.hpp"
#include "t2/io/llama2c.hpp"
#include "t2/io/load.hpp"
#include "t2/io/tokenizer.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/t2.hpp"

#include "support.hpp"

namespace {

constexpr const char* program = "t2_bench_self_adaptive";

[[noreturn]] void fail(const std::string& message) { t2_bench::usage_failure(program, message); }

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Resident memory of this process, MiB (Linux).
double resident_mib() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("VmRSS:", 0) == 0)
            return std::stod(line.substr(6)) / 1024.0;
    return 0;
}

// The decision of call i: expert i mod K, one-hot, without a pass 1.
struct rotating_dispatcher {
    std::size_t next = 0;
    template <class E, class SA>
    std::vector<t2::adapt::dispatch_decision> decide(const E&, const SA& sa,
                                                     std::span<const std::span<const std::int32_t>> prompts) {
        const std::size_t K = sa.experts().size(), k = next++ % K;
        return std::vector<t2::adapt::dispatch_decision>(prompts.size(),
                                                         t2::adapt::expert_decision(k, K, sa.expert_names()[k]));
    }
};

// A dispatcher that runs `inner`'s pass 1 for its cost, then rotates the experts (random
// weights answer no label, which would always choose the base and never switch).
template <class Inner>
struct timed_pass_one {
    Inner inner;
    rotating_dispatcher rotate;
    template <class E, class SA>
    std::vector<t2::adapt::dispatch_decision> decide(const E& ex, const SA& sa,
                                                     std::span<const std::span<const std::int32_t>> prompts) {
        (void)inner.decide(ex, sa, prompts);
        return rotate.decide(ex, sa, prompts);
    }
};

} // namespace

int main(int argc, char** argv) try {
    std::string model_name = "stories15M", dir = "/tmp";
    std::vector<std::size_t> threads{1, 2};
    std::size_t answer = 128, label_tokens = 8, repeat = 5;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            std::puts("usage: t2_bench_self_adaptive [--model stories15M|stories42M|stories110M] [--threads 1,2]\n"
                      "                              [--answer 128] [--label-tokens 8] [--repeat 5] [--dir /tmp]\n"
                      "Two-pass self-adaptation with three SVF experts: pass 1, adaptation and pass 2 per\n"
                      "dispatcher; an expert switch against a checkpoint load; resident memory over switches.");
            return 0;
        }
        if (i + 1 >= argc)
            fail("unknown argument '" + arg + "' (see --help)");
        const std::string value = argv[++i];
        if (arg == "--model") model_name = value;
        else if (arg == "--dir") dir = value;
        else if (arg == "--threads") {
            threads.clear();
            for (const auto& t : t2_bench::split(value))
                threads.push_back(t2_bench::parse_count(program, arg, t));
        } else if (arg == "--answer") answer = t2_bench::parse_count(program, arg, value);
        else if (arg == "--label-tokens") label_tokens = t2_bench::parse_count(program, arg, value);
        else if (arg == "--repeat") repeat = t2_bench::parse_count(program, arg, value);
        else fail("unknown argument '" + arg + "' (see --help)");
    }
    const t2::nn::llama_config* found = t2_bench::find_tinyllama(model_name);
    if (!found)
        fail("unknown model '" + model_name + "' (stories15M, stories42M or stories110M)");
    const t2::nn::llama_config c = *found;
    if (answer == 0 || label_tokens == 0 || repeat == 0 || answer + 64 > c.seq_len)
        fail("--answer, --label-tokens and --repeat must be positive, and --answer at most " +
             std::to_string(c.seq_len - 64));

    const std::string tokenizer_path = std::string(T2_SHARED_MODELS_DIR) + "/tokenizer.bin";
    const auto tok = t2::io::read_llama2c_tokenizer(tokenizer_path, c.vocab_size);
    std::fprintf(stderr, "%s: random weights, a checkpoint in %s, the SVD of the MLP matrices...\n",
                 model_name.c_str(), dir.c_str());
    const double rss_start = resident_mib();
    const auto weights = t2::nn::random_weights(c, 1234);
    const std::string checkpoint = (std::filesystem::path(dir) / (model_name + "-self-adaptive.bin")).string();
    t2::io::write_llama2c(checkpoint, c, weights);
    const auto decomposition = t2::adapt::decompose(t2::exec::threads<t2::exec::simd<>>(t2_bench::pool(2)), c, weights,
                                                    t2::adapt::selection::mlp());
    const auto model = t2::adapt::make_svf_model(c, weights, decomposition);
    std::vector<t2::adapt::expert> experts;
    for (const char* task : {"math", "code", "reasoning", "classifier"}) {
        t2::adapt::expert e{decomposition.base_model_hash, true, task, "", {}};
        for (const auto& m : decomposition.matrices) {
            const auto z = t2_bench::random_matrix(1, m.factors.rank(),
                                                   experts.size() * 1000 + m.slot.layer * 10 + std::size_t(m.slot.which),
                                                   0.5f, 1.5f);
            e.z.emplace_back(m.name, std::vector<float>(z.data(), z.data() + z.size()));
        }
        experts.push_back(std::move(e));
    }
    const t2::adapt::expert classifier = experts.back();
    experts.pop_back();
    const t2::nn::router router({.dim = c.dim, .experts = experts.size()}, 7); // untrained: the cost is the same
    const double rss_base = resident_mib();

    const std::vector<std::int32_t> prompt =
        tok.encode("Tom has three apples and buys five more. How many apples does he have now?", true);
    const std::span<const std::int32_t> prompt_view(prompt);
    t2::adapt::classify_options classify;
    classify.max_new_tokens = label_tokens;
    classify.end_token = -1;
    const t2::nn::generation_options answering{.max_new_tokens = answer, .end_token = -1};

    std::printf("%-11s %7s  %-22s %11s %11s %11s %9s\n", "model", "threads", "dispatcher", "dispatch ms", "adapt ms",
                "answer ms", "before/answer");
    for (const std::size_t n : threads) {
        const t2::exec::threads<t2::exec::simd<>> ex(t2_bench::pool(n));
        t2::ops::sampler greedy({.temperature = 0.f});
        const auto measure = [&](const char* name, auto dispatcher) {
            t2::adapt::self_adaptive sa(model, decomposition, experts);
            std::vector<double> dispatch, adapt, pass2;
            for (std::size_t r = 0; r <= repeat; ++r) {
                const auto out = sa.generate(ex, dispatcher, std::span(&prompt_view, 1), greedy, answering);
                if (r == 0)
                    continue; // sizes workspaces
                dispatch.push_back(out[0].timing.dispatch_seconds);
                adapt.push_back(out[0].timing.adapt_seconds);
                pass2.push_back(out[0].timing.answer_seconds);
            }
            const double d = t2_bench::median(dispatch), a = t2_bench::median(adapt), p = t2_bench::median(pass2);
            std::printf("%-11s %7zu  %-22s %11.2f %11.2f %11.2f %8.1f%%\n", model_name.c_str(), n, name, d * 1e3,
                        a * 1e3, p * 1e3, 100 * (d + a) / p);
            std::fflush(stdout);
        };
        measure("fixed (no pass 1)", rotating_dispatcher{});
        using prompt_based = t2::adapt::prompt_based<t2::io::tokenizer>;
        using classification_expert = t2::adapt::classification_expert<t2::io::tokenizer>;
        measure("prompt_based", timed_pass_one<prompt_based>{prompt_based(tok, classify), {}});
        measure("classification_expert",
                timed_pass_one<classification_expert>{classification_expert(tok, classifier, classify), {}});
        measure("router", timed_pass_one<t2::adapt::router_dispatcher>{t2::adapt::router_dispatcher(router), {}});
    }

    // An expert switch against a load of the whole model.
    const t2::exec::threads<t2::exec::simd<>> ex(t2_bench::pool(threads.back()));
    std::vector<double> loads, switches;
    const std::size_t tokens = prompt.size() + answer;
    t2::adapt::self_adaptive sa(model, decomposition, experts);
    for (std::size_t r = 0; r <= repeat; ++r) {
        auto start = std::chrono::steady_clock::now();
        const auto loaded = t2::io::load_checkpoint(checkpoint);
        const double load = seconds_since(start);
        sa.set_experts(experts); // drops the cache: the switch composes
        const std::vector<float> alpha{r % 3 == 0 ? 1.f : 0.f, r % 3 == 1 ? 1.f : 0.f, r % 3 == 2 ? 1.f : 0.f};
        start = std::chrono::steady_clock::now();
        (void)sa.adapter_for(ex, alpha, tokens);
        const double one_switch = seconds_since(start);
        if (r > 0) {
            loads.push_back(load);
            switches.push_back(one_switch);
        }
    }
    const double load = t2_bench::median(loads), one_switch = t2_bench::median(switches);
    std::printf("\n%-11s %7zu  load %.2f ms, expert switch %.2f ms (%s, %zu tokens): 1/%.0f of a load\n",
                model_name.c_str(), threads.back(), load * 1e3, one_switch * 1e3,
                sa.cached_bytes() ? "composed" : "factored", tokens, load / one_switch);

    // Resident memory over switches, with the default cache budget.
    t2::adapt::self_adaptive serving(model, decomposition, experts);
    rotating_dispatcher rotate;
    t2::ops::sampler greedy({.temperature = 0.f});
    const double rss_before = resident_mib();
    for (std::size_t i = 0; i < 30; ++i)
        serving.generate(ex, rotate, std::span(&prompt_view, 1), greedy, {.max_new_tokens = 8, .end_token = -1});
    std::printf("resident: %.0f MiB before the model, %.0f with it and its SVD, %.0f before serving, %.0f after 30 "
                "switches; composed cache %.1f MiB\n",
                rss_start, rss_base, rss_before, resident_mib(), double(serving.cached_bytes()) / (1 << 20));
    std::filesystem::remove(checkpoint);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 1;
}
