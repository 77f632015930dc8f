#pragma once
// SentencePiece-style BPE tokenizer with byte fallback, as llama2.c's run.c implements it
// for its tokenizer.bin files (and as Llama 2's vocabulary needs).
//
// tokenizer.bin: int32 max_token_length, then vocab_size records of {f32 score, int32
// length, length bytes}. The file does not store vocab_size: it comes from the model.
//
// encode(): optional BOS (id 1); a dummy-prefix " " token for non-empty text; one token per
// UTF-8 code point found in the vocabulary, else its bytes as <0xXX> tokens (run.c takes
// id byte + 3, where SentencePiece puts them; this looks the pieces up, which is the same
// for such vocabularies and stays inside a vocabulary without them: <unk>, id 0);
// then repeatedly merge the adjacent pair whose concatenation is the vocabulary entry with
// the highest score. decode(): strips the leading space of the piece after BOS and turns
// <0xXX> pieces into their byte.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "t2/io/mapped_file.hpp"

T2_NAMESPACE_BEGIN
namespace io {

class tokenizer {
public:
    static constexpr std::int32_t unk_id = 0, bos_id = 1, eos_id = 2;

    tokenizer() = default;
    tokenizer(std::vector<std::string> pieces, std::vector<float> scores)
        : pieces_(std::move(pieces)), scores_(std::move(scores)) {
        T2_CHECK(pieces_.size() == scores_.size(), "tokenizer: ", pieces_.size(), " pieces but ",
                 scores_.size(), " scores");
        T2_CHECK(pieces_.size() > 3, "tokenizer: a vocabulary needs <unk>, <s>, </s> and more");
        index_.reserve(pieces_.size());
        // The first id wins for duplicated pieces, as run.c's sorted lookup tends to.
        for (std::size_t i = 0; i < pieces_.size(); ++i)
            index_.emplace(pieces_[i], static_cast<std::int32_t>(i));
        constexpr char hex[] = "0123456789ABCDEF";
        for (unsigned b = 0; b < 256; ++b) {
            const char piece[] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            const std::int32_t id = find(std::string_view(piece, sizeof piece));
            byte_ids_[b] = id >= 0 ? id : unk_id;
        }
    }

    std::size_t vocab_size() const noexcept { return pieces_.size(); }
    const std::string& piece(std::int32_t id) const { return pieces_.at(check_id(id)); }
    float score(std::int32_t id) const { return scores_.at(check_id(id)); }

    // Token id of an exact piece, or -1.
    std::int32_t find(std::string_view piece) const {
        const auto it = index_.find(std::string(piece));
        return it == index_.end() ? -1 : it->second;
    }

    std::vector<std::int32_t> encode(std::string_view text, bool bos = true, bool eos = false) const {
        std::vector<std::int32_t> tokens;
        if (bos)
            tokens.push_back(bos_id);
        if (!text.empty()) {
            const std::int32_t space = find(" ");
            T2_CHECK(space >= 0, "tokenizer: the vocabulary has no ' ' piece for the dummy prefix");
            tokens.push_back(space);
        }
        for (std::size_t i = 0; i < text.size();) {
            // One UTF-8 code point: a lead byte and at most three continuation bytes.
            std::size_t n = 1;
            while (n < 4 && i + n < text.size() && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80)
                ++n;
            const std::int32_t id = find(text.substr(i, n));
            if (id >= 0) {
                tokens.push_back(id);
            } else {
                for (std::size_t b = 0; b < n; ++b)
                    tokens.push_back(byte_ids_[static_cast<unsigned char>(text[i + b])]);
            }
            i += n;
        }
        merge(tokens);
        if (eos)
            tokens.push_back(eos_id);
        return tokens;
    }

    // The text of `token` when it follows `previous`.
    std::string decode(std::int32_t previous, std::int32_t token) const {
        std::string_view piece = pieces_.at(check_id(token));
        if (previous == bos_id && !piece.empty() && piece.front() == ' ')
            piece.remove_prefix(1);
        unsigned byte = 0;
        if (piece.size() == 6 && piece.substr(0, 3) == "<0x" && piece[5] == '>' &&
            parse_hex(piece.substr(3, 2), byte))
            return std::string(1, static_cast<char>(byte));
        return std::string(piece);
    }

    std::string decode(const std::vector<std::int32_t>& tokens) const {
        std::string out;
        for (std::size_t i = 0; i < tokens.size(); ++i) {
            if (tokens[i] == bos_id || tokens[i] == eos_id)
                continue;
            out += decode(i ? tokens[i - 1] : bos_id, tokens[i]);
        }
        return out;
    }

private:
    std::size_t check_id(std::int32_t id) const {
        T2_CHECK(id >= 0 && static_cast<std::size_t>(id) < pieces_.size(), "tokenizer: token id ", id,
                 " is outside the vocabulary of ", pieces_.size());
        return static_cast<std::size_t>(id);
    }

