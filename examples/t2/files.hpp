// The model, decomposition and expert files the commands read and write. The readers are
// compiled once, in files.cpp, rather than in every command that opens a file.
#pragma once

#include <cstdint>
#include <utility>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "t2/adapt/decomposition.hpp"
#include "t2/adapt/model.hpp"
#include "t2/core/rng.hpp"
#include "t2/io/checkpoint.hpp"
#include "t2/io/file_image.hpp"
#include "t2/io/tokenizer.hpp"
#include "t2/nn/router.hpp"

namespace t2_tool {

// t2::io::load_checkpoint: a llama2.c .bin, a GGUF file or a Hugging Face directory.
t2::io::checkpoint load_checkpoint(const std::string& path, const t2::io::load_options& options = {});
// t2::io's decomposition and expert files.
t2::adapt::decomposition read_decomposition(const std::string& path);
void write_decomposition(const std::string& path, const t2::adapt::decomposition& d);
t2::adapt::expert read_expert(const std::string& path);
void write_expert(const std::string& path, const t2::adapt::expert& e);
// A router file, checked against the library it routes.
void write_router(const std::string& path, const t2::nn::router& r, std::span<const t2::adapt::expert> library);
t2::nn::router read_router(const std::string& path, std::span<const t2::adapt::expert> library);

// The tokenizer for a model: `path` if given, else the one the checkpoint embeds, else the
// tokenizer.bin beside model_path; first_entries_only reads a larger vocabulary's prefix.
t2::io::tokenizer find_tokenizer(const std::optional<std::string>& path, const t2::io::checkpoint& ck,
                                 const std::string& model_path, bool first_entries_only = false);

// A prompt / answer pair as tokens: prompt + answer tokenized as one text (BOS first) and
// split where the prompt's own tokens end, so that the answer's first token may merge
// across the boundary as it would in generated text. `where` names the pair in errors.
struct tokenized_pair {
    std::vector<std::int32_t> prompt, answer;
};
tokenized_pair tokenize_pair(const t2::io::tokenizer& tok, const std::string& prompt, const std::string& answer,
                             const std::string& where);

// Fisher–Yates with draws from `seed`: the same order on every run of the same seed, so that
// a resumed or repeated run sees the data as the first did.
template <class T>
void shuffle_by_seed(std::vector<T>& items, std::uint64_t seed) {
    const t2::philox rng(seed);
    for (std::size_t i = items.size(); i > 1; --i)
        std::swap(items[i - 1], items[std::size_t(rng.bits(i)[0]) % i]);
}

} // namespace t2_tool
