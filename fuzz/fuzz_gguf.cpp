// libFuzzer target for the GGUF reader: parses the input as a GGUF image and, when that
// succeeds, goes on as a user would (the model's shape checks, one decode step when the
// KV cache is small, the tokenizer). Only t2::error may come out; a crash, a sanitizer
// report, a hang or an out-of-memory is a bug. See fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "t2/exec/scalar.hpp"
#include "t2/io/gguf.hpp"
#include "t2/nn/llama.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto bytes = std::as_bytes(std::span<const std::uint8_t>(data, size));
    try {
        // No owner: every tensor is copied, nothing refers to `data` afterwards.
        auto ck = t2::io::read_gguf(bytes, "fuzz-input.gguf");
        const auto& c = ck.config;
        // The reader bounds the weights by the input's size, but not the context length
        // (llama.context_length is only a number): keep the KV cache small here.
        if (c.seq_len * c.n_layers * t2::nn::kv_dim(c) <= (std::size_t{1} << 20)) {
            const t2::nn::llama<t2::nn::llama_config> model(c, ck.weights);
            auto state = model.make_state();
            const std::int32_t token = static_cast<std::int32_t>(c.vocab_size - 1);
            (void)model.forward(t2::exec::scalar{}, state, std::span<const std::int32_t>(&token, 1));
        }
        if (ck.tokenizer) {
            const auto ids = ck.tokenizer->encode("Once upon a time, \xC3\xA9t\xC3\xA9 <0x41>", true, true);
            (void)ck.tokenizer->decode(ids);
        }
    } catch (const t2::error&) {
        // Rejected input: the expected outcome for almost everything the fuzzer makes.
    }
    return 0;
}
