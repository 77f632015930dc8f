// t2 adapt: two-pass self-adaptive answers (adapt/self_adaptive.hpp). Pass 1 decides per
// prompt which expert (or mixture, or the base) answers; pass 2 answers with it.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "command.hpp"
#include "files.hpp"
#include "model.hpp"
#include "t2/adapt/classify_dispatch.hpp"
#include "t2/adapt/router_dispatch.hpp"
#include "t2/adapt/self_adaptive.hpp"
#include "t2/io/jsonl.hpp"
#include "t2/train/few_shot_dispatch.hpp"

namespace t2_tool {
namespace {

struct adapt_options {
    std::string model, decomposition, experts, dispatch;
    std::optional<std::string> tokenizer, cls_expert, router, shots, prompt, prompts, save_mixture;
    std::size_t steps = 128, label_tokens = 24, iterations = 50, threads = 1;
    float temperature = 0.f;
    std::uint64_t seed = 0;
    bool per_layer = false;
};

std::string format_alpha(const t2::adapt::dispatch_decision& d) {
    if (d.is_base())
        return "-";
    std::string out;
    for (const float a : d.alpha) {
        char number[32];
        std::snprintf(number, sizeof number, "%s%.3f", out.empty() ? "" : ",", double(a));
        out += number;
    }
    return out;
}

// Whether the answer begins with the reference answer as a whole word (leading space
// ignored): " Tim went to" answers " Tim", " Timmy" does not.
bool matches(const std::string& generated, const std::string& want) {
    const auto skip_space = [](const std::string& t) {
        const auto first = t.find_first_not_of(" \t\n");
        return first == std::string::npos ? std::string() : t.substr(first);
    };
    const std::string g = skip_space(generated), w = skip_space(want);
    const auto w_end = w.find_last_not_of(" \t\n");
    const std::string word = w_end == std::string::npos ? std::string() : w.substr(0, w_end + 1);
    return !word.empty() && g.starts_with(word) &&
           (g.size() == word.size() || !std::isalnum(static_cast<unsigned char>(g[word.size()])));
}

void adapt(const adapt_options& a) {
    const std::string& d = a.dispatch;
    if (d != "prompt" && d != "cls" && d != "fewshot" && d != "router")
        throw usage_error("--dispatch wants prompt, cls, fewshot or router, got '" + d + "'");
    if ((d == "router") != a.router.has_value())
        throw usage_error(d == "router" ? "--dispatch router needs --router FILE" : "--router goes with --dispatch router");
    if ((d == "cls") != a.cls_expert.has_value())
        throw usage_error(d == "cls" ? "--dispatch cls needs --cls-expert FILE" : "--cls-expert goes with --dispatch cls");
    if ((d == "fewshot") != a.shots.has_value())
        throw usage_error(d == "fewshot" ? "--dispatch fewshot needs --shots FILE.jsonl"
                                         : "--shots goes with --dispatch fewshot");
    if (a.save_mixture && d != "fewshot")
        throw usage_error("--save-mixture goes with --dispatch fewshot");
    if (a.prompt.has_value() == a.prompts.has_value())
        throw usage_error("give --prompt TEXT or --prompts FILE.jsonl");

    t2::io::checkpoint ck = load_checkpoint(a.model);
    const t2::io::tokenizer tok = find_tokenizer(a.tokenizer, ck, a.model);
    const auto decomposition = read_decomposition(a.decomposition);
    std::vector<t2::adapt::expert> experts;
    for (const std::string& path : split_list(a.experts))
        experts.push_back(read_expert(path));
    if (experts.empty())
        throw usage_error("--experts names no file");
    const auto model = t2::adapt::make_svf_model(ck.config, ck.weights, decomposition);
    t2::adapt::self_adaptive sa(model, decomposition, std::move(experts));

    std::vector<t2::io::prompt_answer> items;
    if (a.prompt)
        items.push_back({*a.prompt, ""});
    else
        items = t2::io::read_prompt_answer_jsonl(*a.prompts);
    std::vector<std::vector<std::int32_t>> tokens;
    for (const auto& item : items)
        tokens.push_back(tok.encode(item.prompt, true));
    const std::vector<std::span<const std::int32_t>> prompts(tokens.begin(), tokens.end());

    t2::exec::thread_pool pool(a.threads);
    const executor ex(pool);
    t2::ops::sampler sample({.temperature = a.temperature, .seed = a.seed});
    const t2::nn::generation_options answering{.max_new_tokens = a.steps};
    t2::adapt::classify_options classify;
    classify.max_new_tokens = a.label_tokens;

    const auto run = [&](auto& dispatcher) {
        std::vector<t2::adapt::adaptive_answer> answers;
        std::fprintf(stderr, "%zu prompt%s, dispatch %s over %zu experts\n", prompts.size(),
                     prompts.size() == 1 ? "" : "s", d.c_str(), sa.experts().size());
        // One prompt at a time: each pass 2 runs with its decision's composed weights, and
        // prompts with the decision before them reuse them.
        for (const auto& prompt : prompts)
            answers.push_back(std::move(sa.generate(ex, dispatcher, std::span(&prompt, 1), sample, answering)[0]));
        return answers;
    };
    std::vector<t2::adapt::adaptive_answer> answers;
    if (d == "prompt") {
        t2::adapt::prompt_based dispatcher(tok, classify);
        answers = run(dispatcher);
    } else if (d == "router") {
        const t2::nn::router router = read_router(*a.router, sa.experts());
        t2::adapt::router_dispatcher dispatcher(router);
        answers = run(dispatcher);
    } else if (d == "cls") {
        t2::adapt::classification_expert dispatcher(tok, read_expert(*a.cls_expert), classify);
        answers = run(dispatcher);
    } else {
        std::vector<t2::train::labelled_example> shots;
        for (const auto& pair : t2::io::read_prompt_answer_jsonl(*a.shots)) {
            auto [prompt, answer] = tokenize_pair(tok, pair.prompt, pair.answer, *a.shots + ": shot " + std::to_string(shots.size() + 1));
            shots.push_back({std::move(prompt), std::move(answer)});
        }
        t2::train::few_shot_dispatcher dispatcher(std::move(shots), {.iterations = a.iterations,
                                                                      .search = {.seed = a.seed},
                                                                      .per_layer = a.per_layer,
                                                                      .scoring = {.end_token = -1}});
        std::fprintf(stderr, "searching α on %s (CEM, %zu iterations)...\n", a.shots->c_str(), a.iterations);
        dispatcher.fit(ex, sa);
        std::fprintf(stderr, "few-shot score %.3f (%zu correct)\n", dispatcher.score().value(),
                     dispatcher.score().correct);
        answers = run(dispatcher);
        if (a.save_mixture) {
            write_expert(*a.save_mixture, dispatcher.mixed_expert(sa, std::filesystem::path(*a.shots).stem()));
            std::fprintf(stderr, "wrote %s\n", a.save_mixture->c_str());
        }
    }

    // An answer's text, without its end token.
    const auto answer_text = [&](const t2::adapt::adaptive_answer& r, std::size_t i) {
        std::span<const std::int32_t> generated = r.generation.tokens;
        if (r.generation.reason == t2::nn::stop_reason::end_token)
            generated = generated.first(generated.size() - 1);
        std::string text;
        for (std::size_t t = 0; t < generated.size(); ++t)
            text += tok.decode(t ? generated[t - 1] : tokens[i].back(), generated[t]);
        return text;
    };
    std::size_t correct = 0;
    for (std::size_t i = 0; i < answers.size(); ++i) {
        const auto& r = answers[i];
        const std::string text = answer_text(r, i);
        std::printf("prompt %zu: %s\n  decision %s, alpha %s; pass 1 %.1f ms, adapt %.1f ms, pass 2 %.1f ms\n",
                    i + 1, items[i].prompt.c_str(), r.decision.label.c_str(), format_alpha(r.decision).c_str(),
                    r.timing.dispatch_seconds * 1e3, r.timing.adapt_seconds * 1e3, r.timing.answer_seconds * 1e3);
        std::printf("  answer: %s\n", text.c_str());
        if (!items[i].answer.empty()) {
            const bool ok = matches(text, items[i].answer);
            correct += ok ? 1 : 0;
            std::printf("  %s (want \"%s\")\n", ok ? "correct" : "wrong", items[i].answer.c_str());
        }
    }
    if (a.prompts) {
        // The base model on the same prompts, for comparison.
        struct base_only {
            std::vector<t2::adapt::dispatch_decision> decide(const executor&, const t2::adapt::self_adaptive<>&,
                                                             std::span<const std::span<const std::int32_t>> p) const {
                return std::vector<t2::adapt::dispatch_decision>(p.size(), t2::adapt::base_decision());
            }
        } base;
        std::size_t base_correct = 0;
        const auto base_answers = sa.generate(ex, base, prompts, sample, answering);
        for (std::size_t i = 0; i < base_answers.size(); ++i)
            base_correct += matches(answer_text(base_answers[i], i), items[i].answer) ? 1 : 0;
        std::printf("accuracy %zu/%zu (base model %zu/%zu)\n", correct, answers.size(), base_correct, answers.size());
    }
}

} // namespace

void add_adapt(command& app) {
    auto o = std::make_shared<adapt_options>();
    app.subcommand("adapt", "answer prompts in two passes: choose an expert, then answer with it")
        .model(o->model)
        .option("--tokenizer", o->tokenizer, "FILE", "llama2.c tokenizer.bin (default: the model's own, or tokenizer.bin beside it)")
        .required("--decomposition", o->decomposition, "FILE", "the model's SVD (from 't2 decompose')")
        .required("--experts", o->experts, "A,B,...", "the expert library (.safetensors files); their tasks name them")
        .required("--dispatch", o->dispatch, "NAME",
                  "prompt (the model classifies the prompt), cls (with --cls-expert),\n"
                  "fewshot (CEM over mixing weights on --shots), router (with --router)")
        .option("--cls-expert", o->cls_expert, "FILE", "cls: the expert trained to name the task")
        .option("--router", o->router, "FILE", "router: the dual-attention router (from 't2 train-router')")
        .option("--shots", o->shots, "FILE", "fewshot: labelled examples, JSON Lines {\"prompt\", \"answer\"}")
        .number("--iterations", o->iterations, std::size_t{1}, std::size_t{1} << 20, "N", "fewshot: CEM iterations (default 50)")
        .flag("--per-layer", o->per_layer, "fewshot: one α per layer instead of one for the model")
        .option("--save-mixture", o->save_mixture, "FILE", "fewshot: write the mixture found as an expert")
        .option("--prompt", o->prompt, "TEXT", "one prompt")
        .option("--prompts", o->prompts, "FILE",
                "prompts as JSON Lines {\"prompt\", \"answer\"}; answers are scored (exact match)")
        .number("--steps", o->steps, std::size_t{1}, std::size_t{1} << 20, "N", "answer tokens at most (default 128)")
        .number("--label-tokens", o->label_tokens, std::size_t{1}, std::size_t{1} << 10, "N",
                "prompt, cls: tokens of the classification answer (default 24)")
        .number("--temperature", o->temperature, 0.f, 100.f, "T", "sampling temperature of answers (default 0: greedy)")
        .number("--seed", o->seed, std::uint64_t{0}, ~std::uint64_t{0}, "S", "sampling and the CEM search (default 0)")
        .threads(o->threads)
        .footer("Prints per prompt the decision (an expert's task, a mixture, or the base), its mixing\n"
                "weights, the answer and the time of pass 1, adaptation and pass 2. A classification\n"
                "answer that names no expert (\\boxed{name} or its first word) runs the base model.")
        .run([o] { adapt(*o); });
}

} // namespace t2_tool
