#pragma once
// The training loop around a trainer (train/trainer.hpp): steps, a validation score every N
// steps with the best parameters kept, a checkpoint every M steps, a report per step.
//
//   t2::train::loop_state state;                          // or one read from a checkpoint
//   state = t2::train::run_loop(trainer, objective, adapter.parameters(), validate, state,
//                               {.steps = 200, .evaluate_every = 10, .checkpoint_every = 10},
//                               [&](const t2::train::step_report& r, const t2::train::loop_state& s) {
//                                   progress.update(r);
//                                   if (r.checkpoint_due) write_checkpoint(path, trainer, adapter, s);
//                               });
//   // state.best_parameters: the parameters that validated best (the reference's choice)
//
// validate(parameters) returns a score, higher is better (accuracy, mean reward). The loop
// owns no file: the caller writes checkpoints (io/training_checkpoint.hpp does it
// atomically) and restores a run by handing back the state it saved, with the trainer's
// optimizer state and the parameters restored; the loop then continues at state.step, and a
// run resumed that way ends as an uninterrupted one does (the estimators' and REINFORCE's
// draws are keyed by step).
#include <chrono>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/train/trainer.hpp"

T2_NAMESPACE_BEGIN
namespace train {

struct loop_options {
    std::size_t steps = 100;            // the run's total steps (a resumed run counts those done)
    std::size_t evaluate_every = 10;    // 0: never; the last step is always evaluated otherwise
    std::size_t checkpoint_every = 10;  // 0: never; the last step is always due otherwise
};

// What a resumed run needs from the loop (the trainer and the parameters hold the rest).
struct loop_state {
    std::size_t step = 0;                 // steps done
    std::vector<float> best_parameters;   // empty until the first validation
    double best_score = -std::numeric_limits<double>::infinity();
    std::size_t best_step = 0;
};

struct step_report {
    std::size_t step = 0, steps = 0;       // steps done after this one, of the run's total
    float loss = 0, gradient_norm = 0;     // the trainer's step_result
    double score = std::numeric_limits<double>::quiet_NaN(); // validation, when it ran this step
    double best_score = -std::numeric_limits<double>::infinity();
    double seconds = 0;                    // this step's wall time, validation included
    bool checkpoint_due = false;
};

template <class Trainer, class Objective, class Validate, class OnStep>
loop_state run_loop(Trainer& trainer, Objective& objective, std::span<float> parameters, Validate&& validate,
                    loop_state state, const loop_options& options, OnStep&& on_step) {
    T2_CHECK(state.step <= options.steps, "run_loop: the state has ", state.step, " steps done, more than the run's ",
             options.steps);
    T2_CHECK(trainer.steps() == state.step, "run_loop: the trainer has taken ", trainer.steps(),
             " steps, the loop state ", state.step, "; restore the optimizer with the state");
    T2_CHECK(state.best_parameters.empty() || state.best_parameters.size() == parameters.size(),
             "run_loop: best parameters of ", state.best_parameters.size(), " floats for ", parameters.size());
    using clock = std::chrono::steady_clock;
    const auto due = [&](std::size_t every) { return every > 0 && (state.step % every == 0 || state.step == options.steps); };
    while (state.step < options.steps) {
        const auto start = clock::now();
        const step_result r = trainer.step(objective, parameters);
        ++state.step;
        step_report report{.step = state.step, .steps = options.steps, .loss = r.loss, .gradient_norm = r.gradient_norm};
        if (due(options.evaluate_every)) {
            report.score = static_cast<double>(validate(std::span<const float>(parameters)));
            if (report.score > state.best_score) { // NaN never wins
                state.best_score = report.score;
                state.best_step = state.step;
                state.best_parameters.assign(parameters.begin(), parameters.end());
            }
        }
        report.best_score = state.best_score;
        report.checkpoint_due = due(options.checkpoint_every);
        report.seconds = std::chrono::duration<double>(clock::now() - start).count();
        on_step(report, state);
    }
    return state;
}

} // namespace train
T2_NAMESPACE_END
