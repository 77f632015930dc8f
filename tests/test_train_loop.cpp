// The training loop (train/loop.hpp), its checkpoints (io/training_checkpoint.hpp) and its
// progress line (train/progress.hpp): validation keeps the best parameters, checkpoints fall
// due when asked, a checkpoint reads back as written and bad ones are refused, and a REINFORCE
// run killed with SIGKILL at an arbitrary moment and resumed from its last checkpoint ends
// with the parameters of an uninterrupted run, bit for bit; training data reads from JSON
// Lines, bad lines named.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support/check.hpp"
#include "support/temp_dir.hpp"
#include "t2/adapt/decomposition.hpp"
#include "t2/adapt/model.hpp"
#include "t2/io/jsonl.hpp"
#include "t2/io/training_checkpoint.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/train/loop.hpp"
#include "t2/train/optimizers.hpp"
#include "t2/train/progress.hpp"
#include "t2/train/reinforce.hpp"
#include "t2/train/trainer.hpp"

namespace {

// L(θ) = ½‖θ − t‖²: the loop's bookkeeping on an objective whose every value is known.
struct bowl {
    std::vector<float> target;
    std::size_t parameter_count() const { return target.size(); }
    float value_and_gradient(std::span<const float> theta, std::span<float> gradient) const {
        double sum = 0;
        for (std::size_t j = 0; j < target.size(); ++j) {
            gradient[j] = theta[j] - target[j];
            sum += 0.5 * double(gradient[j]) * double(gradient[j]);
        }
        return float(sum);
    }
};

} // namespace

TEST_CASE("loop: validation keeps the best parameters; checkpoints and reports fall due as asked") {
    bowl b{{1.f, -2.f, 0.5f}};
    std::vector<float> theta(3, 0.f);
    t2::train::trainer trainer(t2::train::exact{}, t2::train::sgd(3, {.lr = 0.3f, .momentum = 0.9f}));
    // Score: −distance, but the run is told that step 10's parameters validated best.
    std::vector<float> at_ten;
    const auto validate = [&](std::span<const float> p) {
        double d = 0;
        for (std::size_t j = 0; j < 3; ++j)
            d += (p[j] - b.target[j]) * (p[j] - b.target[j]);
        if (trainer.steps() == 10)
            at_ten.assign(p.begin(), p.end());
        return trainer.steps() == 10 ? 1.0 : -std::sqrt(d);
    };
    std::vector<std::size_t> validated, due;
    std::size_t reports = 0;
    const auto state = t2::train::run_loop(trainer, b, theta, validate, {}, {.steps = 23, .evaluate_every = 5, .checkpoint_every = 10},
                                           [&](const t2::train::step_report& r, const t2::train::loop_state& s) {
                                               ++reports;
                                               CHECK(r.step == s.step);
                                               CHECK(r.steps == 23);
                                               CHECK(r.seconds >= 0);
                                               if (!std::isnan(r.score))
                                                   validated.push_back(r.step);
                                               if (r.checkpoint_due)
                                                   due.push_back(r.step);
                                           });
    CHECK(reports == 23);
    CHECK(validated == std::vector<std::size_t>{5, 10, 15, 20, 23});
    CHECK(due == std::vector<std::size_t>{10, 20, 23});
    CHECK(state.step == 23);
    CHECK(state.best_step == 10);
    CHECK(state.best_score == 1.0);
    CHECK(state.best_parameters == at_ten);
    // A state that does not match the trainer is refused.
    t2::train::trainer fresh(t2::train::exact{}, t2::train::sgd(3));
    CHECK(t2_test::contains(t2_test::error_message([&] {
        t2::train::run_loop(fresh, b, theta, validate, state, {.steps = 30}, [](auto&&...) {});
    }), "restore the optimizer"));
}

