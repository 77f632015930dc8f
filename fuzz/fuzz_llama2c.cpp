// libFuzzer target for the llama2.c checkpoint reader (versions 0, 1, 2): parses the input
// and, when that succeeds, builds the model and runs one decode step with a short context.
// Only t2::error may come out; a crash, a sanitizer report, a hang or an out-of-memory is a
// bug. See fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <span>

#include "t2/exec/scalar.hpp"
#include "t2/io/llama2c.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto bytes = std::as_bytes(std::span<const std::uint8_t>(data, size));
    try {
        // No owner: the checkpoint is dropped before `data` goes away.
        auto ck = t2::io::parse_llama2c(bytes, "fuzz-input.bin", nullptr);
        const t2::nn::llama<t2::nn::llama_config> model(ck.config, ck.weights);
        auto state = model.make_state(1);
        const std::int32_t token = static_cast<std::int32_t>(ck.config.vocab_size - 1);
        (void)model.forward(t2::exec::scalar{}, state, std::span<const std::int32_t>(&token, 1));
    } catch (const t2::error&) {
    }
    return 0;
}
