// t2: the command-line tool.
//
//   t2 generate --model FILE [--tokenizer FILE] [--prompt TEXT] [--steps N] ...
//   t2 logits   --model FILE --tokens 1,2,3 [--all] [--out FILE.npy]
//   t2 info     --model FILE [--adapter svf|lora:R|mixture:K] [--matrices SEL]
//   t2 decompose --model FILE --out FILE.safetensors [--matrices mlp|attn|all|REGEX]
//   t2 expert info FILE
//
// Errors are one line on stderr and a non-zero exit. Defaults follow llama2.c's run.c.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "t2/adapt/model.hpp"
#include "t2/adapt/parameters.hpp"
#include "t2/io/adapter_files.hpp"
#include "t2/io/load.hpp"
#include "t2/io/npy.hpp"
#include "t2/nn/convert.hpp"
#include "t2/nn/generate.hpp"
#include "t2/t2.hpp"

namespace {

using model_type = t2::nn::llama<t2::nn::llama_config>;
using executor = t2::exec::threads<t2::exec::simd<>>;

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr const char* main_usage =
    "usage: t2 <command> [options]\n"
    "\n"
    "commands:\n"
    "  generate   generate text from a prompt\n"
    "  logits     print or save the logits of a token sequence\n"
    "  info       describe a checkpoint (and an adapter's trainable parameters)\n"
    "  decompose  compute the SVD of a model's matrices once, for SVF experts\n"
    "  expert     describe an expert file ('t2 expert info FILE')\n"
    "\n"
    "Models: llama2.c .bin (versions 0, 1, 2), GGUF, Hugging Face safetensors directories.\n"
    "Run 't2 <command> --help' for the options of a command.\n";

constexpr const char* generate_usage =
    "usage: t2 generate --model FILE [options]\n"
    "  --model FILE        checkpoint (llama2.c .bin, .gguf, or a Hugging Face directory)\n"
    "  --tokenizer FILE    llama2.c tokenizer.bin (default: the one the model embeds, else\n"
    "                      tokenizer.bin beside the model)\n"
    "  --tokenizer-prefix  accept a tokenizer.bin with more entries than the model's\n"
    "                      vocabulary and use its first ones (run.c's behaviour)\n"
    "  --prompt TEXT       prompt (default: empty)\n"
    "  --steps N           forward passes, prompt included; 0 = the model's context (default 256)\n"
    "  --temperature T     0 = greedy (default 1.0)\n"
    "  --top-p P           nucleus sampling threshold in [0, 1]; 1 disables it (default 0.9)\n"
    "  --top-k K           sample among the K most likely tokens; 0 disables it (default 0)\n"
    "  --seed S            random seed (default: the current time)\n"
    "  --threads N         threads (default: all hardware threads)\n"
    "  --dtype f32|bf16    weights in memory: f32 (default) or bf16 (half the bytes per token)\n"
    "  --mmap              run f32 weights from the mapped file instead of reading it into\n"
    "                      huge-page memory (same memory, slower decode)\n"
    "  --ids               print the token ids (prompt included) instead of the text\n"
    "  --decomposition F   the model's SVD (from 't2 decompose'), for --expert\n"
    "  --expert FILE       run with an SVF expert applied (f32 weights)\n"
    "Prints the text on stdout and prefill and decode speeds on stderr.\n";

constexpr const char* logits_usage =
    "usage: t2 logits --model FILE --tokens 1,2,3 [--all] [--out FILE.npy] [--threads N]\n"
    "                 [--dtype f32|bf16] [--mmap]\n"
    "  --tokens IDS   comma-separated token ids, run from position 0\n"
    "  --all          logits of every position ([T × vocab]) instead of the last ([vocab])\n"
    "  --out FILE     write float32 .npy instead of printing text\n"
    "  --decomposition FILE --expert FILE   with an SVF expert applied (see 't2 generate --help')\n";

constexpr const char* info_usage =
    "usage: t2 info --model FILE [--adapter svf|lora:R|mixture:K[:layer]] [--matrices SEL]\n"
    "Prints the configuration, tensor count, stored dtypes and parameter count; with\n"
    "--adapter, the trainable parameters of that adapter on the selected matrices\n"
    "(--matrices: mlp (default), attn, all, or a regex over names such as\n"
    "layers.0.attention.wq).\n";

constexpr const char* decompose_usage =
    "usage: t2 decompose --model FILE --out FILE.safetensors [options]\n"
    "  --matrices SEL      mlp (default, as the Transformer² reference), attn, all, or a regex\n"
    "                      matched against names such as layers.0.feed_forward.w1\n"
    "  --precision f64|f32 SVD working precision (default f64)\n"
    "  --threads N         threads (default: all hardware threads)\n"
    "Writes U, S, V of every selected matrix with the hash of the model's weights; experts\n"
    "trained on it, and loading it, are refused for any other model. Progress on stderr.\n";

constexpr const char* expert_usage =
    "usage: t2 expert info FILE\n"
    "Prints an expert's metadata (base model hash, task, training, rescaling) and its\n"
    "matrices with their ranks and the range of z.\n";

// Options of the form --name value or --flag; `flags` lists the valueless ones.
class arguments {
public:
    arguments(int argc, char** argv, int first, const std::vector<std::string>& known,
              const std::vector<std::string>& flags) {
        for (int i = first; i < argc; ++i) {
            const std::string arg = argv[i];
            if (arg == "-h" || arg == "--help") {
                help = true;
                continue;
            }
            if (std::find(flags.begin(), flags.end(), arg) != flags.end()) {
                values_[arg] = "";
                continue;
            }
            if (std::find(known.begin(), known.end(), arg) == known.end())
                throw usage_error("unknown option '" + arg + "'");
            if (i + 1 >= argc)
                throw usage_error(arg + " needs a value");
            values_[arg] = argv[++i];
        }
    }

