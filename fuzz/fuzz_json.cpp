// libFuzzer target for t2's JSON reader and writer (include/t2/io/json.hpp).
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude fuzz/fuzz_json.cpp -o fuzz_json
//   ./fuzz_json -max_total_time=60 fuzz/corpus/json
//
// Every input either parses or throws t2::error. What parses must also survive the writer:
// the text written parses to an equal value, which is written to the same text again (any
// other exception escapes and libFuzzer reports it).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "t2/io/json.hpp"

namespace {

// Walks the value through the checked accessors, as readers of config files do.
void walk(const t2::io::json::node& n, int depth) {
    namespace json = t2::io::json;
    try {
        switch (n.type()) {
        case json::kind::number: (void)n.as_double(); (void)n.as_size(); break;
        case json::kind::string: (void)n.as_string(); break;
        case json::kind::boolean: (void)n.as_bool(); break;
        case json::kind::array:
            for (std::size_t i = 0; i < n.size() && i < 8; ++i)
                walk(n[i], depth + 1);
            break;
        case json::kind::object:
            for (std::size_t i = 0; i < n.size() && i < 8; ++i)
                walk(n.member(i), depth + 1);
            (void)n["hidden_size"];
            break;
        case json::kind::null: break;
        }
    } catch (const t2::error&) {
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    namespace json = t2::io::json;
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    json::parse_options options;
    options.max_depth = 64;
    std::optional<json::document> doc;
    try {
        doc.emplace(json::parse(bytes, "fuzz.json", options));
    } catch (const t2::error&) {
        return 0;
    }
    const std::string text = json::to_string(doc->get());
    const json::document again = json::parse(text, "written", options);
    if (!(again.get() == doc->get()) || json::to_string(again.get()) != text)
        __builtin_trap();
    walk(doc->root(), 0);
    return 0;
}
