// t2 info: describe a checkpoint (and an adapter's trainable parameters).
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "command.hpp"
#include "files.hpp"
#include "t2/adapt/parameters.hpp"
#include "t2/adapt/selection.hpp"

namespace t2_tool {
namespace {

struct info_options {
    std::string model;
    std::optional<std::string> adapter, matrices;
};

void info(const info_options& args) {
    if (args.matrices && !args.adapter)
        throw usage_error("--matrices goes with --adapter");
    const std::string& model_path = args.model;
    // Mapped: describing a model reads little of it.
    const t2::io::checkpoint ck = load_checkpoint(model_path, {.mode = t2::io::load_mode::map});
    const auto& c = ck.config;
    std::printf("file          %s\nformat        %s\n", model_path.c_str(), ck.format.c_str());
    std::printf("dim           %zu\nhidden_dim    %zu\nn_layers      %zu\nn_heads       %zu\n"
                "n_kv_heads    %zu\nhead_dim      %zu\nvocab_size    %zu\nseq_len       %zu\n",
                c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, t2::nn::head_dim(c),
                c.vocab_size, c.seq_len);
    std::printf("norm_eps      %g\nrope_theta    %g\nrope_layout   %s\nclassifier    %s\n", c.norm_eps,
                c.rope_theta, c.rope_layout == t2::ops::rope_layout::interleaved ? "interleaved" : "halves",
                c.shared_classifier ? "tied to the embedding" : "separate");
    std::map<std::string, std::size_t> by_dtype;
    std::size_t parameters = 0;
    for (const auto& t : ck.tensors) {
        std::size_t n = 1;
        for (std::size_t d : t.shape)
            n *= d;
        parameters += n;
        by_dtype[t.dtype] += n;
    }
    std::printf("tensors       %zu\nparameters    %zu\n", ck.tensors.size(), parameters);
    for (const auto& [dtype, n] : by_dtype)
        std::printf("  %-6s      %zu\n", dtype.c_str(), n);
    std::printf("tokenizer     %s\n", ck.tokenizer ? "embedded" : "none (pass --tokenizer to generate)");
    if (const auto adapter_text = args.adapter) {
        const auto adapter = as_usage_error([&] { return t2::adapt::adapter_spec::parse(*adapter_text); });
        const auto chosen =
            as_usage_error([&] { return t2::adapt::selection::parse(args.matrices.value_or("mlp")); });
        const std::size_t matrices = chosen.of(c).size();
        const std::size_t trainable = t2::adapt::trainable_parameters(c, chosen, adapter);
        std::printf("adapter       %s on %s: %zu matrices, %zu trainable parameters (%.4f%% of %zu)\n",
                    adapter.text().c_str(), chosen.text().c_str(), matrices, trainable,
                    parameters ? 100.0 * double(trainable) / double(parameters) : 0.0, parameters);
    }
}

} // namespace

void add_info(command& app) {
    auto o = std::make_shared<info_options>();
    app.subcommand("info", "describe a checkpoint (and an adapter's trainable parameters)")
        .model(o->model)
        .option("--adapter", o->adapter, "svf|lora:R|mixture:K[:layer]",
                "the adapter whose trainable parameters to count")
        .option("--matrices", o->matrices, "SEL",
                "with --adapter, the matrices it adapts: mlp (default), attn, all, or a regex\n"
                "over names such as layers.0.attention.wq")
        .footer("Prints the configuration, tensor count, stored dtypes and parameter count; with\n"
                "--adapter, the trainable parameters of that adapter on the selected matrices.")
        .run([o] { info(*o); });
}

} // namespace t2_tool
