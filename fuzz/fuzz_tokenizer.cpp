// libFuzzer target for the llama2.c tokenizer reader and the tokenizer itself: parses the
// input as a 512-token tokenizer.bin and, when that succeeds, encodes and decodes text.
// Only t2::error may come out. See fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "t2/io/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto bytes = std::as_bytes(std::span<const std::uint8_t>(data, size));
    try {
        const auto tok = t2::io::parse_llama2c_tokenizer(bytes, "fuzz-input.bin", 512);
        // The input's tail doubles as text, so the encoder sees arbitrary bytes too.
        const std::string_view text(reinterpret_cast<const char*>(data) + size / 2, size - size / 2);
        const auto ids = tok.encode(text, true, true);
        (void)tok.decode(ids);
    } catch (const t2::error&) {
    }
    return 0;
}
