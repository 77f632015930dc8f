#pragma once
// Adapted models: a checkpoint's dense weights with their selected matrices behind an
// adapter policy (svf, mixture or lora), and experts applied to them.
//
//   auto model = t2::adapt::make_svf_model(ckpt.config, ckpt.weights, decomposition);
//   t2::adapt::apply_expert(ex, model, decomposition, expert, tokens_to_generate);
//   model.forward(ex, state, tokens);
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "t2/adapt/decomposition.hpp"
#include "t2/adapt/lora.hpp"
#include "t2/adapt/mixture.hpp"
#include "t2/adapt/selection.hpp"
#include "t2/adapt/svf.hpp"
#include "t2/nn/llama.hpp"
#include "t2/nn/matrices.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

// An SVF expert: one z per adapted matrix, and what it was made for.
struct expert {
    std::string base_model_hash; // the decomposition's (and so the base model's)
    bool rescale = false;        // trained with the Σσ / Σ(σ⊙z) rescaling
    std::string task;            // free text, e.g. "gsm8k"
    std::string training;        // how it was trained, free text or JSON
    std::vector<std::pair<std::string, std::vector<float>>> z; // by nn::matrix_name

    const std::vector<float>* find(std::string_view name) const noexcept {
        for (const auto& [n, values] : z)
            if (n == name)
                return &values;
        return nullptr;
    }
};

namespace detail {

// The same model with every block projection rebuilt by make(slot, dense weight) and the
// classifier kept dense (Policy(dense)).
template <class Policy, nn::model_config C, class Make>
nn::llama_weights<Policy> rebuild(const C& c, const nn::llama_weights<nn::dense<float>>& base, Make&& make) {
    nn::llama_weights<Policy> w;
    w.token_embedding = base.token_embedding;
    w.final_norm = base.final_norm;
    w.classifier = nn::linear<Policy>(Policy(base.classifier.weight()));
    w.owner = base.owner;
    T2_CHECK(base.blocks.size() == c.n_layers, "adapt: ", base.blocks.size(), " blocks for ", c.n_layers,
             " layers");
    w.blocks.resize(c.n_layers);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
        w.blocks[l].attention_norm = base.blocks[l].attention_norm;
        w.blocks[l].mlp_norm = base.blocks[l].mlp_norm;
        for (const nn::projection p : nn::all_projections)
            nn::projection_of(w.blocks[l], p) =
                nn::linear<Policy>(make(nn::slot_of(c, l, p), nn::projection_of(base.blocks[l], p).weight()));
    }
    return w;
}

inline void check_factors(const decomposed_matrix& m, const nn::matrix_slot& model) {
    T2_CHECK(m.factors.out_features() == model.out && m.factors.in_features() == model.in,
             "decomposition: ", m.name, " is ", m.factors.out_features(), "x", m.factors.in_features(),
             ", the model's is ", model.out, "x", model.in);
}

template <nn::model_config C>
void check_same_model(const C& c, const nn::llama_weights<nn::dense<float>>& base, const decomposition& d) {
    const std::string hash = weights_hash(c, base);
    T2_CHECK(hash == d.base_model_hash, "the decomposition was computed from another model (base model hash ",
             d.base_model_hash.substr(0, 16), "…, this model's is ", hash.substr(0, 16), "…)");
}

} // namespace detail

// SVF on the decomposed matrices, z = 1 (the base model's outputs). Checks that the
// decomposition belongs to these weights.
template <nn::model_config C>
nn::llama<C, svf> make_svf_model(const C& c, const nn::llama_weights<nn::dense<float>>& base,
                                 const decomposition& d, const svf_options& options = {}) {
    detail::check_same_model(c, base, d);
    return nn::llama<C, svf>(c, detail::rebuild<svf>(c, base, [&](const nn::matrix_slot& s, const nn::dense<float>& w) {
        const decomposed_matrix* m = d.find(s.name());
        if (!m)
            return svf(w);
        detail::check_factors(*m, s);
        return svf(m->factors, options);
    }));
}

