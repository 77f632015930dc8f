// libFuzzer target for t2's safetensors reader and writer (include/t2/io/safetensors.hpp) and
// the Hugging Face tensor mapping (include/t2/io/huggingface.hpp).
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude fuzz/fuzz_safetensors.cpp -o fuzz_safetensors
//   ./fuzz_safetensors -max_total_time=60 fuzz/corpus/safetensors
//
// Every input either parses or throws t2::error. A file that parses is decoded (every F32,
// F16 and BF16 tensor), written back with serialize_safetensors and parsed again, which must
// give the same tensors and metadata; then it is assembled into a tiny fixed Llama model (the
// seed corpus holds files that succeed) that runs one decode step, or throws t2::error.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "t2/exec/scalar.hpp"
#include "t2/io/huggingface.hpp"
#include "t2/io/safetensors.hpp"

namespace {

namespace io = t2::io;

// The model of fuzz/corpus/safetensors/llama_*.safetensors (the tests write them).
const io::json::document& tiny_config() {
    static const io::json::document doc = io::json::parse(
        std::string_view(R"({"model_type": "llama", "hidden_size": 4, "intermediate_size": 6,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 5, "max_position_embeddings": 4, "rms_norm_eps": 1e-5})"),
        "config.json");
    return doc;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    std::shared_ptr<const io::safetensors_file> file;
    try {
        file = std::make_shared<const io::safetensors_file>(bytes, "fuzz.safetensors");
    } catch (const t2::error&) {
        return 0;
    }

    std::vector<io::safetensors_entry> entries;
    for (const auto& t : file->tensors()) {
        if (t.data.data() < bytes.data() || t.data.data() + t.data.size() > bytes.data() + bytes.size())
            __builtin_trap();
        if (t.dtype == io::safetensors_dtype::f32 || t.dtype == io::safetensors_dtype::f16 ||
            t.dtype == io::safetensors_dtype::bf16)
            (void)file->to_f32(t);
        if (t.dtype != io::safetensors_dtype::unknown)
            entries.push_back({t.name, t.dtype, t.shape, t.data});
    }

    const auto written = io::serialize_safetensors(entries, file->metadata());
    const io::safetensors_file again(written, "written.safetensors");
    if (again.tensors().size() != entries.size() || again.metadata() != file->metadata())
        __builtin_trap();
    for (const auto& e : entries) {
        const auto& t = again.at(e.name);
        if (t.dtype != e.dtype || t.shape != e.shape || t.data.size() != e.data.size() ||
            (!e.data.empty() && std::memcmp(t.data.data(), e.data.data(), e.data.size()) != 0))
            __builtin_trap();
    }

    try {
        const auto ck = io::read_huggingface(tiny_config(), {file});
        const t2::nn::llama<t2::nn::llama_config> model(ck.config, ck.weights);
        auto state = model.make_state();
        const std::int32_t token = 4;
        (void)model.forward(t2::exec::scalar{}, state, std::span<const std::int32_t>(&token, 1));
    } catch (const t2::error&) {
    }
    return 0;
}
