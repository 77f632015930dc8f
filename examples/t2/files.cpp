// See files.hpp.
#include "files.hpp"

#include <algorithm>
#include <filesystem>

#include "command.hpp"

#include "t2/io/adapter_files.hpp"
#include "t2/io/load.hpp"

namespace t2_tool {

t2::io::checkpoint load_checkpoint(const std::string& path, const t2::io::load_options& options) {
    return t2::io::load_checkpoint(path, options);
}

t2::adapt::decomposition read_decomposition(const std::string& path) { return t2::io::read_decomposition(path); }

void write_decomposition(const std::string& path, const t2::adapt::decomposition& d) {
    t2::io::write_decomposition(path, d);
}

t2::adapt::expert read_expert(const std::string& path) { return t2::io::read_expert(path); }

void write_expert(const std::string& path, const t2::adapt::expert& e) { t2::io::write_expert(path, e); }

void write_router(const std::string& path, const t2::nn::router& r, std::span<const t2::adapt::expert> library) {
    t2::io::write_router(path, r, library);
}

t2::nn::router read_router(const std::string& path, std::span<const t2::adapt::expert> library) {
    return t2::io::read_router(path, library);
}

tokenized_pair tokenize_pair(const t2::io::tokenizer& tok, const std::string& prompt, const std::string& answer,
                             const std::string& where) {
    const auto whole = tok.encode(prompt + answer, true), alone = tok.encode(prompt, true);
    const auto split = std::mismatch(whole.begin(), whole.end(), alone.begin(), alone.end()).first;
    tokenized_pair out{{whole.begin(), split}, {split, whole.end()}};
    if (out.answer.empty())
        throw t2::error(where + ": the answer \"" + answer + "\" adds no token to its prompt");
    return out;
}

t2::io::tokenizer find_tokenizer(const std::optional<std::string>& path, const t2::io::checkpoint& ck,
                                 const std::string& model_path, bool first_entries_only) {
    if (path)
        return t2::io::read_llama2c_tokenizer(*path, ck.config.vocab_size, {.first_entries_only = first_entries_only});
    if (ck.tokenizer)
        return *ck.tokenizer;
    const auto beside = std::filesystem::path(model_path).parent_path() / "tokenizer.bin";
    if (std::filesystem::exists(beside))
        return t2::io::read_llama2c_tokenizer(beside.string(), ck.config.vocab_size,
                                              {.first_entries_only = first_entries_only});
    throw usage_error(model_path + " embeds no tokenizer and there is no tokenizer.bin beside it; "
                                   "pass --tokenizer FILE");
}

} // namespace t2_tool