// Mixtures of the given experts on the decomposed matrices, α uniform.
template <nn::model_config C>
nn::llama<C, mixture> make_mixture_model(const C& c, const nn::llama_weights<nn::dense<float>>& base,
                                         const decomposition& d, std::span<const expert> experts,
                                         const svf_options& options = {}) {
    detail::check_same_model(c, base, d);
    T2_CHECK(!experts.empty(), "make_mixture_model: no experts");
    return nn::llama<C, mixture>(c, detail::rebuild<mixture>(c, base, [&](const nn::matrix_slot& s, const nn::dense<float>& w) {
        const decomposed_matrix* m = d.find(s.name());
        if (!m)
            return mixture(w);
        detail::check_factors(*m, s);
        matrix<float> rows(experts.size(), m->factors.rank());
        for (std::size_t k = 0; k < experts.size(); ++k) {
            T2_CHECK(experts[k].base_model_hash == d.base_model_hash, "expert ", k, " (", experts[k].task,
                     ") was trained on another model's decomposition");
            T2_CHECK(experts[k].rescale == options.rescale, "expert ", k, " (", experts[k].task, ") was trained ",
                     experts[k].rescale ? "with" : "without", " rescaling, the model runs ",
                     options.rescale ? "with" : "without");
            const std::vector<float>* z = experts[k].find(s.name());
            T2_CHECK(!z || z->size() == rows.extent(1), "expert ", k, ": ", s.name(), " has ",
                     z ? z->size() : 0, " values, rank ", rows.extent(1));
            for (std::size_t j = 0; j < rows.extent(1); ++j)
                rows(k, j) = z ? (*z)[j] : 1.f;
        }
        return mixture(m->factors, std::move(rows), options);
    }));
}

// LoRA on the selected matrices with fresh A (seeded per matrix) and B = 0.
template <nn::model_config C>
nn::llama<C, lora> make_lora_model(const C& c, const nn::llama_weights<nn::dense<float>>& base,
                                   const selection& chosen, const lora_options& options = {},
                                   std::uint64_t seed = 0) {
    std::uint64_t index = 0;
    return nn::llama<C, lora>(c, detail::rebuild<lora>(c, base, [&](const nn::matrix_slot& s, const nn::dense<float>& w) {
        const std::uint64_t stream = index++;
        return chosen.contains(s) ? lora(w, options, seed ^ (stream * 0x9e3779b97f4a7c15ull)) : lora(w);
    }));
}

// Sets every adapted matrix's z from the expert (z = 1 where the expert has none).
// `tokens` as in svf::set_z: how many tokens will run before the next change.
template <exec::cpu_executor E, nn::model_config C>
void apply_expert(const E& ex, nn::llama<C, svf>& model, const decomposition& d, const expert& e,
                  std::size_t tokens = 1) {
    T2_CHECK(e.base_model_hash == d.base_model_hash, "the expert (", e.task,
             ") was trained on another model's decomposition (base model hash ", e.base_model_hash.substr(0, 16),
             "…, the decomposition's is ", d.base_model_hash.substr(0, 16), "…)");
    for (const auto& [name, values] : e.z)
        T2_CHECK(d.find(name), "the expert adapts ", name, ", which the decomposition does not hold");
    for (auto& block : model.weights().blocks)
        for (const nn::projection p : nn::all_projections) {
            svf& w = nn::projection_of(block, p).weight();
            if (!w.adapted())
                continue;
            T2_CHECK(w.options().rescale == e.rescale, "the expert (", e.task, ") was trained ",
                     e.rescale ? "with" : "without", " rescaling, the model runs ",
                     w.options().rescale ? "with" : "without");
        }
    for (std::size_t l = 0; l < model.config().n_layers; ++l)
        for (const nn::projection p : nn::all_projections) {
            svf& w = nn::projection_of(model.weights().blocks[l], p).weight();
            if (!w.adapted())
                continue;
            const std::string name = nn::matrix_name(l, p);
            const std::vector<float>* z = e.find(name);
            T2_CHECK(!z || z->size() == w.rank(), "the expert's ", name, " has ", z ? z->size() : 0,
                     " values, the matrix has rank ", w.rank());
            const std::vector<float> ones(w.rank(), 1.f);
            w.set_z(ex, z ? std::span<const float>(*z) : std::span<const float>(ones), tokens);
        }
}

// Mixing weights for every adapted matrix: one α for the model (alpha.size() == K) or one
// per layer (alpha.size() == n_layers·K, layer-major).
template <exec::cpu_executor E, nn::model_config C>
void set_mixture_alpha(const E& ex, nn::llama<C, mixture>& model, std::span<const float> alpha,
                       std::size_t tokens = 1) {
    for (std::size_t l = 0; l < model.config().n_layers; ++l)
        for (const nn::projection p : nn::all_projections) {
            mixture& w = nn::projection_of(model.weights().blocks[l], p).weight();
            if (!w.adapted())
                continue;
            const std::size_t K = w.experts();
            T2_CHECK(alpha.size() == K || alpha.size() == model.config().n_layers * K, "set_mixture_alpha: ",
                     alpha.size(), " weights for ", K, " experts and ", model.config().n_layers, " layers");
            w.set_alpha(ex, alpha.size() == K ? alpha : alpha.subspan(l * K, K), tokens);
        }
}

} // namespace adapt
T2_NAMESPACE_END
