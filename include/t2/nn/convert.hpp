#pragma once
// Converting a model's matrices to another storage type, e.g. f32 → bf16 to halve the bytes
// each decoded token streams, or f32 → f32 to copy weights out of a memory-mapped file into
// huge-page memory (io::load_mode::read gets there without the copy). Norm weights and the token embedding (read one row per token) stay
// where they are; every linear layer, the classifier included, is converted with
// round-to-nearest-even.
#include <memory>
#include <vector>

#include "t2/nn/llama.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

template <class To>
llama_weights<dense<To>> convert_weights(const llama_weights<dense<float>>& from) {
    struct storage {
        std::shared_ptr<const void> source; // keeps the f32 norms and embedding alive
        std::vector<matrix<To>> matrices;
    };
    auto owned = std::make_shared<storage>();
    owned->source = from.owner;
    owned->matrices.reserve(7 * from.blocks.size() + 1);
    const auto convert = [&](const linear<dense<float>>& layer) {
        const auto w = layer.weight().weight();
        matrix<To> m(w.extent(0), w.extent(1));
        for (std::size_t i = 0; i < w.size(); ++i)
            m[i] = from_f32<To>(w[i]);
        owned->matrices.push_back(std::move(m));
        return linear<dense<To>>(dense<To>(owned->matrices.back().view(), owned));
    };
    llama_weights<dense<To>> to;
    to.owner = owned;
    to.token_embedding = from.token_embedding;
    to.final_norm = from.final_norm;
    to.blocks.resize(from.blocks.size());
    for (std::size_t l = 0; l < from.blocks.size(); ++l) {
        const auto& f = from.blocks[l];
        auto& t = to.blocks[l];
        t.attention_norm = f.attention_norm;
        t.mlp_norm = f.mlp_norm;
        t.wq = convert(f.wq);
        t.wk = convert(f.wk);
        t.wv = convert(f.wv);
        t.wo = convert(f.wo);
        t.w1 = convert(f.w1);
        t.w2 = convert(f.w2);
        t.w3 = convert(f.w3);
    }
    to.classifier = convert(from.classifier);
    return to;
}

} // namespace nn
T2_NAMESPACE_END
