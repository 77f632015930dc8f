#pragma once
// An adapted model as plain dense weights, for writing it in a format other programs run
// (io/gguf_writer.hpp: `t2 export`). Every matrix an SVF adapter adapts becomes its
//
//   W' = U diag(σ ⊙ z · c) Vᵀ      (z of the expert, or z' = Σ_k α_k z_k of a mixture; c the
//                                   rescaling Σσ / Σ(σ⊙z) when the adapter has it)
//
// composed by svf::prepare, so the bits are those that forward multiplies by once the adapter
// is prepared (svf_mode::composed): a dense model of the result gives the adapted model's
// logits exactly. Every other matrix, the embedding, the norms and the classifier are the
// base's, shared rather than copied.
//
//   auto adapter = t2::adapt::make_svf_adapter(model, {.rescale = expert.rescale});
//   t2::adapt::apply_expert(adapter, decomposition, expert);
//   const auto weights = t2::adapt::merged_weights(ex, model, adapter);
//   t2::io::write_gguf("adapted.gguf", model.config(), weights, &tokenizer);
#include <cstddef>
#include <memory>
#include <vector>

#include "t2/adapt/model.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

// The dense weights of `model` adapted by `adapter` (see the top of this file). The W's are
// composed one matrix at a time and moved out of the adapter, so the peak memory is the
// result's: the adapter's composed-W' cache is left empty (its forward stays exact, factored,
// until it is prepared again). The result keeps the model's memory alive.
template <exec::cpu_executor E, nn::model_config C>
nn::llama_weights<nn::dense<float>> merged_weights(const E& ex, const nn::llama<C, svf>& model, svf_adapter& adapter) {
    const auto& c = model.config();
    const auto& base = model.weights();
    T2_CHECK(adapter.base() == base.owner.get() && adapter.layers() == c.n_layers,
             "merged_weights: the adapter was made for another model");
    struct storage {
        std::shared_ptr<const void> base;
        std::vector<matrix<float>> composed; // reserved: views of its elements stay valid
    };
    auto kept = std::make_shared<storage>();
    kept->base = base.owner;
    kept->composed.reserve(c.n_layers * nn::projections_per_block);

    nn::llama_weights<nn::dense<float>> w;
    w.owner = kept;
    w.token_embedding = base.token_embedding;
    w.final_norm = base.final_norm;
    w.classifier = nn::linear<nn::dense<float>>(base.classifier.weight().base());
    w.blocks.resize(c.n_layers);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
        w.blocks[l].attention_norm = base.blocks[l].attention_norm;
        w.blocks[l].mlp_norm = base.blocks[l].mlp_norm;
        for (std::size_t p = 0; p < nn::projections_per_block; ++p) {
            const svf& m = nn::projection_of(base.blocks[l], nn::all_projections[p]).weight();
            svf_state& s = adapter.matrix(l, p);
            auto& out = nn::projection_of(w.blocks[l], nn::all_projections[p]);
            if (!m.adapted() || !s.active()) { // forward runs the base here
                T2_CHECK(m.base().out_features() > 0, "merged_weights: ", nn::matrix_name(l, nn::all_projections[p]),
                         " has no dense base");
                out = nn::linear<nn::dense<float>>(m.base());
                continue;
            }
            m.prepare(ex, s, 0, svf_mode::composed); // refuses a W' that rescaling leaves undefined
            kept->composed.push_back(std::move(s.composed));
            s.composed = {};
            s.composed_from.clear();
            out = nn::linear<nn::dense<float>>(nn::dense<float>(kept->composed.back().view(), kept));
        }
    }
    return w;
}

} // namespace adapt
T2_NAMESPACE_END
