#pragma once
// What every checkpoint reader returns: the model's configuration and f32 weights (views
// into the file's image, io::file_image, where the stored type allows, converted copies
// otherwise), the tokenizer when the file embeds one, and a record of the stored tensors for
// `t2 info`.
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "t2/io/tokenizer.hpp"
#include "t2/nn/llama.hpp"

T2_NAMESPACE_BEGIN
namespace io {

struct tensor_record {
    std::string name;
    std::string dtype; // as stored: "f32", "f16", "bf16", "q8_0", "i8"
    std::vector<std::size_t> shape;
};

struct checkpoint {
    std::string format; // e.g. "llama2.c v0", "gguf v3", "safetensors"
    nn::llama_config config;
    nn::llama_weights<nn::dense<float>> weights;
    std::optional<io::tokenizer> tokenizer;
    std::vector<tensor_record> tensors;
};

} // namespace io
T2_NAMESPACE_END