    bool help = false;
    bool has(const std::string& name) const { return values_.count(name) != 0; }
    std::optional<std::string> get(const std::string& name) const {
        const auto it = values_.find(name);
        return it == values_.end() ? std::nullopt : std::optional(it->second);
    }
    std::string required(const std::string& name) const {
        const auto v = get(name);
        if (!v)
            throw usage_error(name + " is required");
        return *v;
    }
    template <class T>
    T number(const std::string& name, T fallback, T lo, T hi) const {
        const auto v = get(name);
        if (!v)
            return fallback;
        std::size_t used = 0;
        T value{};
        try {
            if constexpr (std::is_floating_point_v<T>)
                value = static_cast<T>(std::stod(*v, &used));
            else if constexpr (std::is_signed_v<T>)
                value = static_cast<T>(std::stoll(*v, &used));
            else {
                if (!v->empty() && (*v)[0] == '-')
                    throw std::invalid_argument("negative");
                value = static_cast<T>(std::stoull(*v, &used));
            }
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != v->size() || !(value >= lo && value <= hi))
            throw usage_error(name + " wants a number from " + std::to_string(lo) + " to " +
                              std::to_string(hi) + ", got '" + *v + "'");
        return value;
    }

private:
    std::map<std::string, std::string> values_;
};

// How generate and logits load the checkpoint: read into huge-page memory (the default: the
// f32 weights are used where they lie, and a single core streams them ~1.8x faster than from
// the 4 KiB pages of a mapping), or mapped with --mmap, or mapped with --dtype bf16 (the f32
// file is only read once, to convert it).
t2::io::load_options load_options_for(const arguments& args) {
    const bool map = args.has("--mmap") || args.get("--dtype").value_or("f32") == "bf16";
    return {.mode = map ? t2::io::load_mode::map : t2::io::load_mode::read};
}

// Runs body(model) with the weights as --dtype and --mmap ask: f32 where the reader left them
// (in the file image, read or mapped as load_options_for chose), or converted to bf16.
template <class Body>
void with_model(const arguments& args, t2::io::checkpoint ck, std::size_t tokens, Body&& body) {
    const std::string dtype = args.get("--dtype").value_or("f32");
    if (args.has("--expert") != args.has("--decomposition"))
        throw usage_error("--expert and --decomposition go together");
    if (const auto expert_path = args.get("--expert")) {
        if (dtype != "f32")
            throw usage_error("an expert runs with f32 weights; drop --dtype " + dtype);
        const auto decomposition = t2::io::read_decomposition(args.required("--decomposition"));
        const auto expert = t2::io::read_expert(*expert_path);
        const auto model = t2::adapt::make_svf_model(ck.config, ck.weights, decomposition);
        auto adapter = t2::adapt::make_svf_adapter(model, {.rescale = expert.rescale});
        t2::adapt::apply_expert(adapter, decomposition, expert);
        t2::adapt::prepare(t2::exec::simd<>{}, model, adapter, tokens);
        body(t2::nn::with_adapter(model, adapter));
        return;
    }
    if (dtype == "bf16") {
        if (args.has("--mmap"))
            throw usage_error("--mmap keeps f32 weights in the file; it does not go with --dtype bf16");
        body(t2::nn::llama<t2::nn::llama_config, t2::nn::dense<t2::bf16>>(
            ck.config, t2::nn::convert_weights<t2::bf16>(ck.weights)));
    } else if (dtype == "f32") {
        body(model_type(ck.config, std::move(ck.weights)));
    } else {
        throw usage_error("--dtype wants f32 or bf16, got '" + dtype + "'");
    }
}

std::size_t thread_count(const arguments& args) {
    const std::size_t hw = std::max(1u, std::thread::hardware_concurrency());
    return args.number<std::size_t>("--threads", hw, 1, 1024);
}

t2::io::tokenizer find_tokenizer(const arguments& args, const t2::io::checkpoint& ck,
                                 const std::string& model_path) {
    if (const auto path = args.get("--tokenizer"))
        return t2::io::read_llama2c_tokenizer(*path, ck.config.vocab_size,
                                              {.first_entries_only = args.has("--tokenizer-prefix")});
    if (ck.tokenizer)
        return *ck.tokenizer;
    const auto beside = std::filesystem::path(model_path).parent_path() / "tokenizer.bin";
    if (std::filesystem::exists(beside))
        return t2::io::read_llama2c_tokenizer(beside.string(), ck.config.vocab_size,
                                              {.first_entries_only = args.has("--tokenizer-prefix")});
    throw usage_error(model_path + " embeds no tokenizer and there is no tokenizer.bin beside it; "
                                   "pass --tokenizer FILE");
}

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

int generate(int argc, char** argv) {
    const arguments args(argc, argv, 2,
                         {"--model", "--tokenizer", "--prompt", "--steps", "--temperature", "--top-p",
                          "--top-k", "--seed", "--threads", "--dtype", "--decomposition", "--expert"},
                         {"--ids", "--mmap", "--tokenizer-prefix"});
    if (args.help) {
        std::fputs(generate_usage, stdout);
        return 0;
    }
    const std::string model_path = args.required("--model");
    t2::ops::sampling_options sampling;
    sampling.temperature = args.number<float>("--temperature", 1.f, 0.f, 100.f);
    sampling.top_p = args.number<float>("--top-p", 0.9f, 0.f, 1.f);
    sampling.top_k = args.number<std::size_t>("--top-k", 0, 0, std::size_t{1} << 24);
    sampling.seed = args.number<std::uint64_t>("--seed", std::uint64_t(std::time(nullptr)), 0,
                                               std::numeric_limits<std::uint64_t>::max());
    std::size_t steps = args.number<std::size_t>("--steps", 256, 0, std::size_t{1} << 24);
    const bool print_ids = args.has("--ids");

    t2::io::checkpoint ck = t2::io::load_checkpoint(model_path, load_options_for(args));
    const t2::io::tokenizer tok = find_tokenizer(args, ck, model_path);
    if (tok.vocab_size() != ck.config.vocab_size)
        throw t2::error("the tokenizer has " + std::to_string(tok.vocab_size()) +
                        " tokens but the model " + std::to_string(ck.config.vocab_size));
    if (steps == 0 || steps > ck.config.seq_len)
        steps = ck.config.seq_len;
    const std::vector<std::int32_t> prompt = tok.encode(args.get("--prompt").value_or(""), true);
    if (prompt.size() > steps)
        throw usage_error("the prompt is " + std::to_string(prompt.size()) + " tokens, more than --steps " +
                          std::to_string(steps));
    t2::exec::thread_pool pool(thread_count(args));
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
    return 0;
}

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

int logits(int argc, char** argv) {
    const arguments args(argc, argv, 2,
                         {"--model", "--tokens", "--out", "--threads", "--dtype", "--decomposition", "--expert"},
                         {"--all", "--mmap"});
    if (args.help) {
        std::fputs(logits_usage, stdout);
        return 0;
    }
    const std::string model_path = args.required("--model");
    const std::vector<std::int32_t> tokens = parse_ids(args.required("--tokens"));
    t2::io::checkpoint ck = t2::io::load_checkpoint(model_path, load_options_for(args));
    if (tokens.size() > ck.config.seq_len)
        throw usage_error(std::to_string(tokens.size()) + " tokens exceed the model's context of " +
                          std::to_string(ck.config.seq_len));
    t2::exec::thread_pool pool(thread_count(args));
    const bool all = args.has("--all");
    t2::matrix<float> out;
    with_model(args, std::move(ck), tokens.size(), [&](const auto& model) {
        auto state = model.make_state(tokens.size());
        out = model.forward(executor(pool), state, tokens,
                            all ? t2::nn::logits_for::all : t2::nn::logits_for::last);
    });
    if (const auto path = args.get("--out")) {
        std::vector<std::size_t> shape{out.extent(1)};
        if (all)
            shape.insert(shape.begin(), out.extent(0));
        t2::io::write_npy(*path, out.span(), shape);
        return 0;
    }
    for (std::size_t r = 0; r < out.extent(0); ++r) {
        for (std::size_t c = 0; c < out.extent(1); ++c)
            std::printf("%s%.9g", c ? " " : "", out(r, c));
        std::printf("\n");
    }
    return 0;
}

// A bad flag value is a usage error (exit 2), whichever parser finds it.
template <class F>
auto as_usage_error(F&& parse) {
    try {
        return parse();
    } catch (const t2::error& e) {
        throw usage_error(e.what());
    }
}

t2::adapt::selection parse_selection(const arguments& args) {
    return as_usage_error([&] { return t2::adapt::selection::parse(args.get("--matrices").value_or("mlp")); });
}

int info(int argc, char** argv) {
    const arguments args(argc, argv, 2, {"--model", "--adapter", "--matrices"}, {});
    if (args.help) {
        std::fputs(info_usage, stdout);
        return 0;
    }
    if (args.has("--matrices") && !args.has("--adapter"))
        throw usage_error("--matrices goes with --adapter");
    const std::string model_path = args.required("--model");
    // Mapped: describing a model reads little of it.
    const t2::io::checkpoint ck = t2::io::load_checkpoint(model_path, {.mode = t2::io::load_mode::map});
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
    if (const auto adapter_text = args.get("--adapter")) {
        const auto adapter = as_usage_error([&] { return t2::adapt::adapter_spec::parse(*adapter_text); });
        const auto chosen = parse_selection(args);
        const std::size_t matrices = chosen.of(c).size();
        const std::size_t trainable = t2::adapt::trainable_parameters(c, chosen, adapter);
        std::printf("adapter       %s on %s: %zu matrices, %zu trainable parameters (%.4f%% of %zu)\n",
                    adapter.text().c_str(), chosen.text().c_str(), matrices, trainable,
                    parameters ? 100.0 * double(trainable) / double(parameters) : 0.0, parameters);
    }
    return 0;
}

int decompose(int argc, char** argv) {
    const arguments args(argc, argv, 2, {"--model", "--out", "--matrices", "--precision", "--threads"}, {});
    if (args.help) {
        std::fputs(decompose_usage, stdout);
        return 0;
    }
    const std::string model_path = args.required("--model"), out_path = args.required("--out");
    const std::string precision = args.get("--precision").value_or("f64");
    if (precision != "f64" && precision != "f32")
        throw usage_error("--precision wants f64 or f32, got '" + precision + "'");
    const auto chosen = parse_selection(args);
    const t2::io::checkpoint ck = t2::io::load_checkpoint(model_path);
    if (chosen.of(ck.config).empty())
        throw usage_error("--matrices '" + chosen.text() + "' selects none of the model's matrices");
    t2::exec::thread_pool pool(thread_count(args));
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
    t2::io::write_decomposition(out_path, d);
    std::fprintf(stderr, "wrote %s (base model %s)\n", out_path.c_str(), d.base_model_hash.substr(0, 16).c_str());
    return 0;
}

int expert(int argc, char** argv) {
    const std::string sub = argc > 2 ? argv[2] : "";
    if (sub == "-h" || sub == "--help") {
        std::fputs(expert_usage, stdout);
        return 0;
    }
    if (sub != "info")
        throw usage_error(sub.empty() ? "no subcommand given" : "unknown subcommand '" + sub + "'");
    if (argc != 4)
        throw usage_error("'t2 expert info' takes one FILE");
    const std::string path = argv[3];
    const t2::adapt::expert e = t2::io::read_expert(path);
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
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    const std::string command = argc > 1 ? argv[1] : "";
    try {
        if (command == "generate") return generate(argc, argv);
        if (command == "logits") return logits(argc, argv);
        if (command == "info") return info(argc, argv);
        if (command == "decompose") return decompose(argc, argv);
        if (command == "expert") return expert(argc, argv);
        if (command == "-h" || command == "--help" || command == "help") {
            std::fputs(main_usage, stdout);
            return 0;
        }
        if (command == "--version") {
            std::printf("t2 %s\n", T2_VERSION_STRING);
            return 0;
        }
        throw usage_error(command.empty() ? "no command given" : "unknown command '" + command + "'");
    } catch (const usage_error& e) {
        const bool known = command == "generate" || command == "logits" || command == "info" ||
                           command == "decompose" || command == "expert";
        std::fprintf(stderr, "t2%s%s: %s (see 't2 %s--help')\n", known ? " " : "",
                     known ? command.c_str() : "", e.what(), known ? (command + " ").c_str() : "");
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "t2%s%s: %s\n", command.empty() ? "" : " ", command.c_str(), e.what());
        return 1;
    }
}
