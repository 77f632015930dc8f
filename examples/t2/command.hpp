// What the commands of the `t2` tool share. Each command is one file (generate.cpp, ...)
// defining one add_<command> function, which main.cpp calls: it declares the command, its
// options with their help, and the work it runs, through `command` below.
//
// This header stays light: `command` wraps CLI11's subcommand (CLI::App) behind functions
// that main.cpp defines, so that CLI11 is compiled once, in main.cpp, rather than in every
// command file; each command file includes the parts of t2 it uses, files.hpp to read or
// write a file, and model.hpp when it runs a model.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "t2/core/error.hpp"

namespace CLI {
class App;
}

namespace t2_tool {

// A wrong command line (exit 2, like CLI11's parse errors); every other error exits 1.
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A command of the tool (a CLI11 subcommand) being declared. The values the options are bound
// to must outlive the parse: commands keep them in a shared_ptr their run function holds.
class command {
public:
    explicit command(CLI::App& app) : app_(&app) {}

    // A subcommand of this one (`t2 expert info`).
    command subcommand(const std::string& name, const std::string& description);
    // Text printed after the options by `--help`.
    command& footer(const std::string& text);
    // What the command does, run once the whole command line is parsed and valid. An argument
    // it does not recognize is a usage error; a command that has subcommands (`t2 expert`)
    // runs this only when none is given.
    command& run(std::function<void()> work);

    // --name VALUE; `type` names the value in the help (FILE, N, ...).
    command& option(const std::string& name, std::string& value, const std::string& type,
                    const std::string& help);
    command& option(const std::string& name, std::optional<std::string>& value, const std::string& type,
                    const std::string& help);
    // --name VALUE that must be given.
    command& required(const std::string& name, std::string& value, const std::string& type,
                      const std::string& help);
    // A positional argument that must be given.
    command& positional(const std::string& name, std::string& value, const std::string& help);
    // --name, valueless.
    command& flag(const std::string& name, bool& value, const std::string& help);

    // --name VALUE: a number from lo to hi written whole ('12', not '12x' or '0x0c'; '-1' is
    // no unsigned, NaN is in no range), else a usage error naming the range.
    template <class T>
    command& number(const std::string& name, T& value, T lo, T hi, const std::string& type,
                    const std::string& help) {
        return number_text(name, type, help, [&value, lo, hi](const std::string& text) -> std::string {
            std::size_t used = 0;
            T number{};
            try {
                if constexpr (std::is_floating_point_v<T>)
                    number = static_cast<T>(std::stod(text, &used));
                else if constexpr (std::is_signed_v<T>)
                    number = static_cast<T>(std::stoll(text, &used));
                else {
                    if (!text.empty() && text[0] == '-')
                        throw std::invalid_argument("negative");
                    number = static_cast<T>(std::stoull(text, &used));
                }
            } catch (const std::exception&) {
                used = 0;
            }
            if (used == 0 || used != text.size() || !(number >= lo && number <= hi))
                return "wants a number from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got '" +
                       text + "'";
            value = number;
            return {};
        });
    }

    // --model FILE, required.
    command& model(std::string& path) {
        return required("--model", path, "FILE", "checkpoint (llama2.c .bin, .gguf, or a Hugging Face directory)");
    }
    // --threads N, by default all hardware threads.
    command& threads(std::size_t& count) {
        count = std::max(1u, std::thread::hardware_concurrency());
        return number("--threads", count, std::size_t{1}, std::size_t{1024}, "N",
                      "threads (default: all hardware threads)");
    }

private:
    // --name VALUE handed to `set`, which returns an error message or nothing.
    command& number_text(const std::string& name, const std::string& type, const std::string& help,
                         std::function<std::string(const std::string&)> set);

    CLI::App* app_;
};

// The commands, in the order `t2 --help` lists them; each adds itself to `app`.
void add_generate(command& app);
void add_logits(command& app);
void add_info(command& app);
void add_decompose(command& app);
void add_expert(command& app);
void add_train_expert(command& app);
void add_train_router(command& app);
void add_export(command& app);
void add_adapt(command& app);

// "a,b,c" → {"a", "b", "c"}; empty items are kept, for the caller to refuse.
inline std::vector<std::string> split_list(const std::string& text) {
    std::vector<std::string> items;
    std::size_t at = 0;
    while (at <= text.size()) {
        const std::size_t comma = std::min(text.find(',', at), text.size());
        items.push_back(text.substr(at, comma - at));
        at = comma + 1;
    }
    return items;
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

} // namespace t2_tool
