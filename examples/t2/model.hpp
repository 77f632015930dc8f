// Loading a model to run it, shared by the commands that run one (generate, logits) and the
// executor they and decompose run on.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <utility>

#include "command.hpp"
#include "files.hpp"
#include "t2/adapt/model.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/thread_pool.hpp"
#include "t2/exec/threads.hpp"
#include "t2/nn/convert.hpp"
#include "t2/nn/llama.hpp"

namespace t2_tool {

using model_type = t2::nn::llama<t2::nn::llama_config>;
using executor = t2::exec::threads<t2::exec::simd<>>;

// The options of a command that runs a model: --model, and how its weights are held.
struct model_options {
    std::string model;
    std::size_t threads = 1;
    std::string dtype = "f32";
    bool mmap = false;
    std::optional<std::string> decomposition, expert;
};

// --threads, --dtype, --mmap, --decomposition and --expert, after the command's own options
// (--model comes first: command::model).
inline void add_weight_options(command& c, model_options& o) {
    c.threads(o.threads)
        .option("--dtype", o.dtype, "f32|bf16", "weights in memory: f32 (default) or bf16 (half the bytes per token)")
        .flag("--mmap", o.mmap,
              "run f32 weights from the mapped file instead of reading it into\n"
              "huge-page memory (same memory, slower decode)")
        .option("--decomposition", o.decomposition, "FILE", "the model's SVD (from 't2 decompose'), for --expert")
        .option("--expert", o.expert, "FILE", "run with an SVF expert applied (f32 weights)");
}

// How generate and logits load the checkpoint: read into huge-page memory (the default: the
// f32 weights are used where they lie, and a single core streams them ~1.8x faster than from
// the 4 KiB pages of a mapping), or mapped with --mmap, or mapped with --dtype bf16 (the f32
// file is only read once, to convert it).
inline t2::io::load_options load_options_for(const model_options& args) {
    const bool map = args.mmap || args.dtype == "bf16";
    return {.mode = map ? t2::io::load_mode::map : t2::io::load_mode::read};
}

// Runs body(model) with the weights as --dtype and --mmap ask: f32 where the reader left them
// (in the file image, read or mapped as load_options_for chose), or converted to bf16.
template <class Body>
void with_model(const model_options& args, t2::io::checkpoint ck, std::size_t tokens, Body&& body) {
    const std::string dtype = args.dtype;
    if (args.expert.has_value() != args.decomposition.has_value())
        throw usage_error("--expert and --decomposition go together");
    if (const auto expert_path = args.expert) {
        if (dtype != "f32")
            throw usage_error("an expert runs with f32 weights; drop --dtype " + dtype);
        const auto decomposition = read_decomposition(*args.decomposition);
        const auto expert = read_expert(*expert_path);
        const auto model = t2::adapt::make_svf_model(ck.config, ck.weights, decomposition);
        auto adapter = t2::adapt::make_svf_adapter(model, {.rescale = expert.rescale});
        t2::adapt::apply_expert(adapter, decomposition, expert);
        t2::adapt::prepare(t2::exec::simd<>{}, model, adapter, tokens);
        body(t2::nn::with_adapter(model, adapter));
        return;
    }
    if (dtype == "bf16") {
        if (args.mmap)
            throw usage_error("--mmap keeps f32 weights in the file; it does not go with --dtype bf16");
        body(t2::nn::llama<t2::nn::llama_config, t2::nn::dense<t2::bf16>>(
            ck.config, t2::nn::convert_weights<t2::bf16>(ck.weights)));
    } else if (dtype == "f32") {
        body(model_type(ck.config, std::move(ck.weights)));
    } else {
        throw usage_error("--dtype wants f32 or bf16, got '" + dtype + "'");
    }
}

} // namespace t2_tool