TEST_CASE("loop: a training checkpoint reads back as written; bad ones are refused") {
    const std::string path = t2_test::temp_dir() + "/ck.safetensors";
    const std::vector<float> parameters{0.5f, -1.25f, 3.f}, moments{1e-3f, 2e-3f, 3e-3f, 4e-3f, 5e-3f, 6e-3f};
    t2::train::loop_state loop{.step = 17, .best_parameters = {0.25f, 0.5f, 0.75f}, .best_score = 0.1 + 0.2, .best_step = 10};
    t2::io::write_training_checkpoint(path, parameters, moments, loop, {{"method", "reinforce"}, {"seed", "7"}});
    const auto ck = t2::io::read_training_checkpoint(path);
    CHECK(ck.parameters == parameters);
    CHECK(ck.optimizer_state == moments);
    CHECK(ck.loop.step == 17);
    CHECK(ck.loop.best_step == 10);
    CHECK(ck.loop.best_score == 0.1 + 0.2); // exactly: a resumed run compares against it
    CHECK(ck.loop.best_parameters == loop.best_parameters);
    CHECK(ck.extra == t2::io::safetensors_metadata{{"method", "reinforce"}, {"seed", "7"}});
    // Before any validation: no best parameters, a best score of −∞.
    t2::io::write_training_checkpoint(path, parameters, moments, {.step = 3});
    CHECK(std::isinf(t2::io::read_training_checkpoint(path).loop.best_score));
    CHECK(t2::io::read_training_checkpoint(path).loop.best_parameters.empty());

    // Restoring into a run of another shape is refused, naming the file.
    t2::train::trainer trainer(t2::train::exact{}, t2::train::adam(3));
    std::vector<float> theta(3), four(4);
    const auto restored = t2::io::restore_training_checkpoint(ck, path, trainer, theta);
    CHECK(theta == parameters);
    CHECK(trainer.steps() == 17);
    CHECK(restored.step == 17);
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::io::restore_training_checkpoint(ck, path, trainer, four); }),
                            "holds 3 parameters, this run trains 4"));
    t2::train::trainer other(t2::train::exact{}, t2::train::sgd(3));
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::io::restore_training_checkpoint(ck, path, other, theta); }),
                            "another optimizer"));
    // The caller's keys cannot shadow the checkpoint's own.
    CHECK_THROWS_AS(t2::io::write_training_checkpoint(path, parameters, moments, loop, {{"step", "1"}}), t2::error);
    // Not a checkpoint, a missing tensor, inconsistent metadata.
    t2::io::write_safetensors(path, {t2::io::make_safetensors_entry("parameters", std::span<const float>(parameters), {3})},
                              {{"format", "t2.expert"}, {"format_version", "1"}});
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::io::read_training_checkpoint(path); }),
                            "not a t2.training_checkpoint file"));
    const auto write = [&](const t2::io::safetensors_metadata& m) {
        t2::io::write_safetensors(path, {t2::io::make_safetensors_entry("parameters", std::span<const float>(parameters), {3})}, m);
    };
    write({{"format", "t2.training_checkpoint"}, {"format_version", "1"}, {"step", "2"}, {"best_step", "0"}, {"best_score", "-inf"}});
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::io::read_training_checkpoint(path); }), "no \"optimizer_state\""));
    write({{"format", "t2.training_checkpoint"}, {"format_version", "1"}, {"step", "two"}, {"best_step", "0"}, {"best_score", "-inf"}});
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::io::read_training_checkpoint(path); }), "not a count"));
    write({{"format", "t2.training_checkpoint"}, {"format_version", "1"}, {"step", "2"}, {"best_step", "5"}, {"best_score", "1"}});
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::io::read_training_checkpoint(path); }), "after step"));
}

TEST_CASE("loop: the progress line redraws on a terminal and prints plain lines otherwise") {
    const auto printed = [](bool terminal) {
        std::FILE* f = std::tmpfile();
        REQUIRE(f);
        {
            t2::train::progress_line line(f, terminal);
            for (std::size_t s = 1; s <= 4; ++s)
                line.update({.step = s, .steps = 4, .loss = 0.5f, .gradient_norm = 1e-3f,
                             .score = s == 2 ? 0.7 : std::nan(""), .best_score = 0.7, .seconds = 0.25},
                            "reward 0.41");
        }
        std::rewind(f);
        std::string text;
        for (int c; (c = std::fgetc(f)) != EOF;)
            text += char(c);
        std::fclose(f);
        return text;
    };
    const std::string plain = printed(false);
    CHECK(plain == "step 2/4  loss 0.5000  |g| 1.0e-03  val 0.700 (best 0.700)  reward 0.41  0.25 s/step  ETA 0m00s\n"
                   "step 4/4  loss 0.5000  |g| 1.0e-03  val 0.700 (best 0.700)  reward 0.41  0.25 s/step  ETA 0m00s\n");
    const std::string redrawn = printed(true);
    CHECK(std::count(redrawn.begin(), redrawn.end(), '\r') == 4);
    CHECK(redrawn.back() == '\n');
    CHECK(t2_test::contains(redrawn, "step 1/4  loss 0.5000  |g| 1.0e-03  reward 0.41  0.25 s/step  ETA 0m00s\x1b[K"));
}

