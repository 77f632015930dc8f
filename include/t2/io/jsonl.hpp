#pragma once
// Prompt / answer pairs from a JSON Lines file, the training data of `t2 train-expert`:
//
//   {"prompt": "Q: 2+3? A:", "answer": " 5"}
//   {"prompt": "Q: 7+1? A:", "answer": " 8", "task": "addition"}
//
// One object per line, with string members "prompt" and "answer" (others are ignored); blank
// lines are skipped. A malformed line, a missing or non-string member, or a file without a
// single pair is a t2::error naming the file and the line.
#include <cstddef>
#include <fstream>
#include <string>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/io/json.hpp"

T2_NAMESPACE_BEGIN
namespace io {

struct prompt_answer {
    std::string prompt, answer;
};

inline std::vector<prompt_answer> parse_prompt_answer_jsonl(std::string_view text, const std::string& name) {
    std::vector<prompt_answer> out;
    std::size_t line_number = 0, begin = 0;
    while (begin < text.size()) {
        std::size_t end = text.find('\n', begin);
        if (end == std::string_view::npos)
            end = text.size();
        ++line_number;
        std::string_view line = text.substr(begin, end - begin);
        begin = end + 1;
        if (!line.empty() && line.back() == '\r')
            line.remove_suffix(1);
        if (line.find_first_not_of(" \t") == std::string_view::npos)
            continue;
        const auto doc = json::parse(line, name + " line " + std::to_string(line_number));
        const auto root = doc.root();
        out.push_back({root["prompt"].as_string(), root["answer"].as_string()});
    }
    T2_CHECK(!out.empty(), name, ": no {\"prompt\": ..., \"answer\": ...} lines");
    return out;
}

inline std::vector<prompt_answer> read_prompt_answer_jsonl(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    T2_CHECK(in.good(), path, ": cannot open");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    T2_CHECK(!in.bad(), path, ": read error");
    return parse_prompt_answer_jsonl(text, path);
}

} // namespace io
T2_NAMESPACE_END
