#pragma once
// Training checkpoints: what a killed run needs to end as an uninterrupted one does.
//
// A safetensors file ("format": "t2.training_checkpoint") with F32 tensors "parameters" [n],
// "optimizer_state" [m] (train::adam's moments, train::sgd's momentum) and, once a validation
// ran, "best_parameters" [n]; metadata "step" (the optimizer's and the loop's step count),
// "best_score", "best_step", plus whatever the caller adds (the method, its hyperparameters,
// the seed) under keys of its own, read back as they were written. Written atomically, so a
// run killed while writing keeps its previous checkpoint; validated on reading.
#include <charconv>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/io/adapter_files.hpp"
#include "t2/io/safetensors.hpp"
#include "t2/train/loop.hpp"
#include "t2/version.hpp"

T2_NAMESPACE_BEGIN
namespace io {

struct training_checkpoint {
    std::vector<float> parameters;
    std::vector<float> optimizer_state;
    train::loop_state loop;
    safetensors_metadata extra; // the caller's keys
};

namespace detail {

inline constexpr const char* checkpoint_keys[] = {"format", "format_version", "step", "best_score", "best_step", "writer"};

inline std::string exact_decimal(double v) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", v); // round-trips a double; "inf", "-inf"
    return text;
}

inline std::size_t parse_count(const safetensors_file& f, const std::string& key) {
    const std::string& text = required_metadata(f, key);
    std::size_t v = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (error != std::errc{} || end != text.data() + text.size())
        t2::detail::throw_error(f.name(), ": metadata \"", key, "\" is \"", text, "\", not a count");
    return v;
}

} // namespace detail

inline void write_training_checkpoint(const std::string& path, std::span<const float> parameters,
                                      std::span<const float> optimizer_state, const train::loop_state& loop,
                                      const safetensors_metadata& extra = {}) {
    T2_CHECK(loop.best_parameters.empty() || loop.best_parameters.size() == parameters.size(),
             "write_training_checkpoint: best parameters of ", loop.best_parameters.size(), " floats for ",
             parameters.size());
    std::vector<safetensors_entry> tensors{make_safetensors_entry("parameters", parameters, {parameters.size()}),
                                           make_safetensors_entry("optimizer_state", optimizer_state,
                                                                  {optimizer_state.size()})};
    if (!loop.best_parameters.empty())
        tensors.push_back(make_safetensors_entry("best_parameters", std::span<const float>(loop.best_parameters),
                                                 {loop.best_parameters.size()}));
    safetensors_metadata metadata = extra;
    for (const char* key : detail::checkpoint_keys)
        T2_CHECK(!metadata.contains(key), "write_training_checkpoint: metadata key \"", key, "\" is the checkpoint's own");
    metadata["format"] = "t2.training_checkpoint";
    metadata["format_version"] = "1";
    metadata["step"] = std::to_string(loop.step);
    metadata["best_score"] = detail::exact_decimal(loop.best_score);
    metadata["best_step"] = std::to_string(loop.best_step);
    metadata["writer"] = "t2 " T2_VERSION_STRING;
    write_safetensors(path, tensors, metadata);
}

inline training_checkpoint read_training_checkpoint(const safetensors_file& f) {
    const std::string& path = f.name();
    detail::check_format(f, "t2.training_checkpoint");
    training_checkpoint out;
    out.loop.step = detail::parse_count(f, "step");
    out.loop.best_step = detail::parse_count(f, "best_step");
    if (out.loop.best_step > out.loop.step)
        t2::detail::throw_error(path, ": best_step ", out.loop.best_step, " is after step ", out.loop.step);
    const std::string& score = detail::required_metadata(f, "best_score");
    char* end = nullptr;
    out.loop.best_score = std::strtod(score.c_str(), &end);
    if (score.empty() || end != score.c_str() + score.size())
        t2::detail::throw_error(path, ": metadata \"best_score\" is \"", score, "\", not a number");
    bool has_parameters = false, has_state = false;
    for (const safetensors_tensor& t : f.tensors()) {
        const auto values = detail::f32_tensor(f, t, 1);
        std::vector<float>* into = t.name == "parameters"        ? &out.parameters
                                   : t.name == "optimizer_state" ? &out.optimizer_state
                                   : t.name == "best_parameters" ? &out.loop.best_parameters
                                                                 : nullptr;
        if (!into)
            t2::detail::throw_error(path, ": unexpected tensor \"", t.name, "\" in a training checkpoint");
        into->assign(values.begin(), values.end());
        has_parameters = has_parameters || into == &out.parameters;
        has_state = has_state || into == &out.optimizer_state;
    }
    if (!has_parameters || !has_state)
        t2::detail::throw_error(path, ": the training checkpoint has no \"",
                                has_parameters ? "optimizer_state" : "parameters", "\" tensor");
    if (!out.loop.best_parameters.empty() && out.loop.best_parameters.size() != out.parameters.size())
        t2::detail::throw_error(path, ": best_parameters has ", out.loop.best_parameters.size(), " floats, parameters ",
                                out.parameters.size());
    for (const auto& [key, value] : f.metadata()) {
        bool own = false;
        for (const char* k : detail::checkpoint_keys)
            own = own || key == k;
        if (!own)
            out.extra.emplace(key, value);
    }
    return out;
}

inline training_checkpoint read_training_checkpoint(const std::string& path) {
    return read_training_checkpoint(safetensors_file(path));
}

// Puts a checkpoint back into a run: the parameters, the trainer's optimizer (state and step
// count), after checking that they are the shapes this run trains.
template <class Trainer>
train::loop_state restore_training_checkpoint(const training_checkpoint& ck, const std::string& path, Trainer& trainer,
                                              std::span<float> parameters) {
    T2_CHECK(ck.parameters.size() == parameters.size(), path, ": the checkpoint holds ", ck.parameters.size(),
             " parameters, this run trains ", parameters.size());
    auto state = trainer.optimizer().state();
    T2_CHECK(ck.optimizer_state.size() == state.size(), path, ": the checkpoint's optimizer state has ",
             ck.optimizer_state.size(), " floats, this run's optimizer ", state.size(), " (another optimizer?)");
    std::copy(ck.parameters.begin(), ck.parameters.end(), parameters.begin());
    std::copy(ck.optimizer_state.begin(), ck.optimizer_state.end(), state.begin());
    trainer.optimizer().set_steps(ck.loop.step);
    return ck.loop;
}

} // namespace io
T2_NAMESPACE_END