namespace {

const t2::nn::llama_config tiny{.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                                .vocab_size = 7, .seq_len = 10};

// A REINFORCE run of `steps` on a tiny model, checkpointed every step to `path`, resumed
// from it when it exists; on_step runs after each checkpoint. Returns the final and best
// parameters, one after the other.
std::vector<float> reinforce_run(const std::string& path, std::size_t steps, const std::function<void(std::size_t)>& on_step) {
    const t2::exec::simd<> ex{};
    const auto weights = t2::nn::random_weights(tiny, 31);
    const auto d = t2::adapt::decompose(ex, tiny, weights, t2::adapt::selection::all());
    const auto model = t2::adapt::make_svf_model(tiny, weights, d);
    auto adapter = t2::adapt::make_svf_adapter(model, {.parametrization = t2::adapt::svf_parametrization::sigmoid,
                                                       .rescale = true, .seed = 32});
    const std::vector<std::int32_t> p1{1, 3, 2}, p2{1, 5}, p3{1, 4, 4, 6};
    const std::vector<std::span<const std::int32_t>> prompts{p1, p2, p3};
    const auto reward = [](std::size_t prompt, std::span<const std::int32_t> answer) {
        return !answer.empty() && std::size_t(answer[0]) == prompt + 2 ? 1.f : -1.f;
    };
    t2::train::reinforce_objective objective(ex, model, adapter, prompts, reward,
                                             {.max_new_tokens = 3, .temperature = 1.f, .samples_per_prompt = 4,
                                              .end_token = 0, .seed = 33});
    t2::train::trainer trainer(t2::train::exact{}, t2::train::adam(adapter.parameters().size(), {.lr = 5e-2f}),
                               {.clip = 1.f});
    t2::train::loop_state state;
    if (std::filesystem::exists(path)) {
        state = t2::io::restore_training_checkpoint(t2::io::read_training_checkpoint(path), path, trainer,
                                                    adapter.parameters());
        objective.set_rollout_step(state.step); // one rollout per step: the draws continue
    }
    const auto validate = [&](std::span<const float>) { return double(objective.mean_reward()); };
    state = t2::train::run_loop(trainer, objective, adapter.parameters(), validate, state,
                                {.steps = steps, .evaluate_every = 2, .checkpoint_every = 1},
                                [&](const t2::train::step_report&, const t2::train::loop_state& s) {
                                    t2::io::write_training_checkpoint(path, adapter.parameters(),
                                                                      trainer.optimizer().state(), s);
                                    on_step(s.step);
                                });
    std::vector<float> out(adapter.parameters().begin(), adapter.parameters().end());
    out.insert(out.end(), state.best_parameters.begin(), state.best_parameters.end());
    return out;
}

} // namespace

TEST_CASE("loop: a run killed with SIGKILL and resumed from its checkpoint ends as an uninterrupted one") {
    const std::string dir = t2_test::temp_dir();
    const std::string straight_path = dir + "/straight.safetensors", killed_path = dir + "/killed.safetensors";
    std::filesystem::remove(straight_path);
    std::filesystem::remove(killed_path);
    const std::size_t steps = 12;
    const auto straight = reinforce_run(straight_path, steps, [](std::size_t) {});

    // The child reports each step on a pipe and runs on; the parent kills it once step 5 is
    // reported, wherever the child then is (the next step, or writing the next checkpoint).
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::close(pipe_fds[0]);
        try {
            reinforce_run(killed_path, steps, [&](std::size_t step) {
                const unsigned char c = static_cast<unsigned char>(step);
                (void)!::write(pipe_fds[1], &c, 1);
            });
        } catch (...) {
            ::_exit(2);
        }
        ::_exit(3); // finished before it was killed
    }
    ::close(pipe_fds[1]);
    unsigned char last = 0;
    while (last < 5 && ::read(pipe_fds[0], &last, 1) == 1) {
    }
    ::kill(child, SIGKILL);
    ::close(pipe_fds[0]);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    const auto interrupted = t2::io::read_training_checkpoint(killed_path);
    CHECK(interrupted.loop.step >= 5);
    CHECK(interrupted.loop.step < steps);

    const auto resumed = reinforce_run(killed_path, steps, [](std::size_t) {});
    CHECK(resumed == straight);
}

TEST_CASE("loop: prompt / answer pairs from JSON Lines; bad lines are named") {
    const auto pairs = t2::io::parse_prompt_answer_jsonl(
        "{\"prompt\": \"Q: 2+3? A:\", \"answer\": \" 5\"}\n\n  \r\n{\"answer\": \"b\", \"prompt\": \"a\\n\", \"task\": \"x\"}\r\n",
        "data.jsonl");
    REQUIRE(pairs.size() == 2);
    CHECK(pairs[0].prompt == "Q: 2+3? A:");
    CHECK(pairs[0].answer == " 5");
    CHECK(pairs[1].prompt == "a\n");
    CHECK(pairs[1].answer == "b");
    const auto error = [](std::string_view text) {
        return t2_test::error_message([&] { t2::io::parse_prompt_answer_jsonl(text, "data.jsonl"); });
    };
    CHECK(t2_test::contains(error("{\"prompt\": \"a\", \"answer\": \"b\"}\n{\"prompt\": \"a\"}\n"), "data.jsonl line 2"));
    CHECK(t2_test::contains(error("{\"prompt\": \"a\", \"answer\": \"b\"}\n{\"prompt\": \"a\"}\n"), "answer"));
    CHECK(t2_test::contains(error("\n\n{\"prompt\": 1, \"answer\": \"b\"}"), "data.jsonl line 3"));
    CHECK(t2_test::contains(error("{\"prompt\": \"a\", \"answer\": \"b\"} x"), "data.jsonl line 1"));
    CHECK(t2_test::contains(error("[1, 2]"), "data.jsonl line 1"));
    CHECK(t2_test::contains(error("\n \n"), "no {\"prompt\""));
    CHECK(t2_test::contains(t2_test::error_message([] { t2::io::read_prompt_answer_jsonl("/nonexistent/x.jsonl"); }),
                            "cannot open"));
}