    static bool parse_hex(std::string_view s, unsigned& value) {
        value = 0;
        for (char ch : s) {
            unsigned digit;
            if (ch >= '0' && ch <= '9') digit = unsigned(ch - '0');
            else if (ch >= 'A' && ch <= 'F') digit = unsigned(ch - 'A' + 10);
            else if (ch >= 'a' && ch <= 'f') digit = unsigned(ch - 'a' + 10);
            else return false;
            value = value * 16 + digit;
        }
        return true;
    }

    // Greedy BPE: merge the best-scoring adjacent pair until none is in the vocabulary.
    // Ties go to the leftmost pair, as in run.c.
    void merge(std::vector<std::int32_t>& tokens) const {
        std::string pair;
        for (;;) {
            float best_score = -1e10f;
            std::int32_t best_id = -1;
            std::size_t best_at = 0;
            for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
                pair = pieces_[std::size_t(tokens[i])];
                pair += pieces_[std::size_t(tokens[i + 1])];
                const std::int32_t id = find(pair);
                if (id >= 0 && scores_[std::size_t(id)] > best_score) {
                    best_score = scores_[std::size_t(id)];
                    best_id = id;
                    best_at = i;
                }
            }
            if (best_id < 0)
                return;
            tokens[best_at] = best_id;
            tokens.erase(tokens.begin() + std::ptrdiff_t(best_at) + 1);
        }
    }

    std::vector<std::string> pieces_;
    std::vector<float> scores_;
    std::unordered_map<std::string, std::int32_t> index_;
    std::int32_t byte_ids_[256] = {}; // the <0xXX> piece of each byte, or unk_id
};

struct tokenizer_options {
    // run.c's behaviour: read the first vocab_size entries and ignore any after them. Off,
    // a file with more entries than the model's vocabulary is refused: its first entries
    // are rarely the model's tokens (the 32000-token Llama 2 tokenizer beside a 512-token
    // model decodes garbage).
    bool first_entries_only = false;
};

// Parses a llama2.c tokenizer.bin for a model with `vocab_size` tokens; `path` names it in
// messages. The format has no entry count, so a file that ends early or goes on past
// vocab_size entries is told apart from a truncated one by parsing what is there.
inline tokenizer parse_llama2c_tokenizer(std::span<const std::byte> bytes, const std::string& path,
                                         std::size_t vocab_size, const tokenizer_options& options = {}) {
    byte_reader r(bytes, path);
    const auto max_length = r.read<std::int32_t>("max_token_length");
    if (max_length <= 0 || max_length > (1 << 16))
        t2::detail::throw_error(path, ": max_token_length ", max_length,
                                " is implausible; is this a llama2.c tokenizer.bin?");
    const auto mismatch = [&](std::size_t entries) {
        t2::detail::throw_error(path, ": the tokenizer holds ", entries, " tokens, the model's vocabulary is ",
                                vocab_size,
                                entries > vocab_size ? " (tokenizer_options::first_entries_only, or t2 generate "
                                                       "--tokenizer-prefix, reads only the first ones, as run.c does)"
                                                     : "");
    };
    const auto read_entry = [&](std::size_t i, float& score, std::string& piece) {
        score = r.read<float>("token score");
        const auto length = r.read<std::int32_t>("token length");
        if (length < 0 || length > max_length)
            t2::detail::throw_error(path, ": token ", i, " has length ", length, " (max_token_length is ",
                                    max_length, ")");
        const auto text = r.take(std::size_t(length), "token text");
        piece.assign(reinterpret_cast<const char*>(text.data()), text.size());
    };
    std::vector<std::string> pieces(vocab_size);
    std::vector<float> scores(vocab_size);
    for (std::size_t i = 0; i < vocab_size; ++i) {
        if (r.remaining() == 0)
            mismatch(i);
        read_entry(i, scores[i], pieces[i]);
    }
    if (r.remaining() != 0 && !options.first_entries_only) {
        std::size_t entries = vocab_size;
        for (float score = 0; r.remaining() != 0; ++entries) {
            std::string piece;
            read_entry(entries, score, piece);
        }
        mismatch(entries);
    }
    return tokenizer(std::move(pieces), std::move(scores));
}

inline tokenizer read_llama2c_tokenizer(const std::string& path, std::size_t vocab_size,
                                        const tokenizer_options& options = {}) {
    const mapped_file file(path);
    return parse_llama2c_tokenizer(file.bytes(), path, vocab_size, options);
}

} // namespace io
T2_NAMESPACE_END
