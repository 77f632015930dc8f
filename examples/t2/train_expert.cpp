// t2 train-expert: an SVF expert (one z per decomposed matrix) trained on prompt / answer
// pairs from a JSON Lines file, by REINFORCE, next-token cross-entropy, SPSA, ES or CEM.
//
// The pairs are shuffled with --seed and split into training and validation; the answer is
// right when the model's greedy tokens begin with the answer's tokens (the reward of
// REINFORCE: +1 right, −1 wrong; the validation accuracy, from teacher forcing, every
// --eval-every steps, keeping the expert that validated best). Gradient methods checkpoint
// with the validation and resume from the checkpoint when it exists; the expert file records
// the method, its hyperparameters, the seed and the base model.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "command.hpp"
#include "model.hpp"
#include "t2/io/adapter_files.hpp"
#include "t2/io/json.hpp"
#include "t2/io/jsonl.hpp"
#include "t2/io/tokenizer.hpp"
#include "t2/io/training_checkpoint.hpp"
#include "t2/train/adapter_objective.hpp"
#include "t2/train/estimators.hpp"
#include "t2/train/few_shot.hpp"
#include "t2/train/loop.hpp"
#include "t2/train/optimizers.hpp"
#include "t2/train/progress.hpp"
#include "t2/train/reinforce.hpp"
#include "t2/train/search.hpp"
#include "t2/train/trainer.hpp"

