// t2: the command-line tool. Each command is one file here, adding itself to the app through
// command.hpp:
//
//   t2 generate  --model FILE [--tokenizer FILE] [--prompt TEXT] [--steps N] ...    generate.cpp
//   t2 logits    --model FILE --tokens 1,2,3 [--all] [--out FILE.npy]                logits.cpp
//   t2 info      --model FILE [--adapter svf|lora:R|mixture:K] [--matrices SEL]      info.cpp
//   t2 decompose --model FILE --out FILE.safetensors [--matrices mlp|attn|all|REGEX] decompose.cpp
//   t2 expert info FILE                                                               expert.cpp
//   t2 train-expert --model FILE --decomposition FILE --data FILE.jsonl --method M --out FILE
//                                                                                     train_expert.cpp
//   t2 export    --model FILE --decomposition FILE (--expert FILE | --experts A,B --alpha x,y)
//                --out FILE.gguf [--type f32|f16]                                      export.cpp
//
// model.hpp runs a model (generate, logits); files.cpp reads and writes the files, compiled
// once. This file holds the app and the only use of CLI11, which parses the command line:
// `t2 <command> --help` prints a command's options. Errors are one line on stderr: exit 2 for
// a wrong command line, 1 for anything else (a missing or bad file, ...). Defaults follow
// llama2.c's run.c.
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "command.hpp"
#include "t2/version.hpp"

namespace t2_tool {
namespace {

// Whether `app` has subcommands of its own (`t2 expert`).
bool has_subcommands(CLI::App& app) {
    return !app.get_subcommands([](const CLI::App*) { return true; }).empty();
}

// Throws a usage error for the first argument that `app`, or a command it belongs to (`t2
// expert` for `t2 expert info`), did not recognize. Subcommands allow extras so that these
// arrive here in order, rather than in CLI11's ExtrasError, which lists them backwards.
void reject_unknown(CLI::App& app) {
    std::vector<CLI::App*> chain;
    for (CLI::App* at = &app; at != nullptr; at = at->get_parent())
        chain.insert(chain.begin(), at);
    for (CLI::App* at : chain) {
        const auto rest = at->remaining();
        if (rest.empty())
            continue;
        const std::string& arg = rest.front();
        if (arg.size() > 1 && arg[0] == '-')
            throw usage_error("unknown option '" + arg + "'");
        throw usage_error((has_subcommands(*at) ? "unknown subcommand '" : "unexpected argument '") + arg + "'");
    }
}

} // namespace

command command::subcommand(const std::string& name, const std::string& description) {
    CLI::App* sub = app_->add_subcommand(name, description);
    sub->allow_extras(); // reported by reject_unknown
    return command(*sub);
}

command& command::footer(const std::string& text) {
    app_->footer(text);
    return *this;
}

command& command::run(std::function<void()> work) {
    CLI::App* app = app_;
    // Callbacks run from the innermost command out: `t2 expert`'s after `t2 expert info`'s.
    app->callback([app, work = std::move(work)] {
        if (!app->get_subcommands().empty())
            return; // one of its subcommands ran
        reject_unknown(*app);
        work();
    });
    return *this;
}

command& command::option(const std::string& name, std::string& value, const std::string& type,
                         const std::string& help) {
    app_->add_option(name, value, help)->type_name(type);
    return *this;
}

command& command::option(const std::string& name, std::optional<std::string>& value, const std::string& type,
                         const std::string& help) {
    app_->add_option_function<std::string>(name, [&value](const std::string& text) { value = text; }, help)
        ->type_name(type);
    return *this;
}

command& command::required(const std::string& name, std::string& value, const std::string& type,
                           const std::string& help) {
    app_->add_option(name, value, help)->type_name(type)->required();
    return *this;
}

command& command::positional(const std::string& name, std::string& value, const std::string& help) {
    app_->add_option(name, value, help)->type_name("")->required();
    return *this;
}

command& command::flag(const std::string& name, bool& value, const std::string& help) {
    app_->add_flag(name, value, help);
    return *this;
}

command& command::number_text(const std::string& name, const std::string& type, const std::string& help,
                              std::function<std::string(const std::string&)> set) {
    app_->add_option_function<std::string>(
            name,
            [name, set = std::move(set)](const std::string& text) {
                if (const std::string error = set(text); !error.empty())
                    throw CLI::ValidationError(name, error);
            },
            help)
        ->type_name(type);
    return *this;
}

} // namespace t2_tool

namespace {

// The subcommand of `app` named `name`, or null.
CLI::App* find_subcommand(CLI::App& app, std::string_view name) {
    const auto found = app.get_subcommands([&](const CLI::App* sub) { return sub->get_name() == name; });
    return found.empty() ? nullptr : found.front();
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app("t2: self-adaptive transformers (Transformer²) on the command line", "t2");
    // Inherited by the commands: an option given twice keeps its last value; help in columns.
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.get_formatter()->column_width(26);
    app.set_version_flag("--version", std::string("t2 ") + T2_VERSION_STRING, "print the version and exit");
    app.require_subcommand(1);
    t2_tool::command commands(app);
    t2_tool::add_generate(commands);
    t2_tool::add_logits(commands);
    t2_tool::add_info(commands);
    t2_tool::add_decompose(commands);
    t2_tool::add_expert(commands);
    t2_tool::add_train_expert(commands);
    t2_tool::add_train_router(commands);
    t2_tool::add_export(commands);
    t2_tool::add_adapt(commands);
    // After the commands, which would inherit it.
    app.footer("Models: llama2.c .bin (versions 0, 1, 2), GGUF, Hugging Face safetensors directories.\n"
               "Run 't2 <command> --help' for the options of a command.");

    // The commands named at the start of the line ("t2 expert info"): errors name them.
    std::string path = "t2";
    CLI::App* named = &app;
    for (int i = 1; i < argc; ++i) {
        CLI::App* sub = find_subcommand(*named, argv[i]);
        if (sub == nullptr)
            break;
        path += ' ';
        path += argv[i];
        named = sub;
    }
    const auto usage_error = [&](const std::string& message) {
        std::fprintf(stderr, "%s: %s (see '%s --help')\n", path.c_str(), message.c_str(), path.c_str());
        return 2;
    };
    try {
        const std::string first = argc > 1 ? argv[1] : "";
        if (first == "help") {
            std::fputs(app.help().c_str(), stdout);
            return 0;
        }
        if (named == &app) { // no command: say so rather than CLI11's "A subcommand is required"
            if (first.empty())
                return usage_error("no command given");
            if (first != "-h" && first != "--help" && first != "--version")
                return usage_error(first[0] == '-' ? "unknown option '" + first + "'"
                                                   : "unknown command '" + first + "'");
        }
        app.parse(argc, argv);
        return 0;
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success))
            return app.exit(e); // --help, --version: printed on stdout
        return usage_error(e.what());
    } catch (const t2_tool::usage_error& e) {
        return usage_error(e.what());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: %s\n", path.c_str(), e.what());
        return 1;
    }
}
