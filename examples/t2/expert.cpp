// t2 expert info: describe an expert file.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "command.hpp"
#include "files.hpp"

namespace t2_tool {
namespace {

void expert_info(const std::string& path) {
    const t2::adapt::expert e = read_expert(path);
    std::size_t values = 0;
    for (const auto& [name, z] : e.z)
        values += z.size();
    std::printf("file          %s\nbase model    %s\ntask          %s\ntraining      %s\n"
                "rescale       %s\nmatrices      %zu\nparameters    %zu\n",
                path.c_str(), e.base_model_hash.c_str(), e.task.c_str(), e.training.c_str(),
                e.rescale ? "yes (Σσ / Σ(σ⊙z))" : "no", e.z.size(), values);
    for (const auto& [name, z] : e.z) {
        const auto [lo, hi] = std::minmax_element(z.begin(), z.end());
        double mean = 0;
        for (const float v : z)
            mean += v;
        std::printf("  %-28s rank %-5zu z in [%.4g, %.4g], mean %.4g\n", name.c_str(), z.size(),
                    z.empty() ? 0.0 : *lo, z.empty() ? 0.0 : *hi, z.empty() ? 0.0 : mean / double(z.size()));
    }
}

} // namespace

void add_expert(command& app) {
    command c = app.subcommand("expert", "describe an expert file ('t2 expert info FILE')");
    c.run([] { throw usage_error("no subcommand given"); });
    auto path = std::make_shared<std::string>();
    c.subcommand("info", "print an expert's metadata and matrices")
        .positional("FILE", *path, "the expert (.safetensors)")
        .footer("Prints an expert's metadata (base model hash, task, training, rescaling) and its\n"
                "matrices with their ranks and the range of z.")
        .run([path] { expert_info(*path); });
}

} // namespace t2_tool
