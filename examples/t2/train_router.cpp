// t2 train-router: the dual-attention router (nn/router.hpp) trained on task labels, from an
// expert library and one prompt file per expert (the data each expert was trained on).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "command.hpp"
#include "files.hpp"
#include "model.hpp"
#include "t2/adapt/router_dispatch.hpp"
#include "t2/io/jsonl.hpp"
#include "t2/train/optimizers.hpp"
#include "t2/train/router_objective.hpp"
#include "t2/train/trainer.hpp"

namespace t2_tool {
namespace {

struct router_options {
    std::string model, decomposition, experts, data, out;
    std::optional<std::string> tokenizer;
    std::size_t steps = 300, key_dim = 32, threads = 1;
    double lr = 0.02, temperature = 1.0, validation = 0.2;
    std::uint64_t seed = 0;
};

void train_router(const router_options& a) {
    const std::vector<std::string> expert_paths = split_list(a.experts), data_paths = split_list(a.data);
    if (expert_paths.size() != data_paths.size())
        throw usage_error("--experts names " + std::to_string(expert_paths.size()) + " files but --data " +
                          std::to_string(data_paths.size()) + "; give one prompt file per expert");
    t2::io::checkpoint ck = load_checkpoint(a.model);
    const t2::io::tokenizer tok = find_tokenizer(a.tokenizer, ck, a.model);
    const auto decomposition = read_decomposition(a.decomposition);
    std::vector<t2::adapt::expert> library;
    for (const std::string& path : expert_paths)
        library.push_back(read_expert(path));
    const auto model = t2::adapt::make_svf_model(ck.config, ck.weights, decomposition);
    t2::adapt::self_adaptive sa(model, decomposition, library); // refuses another model's experts

    // Every prompt with its task, shuffled by seed; the last share held out.
    struct labelled {
        std::vector<std::int32_t> tokens;
        std::size_t task;
    };
    std::vector<labelled> items;
    for (std::size_t k = 0; k < data_paths.size(); ++k)
        for (const auto& pair : t2::io::read_prompt_answer_jsonl(data_paths[k]))
            items.push_back({tok.encode(pair.prompt, true), k});
    shuffle_by_seed(items, a.seed);
    std::vector<std::vector<std::int32_t>> prompts;
    std::vector<std::size_t> labels;
    for (auto& item : items) {
        prompts.push_back(std::move(item.tokens));
        labels.push_back(item.task);
    }
    const std::size_t held_out = std::min(prompts.size() - 1, std::size_t(double(prompts.size()) * a.validation));
    const std::size_t trained = prompts.size() - held_out;

    t2::exec::thread_pool pool(a.threads);
    const executor ex(pool);
    std::fprintf(stderr, "pooled hidden states of %zu prompts (%zu held out)...\n", prompts.size(), held_out);
    const std::vector<std::span<const std::int32_t>> views(prompts.begin(), prompts.end());
    const t2::matrix<float> pooled = t2::adapt::pooled_hidden(ex, model, std::span(views));
    const auto rows = [&](std::size_t from, std::size_t to) {
        t2::matrix<float> m(to - from, pooled.extent(1));
        std::copy(pooled.data() + from * pooled.extent(1), pooled.data() + to * pooled.extent(1), m.data());
        return m;
    };

    t2::nn::router router({.dim = ck.config.dim, .experts = library.size(), .key_dim = a.key_dim,
                           .temperature = float(a.temperature)},
                          a.seed);
    const std::vector<std::size_t> train_labels(labels.begin(), labels.begin() + std::ptrdiff_t(trained));
    const t2::train::router_label_objective objective(router, rows(0, trained), train_labels);
    t2::train::trainer step(t2::train::exact{}, t2::train::adam(objective.parameter_count(), {.lr = float(a.lr)}));
    const auto accuracy = [&](std::size_t from, std::size_t to) {
        std::vector<float> alpha(library.size());
        std::size_t right = 0;
        for (std::size_t i = from; i < to; ++i) {
            const auto h = pooled.row(i);
            router.forward(std::span<const float>(h.data(), h.size()), alpha);
            right += std::size_t(std::ranges::max_element(alpha) - alpha.begin()) == labels[i] ? 1 : 0;
        }
        return to > from ? double(right) / double(to - from) : 0.0;
    };
    std::vector<float> gradient(objective.parameter_count());
    for (std::size_t s = 1; s <= a.steps; ++s) {
        step.step(objective, router.parameters());
        if (s % 50 == 0 || s == a.steps)
            std::fprintf(stderr, "step %zu/%zu: loss %.4f, training accuracy %.3f, held-out %.3f\n", s, a.steps,
                         double(objective.value_and_gradient(router.parameters(), gradient)), accuracy(0, trained),
                         accuracy(trained, prompts.size()));
    }
    write_router(a.out, router, library);
    std::printf("wrote %s: held-out accuracy %.3f over %zu prompts\n", a.out.c_str(), accuracy(trained, prompts.size()),
                held_out);
}

} // namespace

void add_train_router(command& app) {
    auto o = std::make_shared<router_options>();
    app.subcommand("train-router", "train the dual-attention router that mixes an expert library")
        .model(o->model)
        .option("--tokenizer", o->tokenizer, "FILE", "llama2.c tokenizer.bin (default: the model's own, or tokenizer.bin beside it)")
        .required("--decomposition", o->decomposition, "FILE", "the model's SVD (from 't2 decompose')")
        .required("--experts", o->experts, "A,B,...", "the expert library (.safetensors files)")
        .required("--data", o->data, "A,B,...", "one JSON Lines file of {\"prompt\", ...} per expert, in order")
        .required("--out", o->out, "FILE", "where to write the router (.safetensors)")
        .number("--steps", o->steps, std::size_t{1}, std::size_t{1} << 24, "N", "Adam steps (default 300)")
        .number("--lr", o->lr, 0.0, 10.0, "X", "Adam's learning rate (default 0.02)")
        .number("--key-dim", o->key_dim, std::size_t{1}, std::size_t{4096}, "N", "query and key size (default 32)")
        .number("--temperature", o->temperature, 1e-3, 1e3, "T", "softmax temperature (default 1)")
        .number("--validation", o->validation, 0.0, 0.9, "F", "share of prompts held out (default 0.2)")
        .number("--seed", o->seed, std::uint64_t{0}, ~std::uint64_t{0}, "S", "initialization and shuffling (default 0)")
        .threads(o->threads)
        .footer("Pools each prompt's final hidden states under the base model and trains the router\n"
                "(cross-entropy of its mixing weights against the prompt's expert). The router file\n"
                "records the library it routes; 't2 adapt --dispatch router --router FILE' uses it.")
        .run([o] { train_router(*o); });
}

} // namespace t2_tool
