// t2 generate: text from a prompt.
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "command.hpp"
#include "model.hpp"
#include "t2/io/tokenizer.hpp"
#include "t2/nn/generate.hpp"
#include "t2/ops/sampling.hpp"

namespace t2_tool {
namespace {

struct generate_options : model_options {
    std::optional<std::string> tokenizer;
    bool tokenizer_prefix = false;
    std::string prompt;
    std::size_t steps = 256;
    t2::ops::sampling_options sampling;
    bool ids = false;
};

// Prints a piece as run.c's safe_printf does: lone bytes that are not printable or
// whitespace (control characters from <0xXX> tokens) are dropped.
void print_piece(const std::string& piece) {
    if (piece.size() == 1) {
        const unsigned char c = static_cast<unsigned char>(piece[0]);
        if (!(std::isprint(c) || std::isspace(c)))
            return;
    }
    std::fwrite(piece.data(), 1, piece.size(), stdout);
}

void generate(const generate_options& args) {
    const std::string& model_path = args.model;
    const t2::ops::sampling_options& sampling = args.sampling;
    std::size_t steps = args.steps;
    const bool print_ids = args.ids;

    t2::io::checkpoint ck = load_checkpoint(model_path, load_options_for(args));
    const t2::io::tokenizer tok = find_tokenizer(args.tokenizer, ck, model_path, args.tokenizer_prefix);
    if (tok.vocab_size() != ck.config.vocab_size)
        throw t2::error("the tokenizer has " + std::to_string(tok.vocab_size()) +
                        " tokens but the model " + std::to_string(ck.config.vocab_size));
    if (steps == 0 || steps > ck.config.seq_len)
        steps = ck.config.seq_len;
    const std::vector<std::int32_t> prompt = tok.encode(args.prompt, true);
    if (prompt.size() > steps)
        throw usage_error("the prompt is " + std::to_string(prompt.size()) + " tokens, more than --steps " +
                          std::to_string(steps));
    t2::exec::thread_pool pool(args.threads);
    with_model(args, std::move(ck), steps, [&](const auto& model) {
        auto state = model.make_state(steps);
        t2::ops::sampler sample(sampling);
        if (!print_ids) {
            for (std::size_t i = 1; i < prompt.size(); ++i)
                print_piece(tok.decode(prompt[i - 1], prompt[i]));
            std::fflush(stdout);
        }
        t2::nn::generation_timing timing;
        const auto sequence = t2::nn::generate(
            executor(pool), model, state, prompt, steps, sample,
            [&](std::int32_t previous, std::int32_t token) {
                if (!print_ids) {
                    print_piece(tok.decode(previous, token));
                    std::fflush(stdout);
                }
            },
            &timing);
        if (print_ids)
            for (std::size_t i = 0; i < sequence.size(); ++i)
                std::printf("%s%d", i ? " " : "", sequence[i]);
        std::printf("\n");
        std::fflush(stdout);
        // The first generated token comes from the prefill pass; decoding made the rest.
        const std::size_t decoded = timing.generated_tokens ? timing.generated_tokens - 1 : 0;
        std::fprintf(stderr, "prefill: %zu tokens, %.1f tok/s; decode: %zu tokens, %.1f tok/s (%zu threads)\n",
                     timing.prompt_tokens, double(timing.prompt_tokens) / timing.prefill_seconds, decoded,
                     decoded ? double(decoded) / timing.decode_seconds : 0.0, pool.size());
    });
}

} // namespace

void add_generate(command& app) {
    auto o = std::make_shared<generate_options>();
    o->sampling.temperature = 1.f;
    o->sampling.top_p = 0.9f;
    o->sampling.top_k = 0;
    o->sampling.seed = std::uint64_t(std::time(nullptr));
    command c = app.subcommand("generate", "generate text from a prompt");
    c.model(o->model)
        .option("--tokenizer", o->tokenizer, "FILE",
                "llama2.c tokenizer.bin (default: the one the model embeds, else\n"
                "tokenizer.bin beside the model)")
        .flag("--tokenizer-prefix", o->tokenizer_prefix,
              "accept a tokenizer.bin with more entries than the model's\n"
              "vocabulary and use its first ones (run.c's behaviour)")
        .option("--prompt", o->prompt, "TEXT", "prompt (default: empty)")
        .number("--steps", o->steps, std::size_t{0}, std::size_t{1} << 24, "N",
                "forward passes, prompt included; 0 = the model's context (default 256)")
        .number("--temperature", o->sampling.temperature, 0.f, 100.f, "T", "0 = greedy (default 1.0)")
        .number("--top-p", o->sampling.top_p, 0.f, 1.f, "P",
                "nucleus sampling threshold in [0, 1]; 1 disables it (default 0.9)")
        .number("--top-k", o->sampling.top_k, std::size_t{0}, std::size_t{1} << 24, "K",
                "sample among the K most likely tokens; 0 disables it (default 0)")
        .number("--seed", o->sampling.seed, std::uint64_t{0}, std::numeric_limits<std::uint64_t>::max(), "S",
                "random seed (default: the current time)")
        .flag("--ids", o->ids, "print the token ids (prompt included) instead of the text");
    add_weight_options(c, *o);
    c.footer("Prints the text on stdout and prefill and decode speeds on stderr.").run([o] { generate(*o); });
}

} // namespace t2_tool
