// t2 logits: the logits of a token sequence, printed or saved as .npy.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "command.hpp"
#include "model.hpp"
#include "t2/io/npy.hpp"

namespace t2_tool {
namespace {

struct logits_options : model_options {
    std::string tokens;
    bool all = false;
    std::optional<std::string> out;
};

std::vector<std::int32_t> parse_ids(const std::string& text) {
    std::vector<std::int32_t> ids;
    std::size_t at = 0;
    while (at <= text.size()) {
        const std::size_t comma = std::min(text.find(',', at), text.size());
        const std::string item = text.substr(at, comma - at);
        std::size_t used = 0;
        long long value = -1;
        try {
            value = std::stoll(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != item.size() || value < 0 || value > std::numeric_limits<std::int32_t>::max())
            throw usage_error("--tokens wants comma-separated token ids, got '" + item + "'");
        ids.push_back(static_cast<std::int32_t>(value));
        at = comma + 1;
    }
    return ids;
}

void logits(const logits_options& args) {
    const std::string& model_path = args.model;
    const std::vector<std::int32_t> tokens = parse_ids(args.tokens);
    t2::io::checkpoint ck = load_checkpoint(model_path, load_options_for(args));
    if (tokens.size() > ck.config.seq_len)
        throw usage_error(std::to_string(tokens.size()) + " tokens exceed the model's context of " +
                          std::to_string(ck.config.seq_len));
    t2::exec::thread_pool pool(args.threads);
    const bool all = args.all;
    t2::matrix<float> out;
    with_model(args, std::move(ck), tokens.size(), [&](const auto& model) {
        auto state = model.make_state(tokens.size());
        out = model.forward(executor(pool), state, tokens,
                            all ? t2::nn::logits_for::all : t2::nn::logits_for::last);
    });
    if (const auto path = args.out) {
        std::vector<std::size_t> shape{out.extent(1)};
        if (all)
            shape.insert(shape.begin(), out.extent(0));
        t2::io::write_npy(*path, out.span(), shape);
        return;
    }
    for (std::size_t r = 0; r < out.extent(0); ++r) {
        for (std::size_t c = 0; c < out.extent(1); ++c)
            std::printf("%s%.9g", c ? " " : "", out(r, c));
        std::printf("\n");
    }
}

} // namespace

void add_logits(command& app) {
    auto o = std::make_shared<logits_options>();
    command c = app.subcommand("logits", "print or save the logits of a token sequence");
    c.model(o->model)
        .required("--tokens", o->tokens, "IDS", "comma-separated token ids, run from position 0")
        .flag("--all", o->all, "logits of every position ([T × vocab]) instead of the last ([vocab])")
        .option("--out", o->out, "FILE", "write float32 .npy instead of printing text");
    add_weight_options(c, *o);
    c.run([o] { logits(*o); });
}

} // namespace t2_tool