namespace t2_tool {
namespace {

struct train_options {
    std::string model, decomposition, data, method, out;
    std::optional<std::string> tokenizer, checkpoint;
    std::size_t steps = 200, batch = 16, eval_every = 10, samples = 4, max_new_tokens = 0, threads = 1;
    double lr = -1, kl = 0, clip = -1, validation = 0.2, temperature = 0;
    std::uint64_t seed = 0;
};

struct example {
    std::vector<std::int32_t> prompt, answer;
};

using svf_model = t2::nn::llama<t2::nn::llama_config, t2::adapt::svf>;

// The objective of the current step, which a step's minibatch replaces: what the training
// loop holds on to across steps.
template <class Objective>
struct current_objective {
    std::unique_ptr<Objective>* at;
    std::size_t parameter_count() const { return (*at)->parameter_count(); }
    float value_and_gradient(std::span<const float> p, std::span<float> g) { return (*at)->value_and_gradient(p, g); }
    void losses(std::span<const float> candidates, std::span<float> out) { (*at)->losses(candidates, out); }
};

// A method's defaults where the command line leaves them: the reference's for REINFORCE (Adam
// 2e-3, clip 1e-3), Adam 2e-3 for cross-entropy, 1e-2 for the forward-only estimators.
double default_lr(const std::string& method) { return method == "spsa" || method == "es" ? 1e-2 : 2e-3; }
double default_clip(const std::string& method) { return method == "reinforce" ? 1e-3 : 0; }

// The pairs tokenized, shuffled with the seed. Prompt and answer are encoded as one text (as
// the model reads them: the answer's first token may merge across the boundary); the answer
// is what follows the longest prefix the whole shares with the prompt encoded alone.
std::vector<example> read_examples(const std::string& path, const t2::io::tokenizer& tok, std::uint64_t seed) {
    std::vector<example> out;
    std::size_t line = 0;
    for (const auto& pair : t2::io::read_prompt_answer_jsonl(path)) {
        ++line;
        auto [prompt, answer] = tokenize_pair(tok, pair.prompt, pair.answer, path + ": pair " + std::to_string(line));
        out.push_back({std::move(prompt), std::move(answer)});
    }
    shuffle_by_seed(out, seed);
    return out;
}

// Training examples of step s: --batch of them, drawn without replacement through a fixed
// order and wrapping around, so that a resumed run draws what the uninterrupted one would.
std::vector<std::size_t> minibatch(std::size_t step, std::size_t batch, std::size_t count) {
    std::vector<std::size_t> out;
    for (std::size_t i = 0; i < std::min(batch, count); ++i)
        out.push_back((step * batch + i) % count);
    return out;
}

std::string training_record(const train_options& a, double lr, double clip, const t2::train::loop_state& state) {
    t2::io::json::value v = t2::io::json::value::object();
    v.set("method", a.method);
    v.set("data", std::filesystem::path(a.data).filename().string());
    v.set("steps", a.steps);
    v.set("batch", a.batch);
    v.set("lr", lr);
    v.set("clip", clip);
    v.set("seed", a.seed);
    if (a.method == "reinforce") {
        v.set("kl", a.kl);
        v.set("temperature", a.temperature);
    }
    if (a.method == "spsa" || a.method == "es")
        v.set("samples", a.samples);
    v.set("best_step", state.best_step);
    v.set("validation_accuracy", state.best_score);
    return t2::io::json::to_string(v);
}

void train_expert(const train_options& a) {
    const std::string& m = a.method;
    if (m != "reinforce" && m != "ce" && m != "spsa" && m != "es" && m != "cem")
        throw usage_error("--method wants reinforce, ce, spsa, es or cem, got '" + m + "'");
    if (a.validation <= 0 || a.validation >= 1)
        throw usage_error("--validation wants a fraction between 0 and 1 (exclusive)");
    const double lr = a.lr >= 0 ? a.lr : default_lr(m), clip = a.clip >= 0 ? a.clip : default_clip(m);
    const std::string checkpoint_path = a.checkpoint.value_or(a.out + ".checkpoint");
    // A checkpoint to resume from, checked before anything is loaded: it must be this run's.
    const t2::io::safetensors_metadata run_keys{{"method", m}, {"seed", std::to_string(a.seed)}, {"data", a.data}};
    std::optional<t2::io::training_checkpoint> saved;
    if (m != "cem" && std::filesystem::exists(checkpoint_path)) {
        saved = t2::io::read_training_checkpoint(checkpoint_path);
        if (saved->extra != run_keys)
            throw t2::error(checkpoint_path + " was written by another run (method " +
                            (saved->extra.count("method") ? saved->extra.at("method") : "?") +
                            "); remove it or pass --checkpoint FILE");
    }

    t2::io::checkpoint ck = load_checkpoint(a.model);
    const t2::io::tokenizer tok = find_tokenizer(a.tokenizer, ck, a.model);
    const auto d = read_decomposition(a.decomposition);
    const auto model = t2::adapt::make_svf_model(ck.config, ck.weights, d); // refuses another model's SVD
    auto examples = read_examples(a.data, tok, a.seed);
    if (examples.size() < 2)
        throw t2::error(a.data + ": " + std::to_string(examples.size()) + " pair; training and validation need two at least");
    const std::size_t n_val = std::clamp<std::size_t>(std::size_t(double(examples.size()) * a.validation), 1, examples.size() - 1);
    const std::vector<example> validation(examples.end() - std::ptrdiff_t(n_val), examples.end());
    examples.resize(examples.size() - n_val);
    std::size_t longest = 0;
    for (const auto& e : examples)
        longest = std::max(longest, e.answer.size());
    const std::size_t budget = a.max_new_tokens ? a.max_new_tokens : longest;

    t2::exec::thread_pool pool(a.threads);
    const executor ex(pool);
    // z = sigmoid(θ) with rescaling, θ₀ = 0.1 as the reference for the gradient methods; CEM
    // searches z itself in [0, 2] around z = 1 (the base).
    const t2::adapt::svf_adapter_options adapter_options{
        .parametrization = m == "cem" ? t2::adapt::svf_parametrization::z : t2::adapt::svf_parametrization::sigmoid,
        .rescale = true, .seed = a.seed};
    const auto make_adapter = [&] { return t2::adapt::make_svf_adapter(model, adapter_options); };
    auto adapter = make_adapter();
    const std::size_t n = adapter.parameters().size();

    // Validation: the share of validation answers greedy decoding reproduces (teacher forced).
    std::vector<t2::train::labelled_example> val_shots;
    std::size_t val_rows = 0;
    for (const auto& e : validation) {
        val_shots.push_back({e.prompt, e.answer});
        val_rows += e.prompt.size() + e.answer.size();
    }
    t2::train::few_shot_objective validator(ex, model, adapter, val_shots, make_adapter,
                                            {.end_token = -1, .max_rows = std::max<std::size_t>(4096, val_rows)});
    const auto validate = [&](std::span<const float> p) {
        return double(validator.score(p).correct) / double(val_shots.size());
    };
    std::fprintf(stderr, "%s: %zu training and %zu validation pairs, %zu parameters, method %s\n", a.data.c_str(),
                 examples.size(), val_shots.size(), n, m.c_str());

    t2::train::loop_state state;
    t2::train::progress_line progress;
    const t2::train::loop_options loop{.steps = a.steps, .evaluate_every = a.eval_every, .checkpoint_every = a.eval_every};

    // One gradient-method run: the trainer, and an objective for each step's minibatch.
    const auto run = [&](auto trainer, auto&& objective_for_step, auto&& extra) {
        if (saved) {
            state = t2::io::restore_training_checkpoint(*saved, checkpoint_path, trainer, adapter.parameters());
            std::fprintf(stderr, "resuming from %s at step %zu\n", checkpoint_path.c_str(), state.step);
        }
        auto objective = objective_for_step(state.step);
        state = t2::train::run_loop(trainer, objective, adapter.parameters(), validate, state, loop,
                                    [&](const t2::train::step_report& r, const t2::train::loop_state& s) {
                                        progress.update(r, extra());
                                        if (r.checkpoint_due)
                                            t2::io::write_training_checkpoint(checkpoint_path, adapter.parameters(),
                                                                              trainer.optimizer().state(), s, run_keys);
                                        objective_for_step(s.step); // the next step's minibatch
                                    });
    };
    const auto adam = [&] { return t2::train::adam(n, {.lr = float(lr)}); };
    const t2::train::trainer_options clipping{.clip = float(clip)};

    if (m == "reinforce") {
        std::vector<std::span<const std::int32_t>> prompts;
        std::vector<std::size_t> chosen;
        const auto reward = [&](std::size_t i, std::span<const std::int32_t> answer) {
            const auto& want = examples[chosen[i]].answer;
            return answer.size() >= want.size() && std::equal(want.begin(), want.end(), answer.begin()) ? 1.f : -1.f;
        };
        using reinforce = t2::train::reinforce_objective<executor, svf_model, decltype(reward)>;
        std::unique_ptr<reinforce> objective;
        const auto for_step = [&](std::size_t step) {
            chosen = minibatch(step, a.batch, examples.size());
            prompts.clear();
            for (const std::size_t i : chosen)
                prompts.push_back(examples[i].prompt);
            if (!objective)
                objective = std::make_unique<reinforce>(
                    ex, model, adapter, prompts, reward,
                    t2::train::reinforce_options{
                        .max_new_tokens = budget, .temperature = float(a.temperature), .kl_coefficient = float(a.kl),
                        .end_token = -1, .seed = a.seed,
                        .stop = [&](std::size_t i, std::span<const std::int32_t> t) {
                            return t.size() >= examples[chosen[i]].answer.size();
                        }});
            objective->set_prompts(prompts);
            objective->set_rollout_step(step); // one rollout per step: a resumed run draws the same
            return current_objective<reinforce>{&objective};
        };
        char extra[64];
        run(t2::train::trainer(t2::train::exact{}, adam(), clipping), for_step, [&] {
            std::snprintf(extra, sizeof extra, "reward %.3f", double(objective->mean_reward()));
            return std::string(extra);
        });
    } else if (m == "cem") {
        // The few-shot search of the reference: --batch training pairs are the shots.
        std::vector<t2::train::labelled_example> shots;
        for (const std::size_t i : minibatch(0, a.batch, examples.size()))
            shots.push_back({examples[i].prompt, examples[i].answer});
        std::size_t rows = 0;
        for (const auto& s : shots)
            rows += s.prompt.size() + s.answer.size();
        t2::train::few_shot_objective objective(ex, model, adapter, shots, make_adapter,
                                                {.end_token = -1, .max_rows = std::max<std::size_t>(4096, rows)});
        t2::train::cem search(n, {.lo = 0.f, .hi = 2.f, .initial_mean = 1.f, .seed = a.seed});
        for (std::size_t i = 0; i < a.steps; ++i) {
            const auto started = std::chrono::steady_clock::now();
            search.iterate(objective);
            t2::train::step_report r{.step = i + 1, .steps = a.steps, .loss = search.best_loss()};
            if (loop.evaluate_every && ((i + 1) % loop.evaluate_every == 0 || i + 1 == a.steps)) {
                r.score = validate(search.best());
                if (r.score > state.best_score) {
                    state.best_score = r.score;
                    state.best_step = i + 1;
                    state.best_parameters.assign(search.best().begin(), search.best().end());
                }
            }
            r.best_score = state.best_score;
            r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
            progress.update(r);
        }
        state.step = a.steps;
    } else {
        // Cross-entropy on prompt + answer, the prompt masked; exact, SPSA or ES gradients.
        std::vector<std::vector<std::int32_t>> sequences;
        std::vector<float> mask;
        std::unique_ptr<t2::nn::training_batch> batch;
        using cross_entropy = t2::train::adapter_objective<executor, svf_model, t2::nn::next_token_cross_entropy>;
        std::unique_ptr<cross_entropy> objective;
        const auto for_step = [&](std::size_t step) {
            sequences.clear();
            mask.clear();
            for (const std::size_t i : minibatch(step, a.batch, examples.size())) {
                auto s = examples[i].prompt;
                s.insert(s.end(), examples[i].answer.begin(), examples[i].answer.end());
                mask.insert(mask.end(), examples[i].prompt.size() - 1, 0.f);
                mask.insert(mask.end(), examples[i].answer.size(), 1.f);
                sequences.push_back(std::move(s));
            }
            const std::vector<std::span<const std::int32_t>> views(sequences.begin(), sequences.end());
            objective.reset();
            batch = std::make_unique<t2::nn::training_batch>(views);
            objective = std::make_unique<cross_entropy>(
                ex, model, adapter, *batch, t2::nn::next_token_cross_entropy{mask}, make_adapter,
                t2::train::adapter_objective_options{.max_rows = std::max<std::size_t>(4096, batch->rows())});
            return current_objective<cross_entropy>{&objective};
        };
        const auto none = [] { return std::string(); };
        if (m == "ce")
            run(t2::train::trainer(t2::train::exact{}, adam(), clipping), for_step, none);
        else if (m == "spsa")
            run(t2::train::trainer(t2::train::spsa({.samples = a.samples, .seed = a.seed}), adam(), clipping), for_step, none);
        else
            run(t2::train::trainer(t2::train::es({.pairs = a.samples, .seed = a.seed}), adam(), clipping), for_step, none);
    }
    progress.finish();

    if (state.best_parameters.empty())
        throw t2::error("no validation ran; nothing to write");
    std::copy(state.best_parameters.begin(), state.best_parameters.end(), adapter.parameters().begin());
    const std::string task = std::filesystem::path(a.data).stem().string();
    t2::io::write_expert(a.out, t2::adapt::to_expert(adapter, d, task, training_record(a, lr, clip, state)));
    std::fprintf(stderr, "wrote %s: validation accuracy %.3f at step %zu\n", a.out.c_str(), state.best_score,
                 state.best_step);
    if (m != "cem")
        std::filesystem::remove(checkpoint_path);
}

} // namespace

void add_train_expert(command& app) {
    auto o = std::make_shared<train_options>();
    app.subcommand("train-expert", "train an SVF expert on prompt / answer pairs")
        .model(o->model)
        .option("--tokenizer", o->tokenizer, "FILE", "llama2.c tokenizer.bin (default: the model's own, or tokenizer.bin beside it)")
        .required("--decomposition", o->decomposition, "FILE", "the model's SVD (from 't2 decompose')")
        .required("--data", o->data, "FILE", "JSON Lines, one {\"prompt\": ..., \"answer\": ...} per line")
        .required("--method", o->method, "NAME", "reinforce, ce (cross-entropy), spsa, es or cem")
        .required("--out", o->out, "FILE", "where to write the expert (.safetensors)")
        .number("--steps", o->steps, std::size_t{1}, std::size_t{1} << 30, "N", "optimizer steps or CEM iterations (default 200)")
        .number("--batch", o->batch, std::size_t{1}, std::size_t{1} << 20, "N",
                "training pairs per step; cem: the shots it scores (default 16)")
        .number("--lr", o->lr, 0.0, 10.0, "X", "Adam's learning rate (default 2e-3; 1e-2 for spsa and es)")
        .number("--clip", o->clip, 0.0, 1e30, "X", "largest gradient norm (default 1e-3 for reinforce, else none)")
        .number("--kl", o->kl, 0.0, 1e6, "X", "reinforce: weight of the KL penalty to the base model (default 0)")
        .number("--temperature", o->temperature, 0.0, 100.0, "T", "reinforce: rollouts' temperature (default 0: greedy)")
        .number("--samples", o->samples, std::size_t{1}, std::size_t{1} << 16, "N",
                "spsa: perturbations, es: antithetic pairs per step (default 4)")
        .number("--max-new-tokens", o->max_new_tokens, std::size_t{0}, std::size_t{1} << 20, "N",
                "reinforce: rollout budget (default: the longest answer)")
        .number("--validation", o->validation, 0.0, 1.0, "F", "share of the pairs held out for validation (default 0.2)")
        .number("--eval-every", o->eval_every, std::size_t{1}, std::size_t{1} << 30, "N",
                "validate (and checkpoint) every N steps; the last step always (default 10)")
        .number("--seed", o->seed, std::uint64_t{0}, ~std::uint64_t{0}, "S", "shuffling, rollouts, perturbations (default 0)")
        .option("--checkpoint", o->checkpoint, "FILE", "where to checkpoint and resume from (default: OUT.checkpoint)")
        .threads(o->threads)
        .footer("Writes the expert that validated best, with the method, its hyperparameters, the seed\n"
                "and the base model's hash. Killed and run again with the same command, a gradient\n"
                "method resumes from its checkpoint (CEM starts over). Progress on stderr.")
        .run([o] { train_expert(*o); });
}

} // namespace t2_tool
