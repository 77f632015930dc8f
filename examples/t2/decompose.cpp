// t2 decompose: the SVD of a model's matrices, computed once, for SVF experts.
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "command.hpp"
#include "model.hpp"
#include "t2/adapt/decomposition.hpp"
#include "t2/adapt/selection.hpp"

namespace t2_tool {
namespace {

struct decompose_options {
    std::string model, out;
    std::optional<std::string> matrices;
    std::string precision = "f64";
    std::size_t threads = 1;
};

void decompose(const decompose_options& args) {
    const std::string &model_path = args.model, &out_path = args.out;
    const std::string precision = args.precision;
    if (precision != "f64" && precision != "f32")
        throw usage_error("--precision wants f64 or f32, got '" + precision + "'");
    const auto chosen =
        as_usage_error([&] { return t2::adapt::selection::parse(args.matrices.value_or("mlp")); });
    const t2::io::checkpoint ck = load_checkpoint(model_path);
    if (chosen.of(ck.config).empty())
        throw usage_error("--matrices '" + chosen.text() + "' selects none of the model's matrices");
    t2::exec::thread_pool pool(args.threads);
    const auto start = std::chrono::steady_clock::now();
    const auto seconds = [&] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    t2::adapt::decompose_options options;
    options.precision =
        precision == "f64" ? t2::adapt::svd_precision::f64 : t2::adapt::svd_precision::f32;
    const std::size_t total = chosen.of(ck.config).size();
    std::fprintf(stderr, "decomposing %zu matrices on %zu threads (%s)\n", total, pool.size(), precision.c_str());
    double first_done = 0; // the estimate leaves out loading and hashing, which come first
    options.progress = [&](std::size_t done, std::size_t, const std::string& name) {
        const double elapsed = seconds();
        if (done == 1)
            first_done = elapsed;
        std::fprintf(stderr, "[%zu/%zu] %s  (%.1f s elapsed", done, total, name.c_str(), elapsed);
        if (done > 1 && done < total)
            std::fprintf(stderr, ", about %.0f s left",
                         (elapsed - first_done) / double(done - 1) * double(total - done));
        std::fprintf(stderr, ")\n");
    };
    const auto d = t2::adapt::decompose(executor(pool), ck.config, ck.weights, chosen, options);
    std::fprintf(stderr, "decomposed %zu matrices in %.1f s\n", total, seconds());
    write_decomposition(out_path, d);
    std::fprintf(stderr, "wrote %s (base model %s)\n", out_path.c_str(), d.base_model_hash.substr(0, 16).c_str());
}

} // namespace

void add_decompose(command& app) {
    auto o = std::make_shared<decompose_options>();
    app.subcommand("decompose", "compute the SVD of a model's matrices once, for SVF experts")
        .model(o->model)
        .required("--out", o->out, "FILE", "where to write the decomposition (.safetensors)")
        .option("--matrices", o->matrices, "SEL",
                "mlp (default, as the Transformer² reference), attn, all, or a regex\n"
                "matched against names such as layers.0.feed_forward.w1")
        .option("--precision", o->precision, "f64|f32", "SVD working precision (default f64)")
        .threads(o->threads)
        .footer("Writes U, S, V of every selected matrix with the hash of the model's weights; experts\n"
                "trained on it, and loading it, are refused for any other model. Progress on stderr.")
        .run([o] { decompose(*o); });
}

} // namespace t2_tool
