#pragma once
// Adapted models and their adapters. The model is the frozen base with its decomposed (SVF)
// or adaptable (LoRA) matrices behind a weight policy; an adapter is a per-context
// nn::adapter_state made for that model, holding everything that adaptation changes. Any
// number of adapters run on one model, from any number of threads.
//
//   const auto model = t2::adapt::make_svf_model(ckpt.config, ckpt.weights, decomposition);
//   auto adapter = t2::adapt::make_svf_adapter(model);          // z = 1
//   t2::adapt::apply_expert(adapter, decomposition, expert);
//   t2::adapt::prepare(ex, model, adapter, tokens_to_generate); // compose W' where cheaper
//   model.forward(ex, state, tokens, t2::nn::logits_for::last, &adapter);
//
// Parameter names (adapter_state::layout) are the matrix names of nn/matrices.hpp for SVF
// (z or θ of each decomposed matrix), "<matrix>.lora_a" and "<matrix>.lora_b" for LoRA, and
// "alpha" (or "layers.<l>.alpha" per layer) for mixtures.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "t2/adapt/decomposition.hpp"
#include "t2/adapt/lora.hpp"
#include "t2/adapt/selection.hpp"
#include "t2/adapt/svf.hpp"
#include "t2/core/rng.hpp"
#include "t2/core/sha256.hpp"
#include "t2/nn/adapter_state.hpp"
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

// SHA-256 of an expert library (each expert's task and z, in order): what a router was
// trained for, so that a router file refuses another library (io/adapter_files.hpp).
inline std::string library_hash(std::span<const expert> experts) {
    sha256 h;
    for (const expert& e : experts) {
        h.update(e.base_model_hash);
        h.update(std::string_view("\0", 1));
        h.update(e.task);
        h.update(std::string_view("\0", 1));
        for (const auto& [name, z] : e.z) {
            h.update(name);
            h.update(std::as_bytes(std::span<const float>(z))); // little-endian hosts only, as the files
        }
    }
    return h.hex();
}

using svf_adapter = nn::adapter_state<svf>;
using lora_adapter = nn::adapter_state<lora>;

struct svf_adapter_options {
    svf_parametrization parametrization = svf_parametrization::z; // z or sigmoid (mixtures: make_mixture_adapter)
    bool rescale = false; // multiply W' by Σσ / Σ(σ⊙z)
    // sigmoid: θ starts at 0.1 plus Gaussian noise of this standard deviation (the
    // reference's), drawn from `seed`; z starts at 1.
    float init_std = 0.01f;
    std::uint64_t seed = 0;
};

struct mixture_options {
    bool rescale = false;   // as the experts were trained
    bool per_layer = false; // one α per layer ("layers.<l>.alpha") instead of one ("alpha")
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

// SVF on the decomposed matrices; without an adapter the model is the base. Checks that the
// decomposition belongs to these weights.
template <nn::model_config C>
nn::llama<C, svf> make_svf_model(const C& c, const nn::llama_weights<nn::dense<float>>& base,
                                 const decomposition& d) {
    detail::check_same_model(c, base, d);
    return nn::llama<C, svf>(c, detail::rebuild<svf>(c, base, [&](const nn::matrix_slot& s, const nn::dense<float>& w) {
        const decomposed_matrix* m = d.find(s.name());
        if (!m)
            return svf(w);
        detail::check_factors(*m, s);
        return svf(w, m->factors);
    }));
}

// The base for LoRA adapters: every block matrix may carry one.
template <nn::model_config C>
nn::llama<C, lora> make_lora_model(const C& c, const nn::llama_weights<nn::dense<float>>& base) {
    return nn::llama<C, lora>(c, detail::rebuild<lora>(c, base, [](const nn::matrix_slot&, const nn::dense<float>& w) {
        return lora(w);
    }));
}

// An SVF adapter over every decomposed matrix of the model: z = 1 (the model's outputs up to
// the SVD's rounding), or θ ≈ 0.1 for the sigmoid parametrization.
template <nn::model_config C>
svf_adapter make_svf_adapter(const nn::llama<C, svf>& model, const svf_adapter_options& options = {}) {
    T2_CHECK(options.parametrization != svf_parametrization::mixture,
             "make_svf_adapter: mixtures are made by make_mixture_adapter");
    const auto& c = model.config();
    std::vector<nn::parameter_range> layout;
    std::vector<float> parameters;
    const philox rng(options.seed);
    for (std::size_t l = 0; l < c.n_layers; ++l)
        for (const nn::projection p : nn::all_projections) {
            const svf& w = nn::projection_of(model.weights().blocks[l], p).weight();
            if (!w.adapted())
                continue;
            layout.push_back({nn::matrix_name(l, p), parameters.size(), w.rank()});
            for (std::size_t j = 0; j < w.rank(); ++j)
                parameters.push_back(options.parametrization == svf_parametrization::z
                                         ? 1.f
                                         : 0.1f + options.init_std * rng.normal(parameters.size()));
        }
    T2_CHECK(!layout.empty(), "make_svf_adapter: the model has no decomposed matrix");
    std::size_t next = 0;
    return svf_adapter(model.weights().owner.get(), c.n_layers, std::move(parameters), layout,
                       [&](std::size_t l, std::size_t p, std::span<float> values, std::span<float> gradient) {
                           svf_state s;
                           s.parametrization = options.parametrization;
                           s.rescale = options.rescale;
                           if (next < layout.size() && layout[next].name == nn::matrix_name(l, nn::all_projections[p])) {
                               s.parameters = values.subspan(layout[next].offset, layout[next].size);
                               s.gradient = gradient.subspan(layout[next].offset, layout[next].size);
                               ++next;
                           }
                           return s;
                       });
}

// Whether every adapted matrix of the adapter has a W' (svf::rescaling_defined): a forward
// refuses an adapter for which one has not; a search scores such a candidate as the worst.
template <nn::model_config C>
bool rescaling_defined(const nn::llama<C, svf>& model, const svf_adapter& adapter) {
    for (std::size_t l = 0; l < adapter.layers(); ++l)
        for (std::size_t p = 0; p < nn::projections_per_block; ++p)
            if (!nn::projection_of(model.weights().blocks[l], nn::all_projections[p])
                     .weight()
                     .rescaling_defined(adapter.matrix(l, p)))
                return false;
    return true;
}

// A mixture of the given experts on the decomposed matrices, α uniform (1/K).
template <nn::model_config C>
svf_adapter make_mixture_adapter(const nn::llama<C, svf>& model, const decomposition& d,
                                 std::span<const expert> experts, const mixture_options& options = {}) {
    const auto& c = model.config();
    const std::size_t K = experts.size();
    T2_CHECK(K > 0, "make_mixture_adapter: no experts");
    for (std::size_t k = 0; k < K; ++k) {
        T2_CHECK(experts[k].base_model_hash == d.base_model_hash, "expert ", k, " (", experts[k].task,
                 ") was trained on another model's decomposition");
        T2_CHECK(experts[k].rescale == options.rescale, "expert ", k, " (", experts[k].task, ") was trained ",
                 experts[k].rescale ? "with" : "without", " rescaling, the mixture runs ",
                 options.rescale ? "with" : "without");
    }
    std::vector<nn::parameter_range> layout;
    for (std::size_t l = 0; l < (options.per_layer ? c.n_layers : 1); ++l)
        layout.push_back({options.per_layer ? "layers." + std::to_string(l) + ".alpha" : "alpha", l * K, K});
    std::vector<float> alpha(layout.size() * K, 1.f / static_cast<float>(K));
    return svf_adapter(model.weights().owner.get(), c.n_layers, std::move(alpha), std::move(layout),
                       [&](std::size_t l, std::size_t p, std::span<float> values, std::span<float> gradient) {
                           svf_state s;
                           s.parametrization = svf_parametrization::mixture;
                           s.rescale = options.rescale;
                           const svf& w = nn::projection_of(model.weights().blocks[l], nn::all_projections[p]).weight();
                           if (!w.adapted())
                               return s;
                           const std::string name = nn::matrix_name(l, nn::all_projections[p]);
                           s.experts = matrix<float>(K, w.rank());
                           for (std::size_t k = 0; k < K; ++k) {
                               const std::vector<float>* z = experts[k].find(name);
                               T2_CHECK(!z || z->size() == w.rank(), "expert ", k, ": ", name, " has ",
                                        z ? z->size() : 0, " values, rank ", w.rank());
                               for (std::size_t j = 0; j < w.rank(); ++j)
                                   s.experts(k, j) = z ? (*z)[j] : 1.f;
                           }
                           const std::size_t at = options.per_layer ? l * K : 0;
                           s.parameters = values.subspan(at, K);
                           s.gradient = gradient.subspan(at, K);
                           return s;
                       });
}

// LoRA on the selected matrices with fresh A (seeded per matrix) and B = 0.
template <nn::model_config C>
lora_adapter make_lora_adapter(const nn::llama<C, lora>& model, const selection& chosen,
                               const lora_options& options = {}, std::uint64_t seed = 0) {
    T2_CHECK(options.rank > 0, "lora: rank must be positive");
    const auto& c = model.config();
    std::vector<nn::parameter_range> layout;
    std::vector<float> parameters;
    std::vector<std::size_t> at(c.n_layers * nn::all_projections.size(), SIZE_MAX); // offset of A, by matrix
    std::uint64_t stream = 0;
    for (std::size_t l = 0; l < c.n_layers; ++l)
        for (const nn::projection p : nn::all_projections) {
            const nn::matrix_slot slot = nn::slot_of(c, l, p);
            const std::uint64_t matrix_seed = seed ^ (stream++ * 0x9e3779b97f4a7c15ull);
            if (!chosen.contains(slot))
                continue;
            at[l * nn::all_projections.size() + std::size_t(p)] = parameters.size();
            const std::size_t a = options.rank * slot.in, b = slot.out * options.rank;
            layout.push_back({slot.name() + ".lora_a", parameters.size(), a});
            layout.push_back({slot.name() + ".lora_b", parameters.size() + a, b});
            const philox rng(matrix_seed);
            const float bound = 1.f / std::sqrt(static_cast<float>(slot.in));
            for (std::size_t i = 0; i < a; ++i)
                parameters.push_back(rng.uniform(i, -bound, bound));
            parameters.resize(parameters.size() + b, 0.f);
        }
    T2_CHECK(!layout.empty(), "make_lora_adapter: the selection \"", chosen.text(), "\" matches no matrix");
    return lora_adapter(model.weights().owner.get(), c.n_layers, std::move(parameters), std::move(layout),
                        [&](std::size_t l, std::size_t p, std::span<float> values, std::span<float> gradient) {
                            lora_state s;
                            const std::size_t offset = at[l * nn::all_projections.size() + p];
                            if (offset == SIZE_MAX)
                                return s;
                            const nn::matrix_slot slot = nn::slot_of(c, l, nn::all_projections[p]);
                            const std::size_t a = options.rank * slot.in, b = slot.out * options.rank;
                            s.rank = options.rank;
                            s.scaling = options.alpha / static_cast<float>(options.rank);
                            s.a = values.subspan(offset, a);
                            s.b = values.subspan(offset + a, b);
                            s.gradient_a = gradient.subspan(offset, a);
                            s.gradient_b = gradient.subspan(offset + a, b);
                            return s;
                        });
}

// Sets every adapted matrix's z from the expert (z = 1 where the expert has none); θ =
// logit(z) for the sigmoid parametrization, which needs 0 < z < 1. Everything is checked
// before anything is written: a refused expert leaves the adapter as it was.
inline void apply_expert(svf_adapter& adapter, const decomposition& d, const expert& e) {
    T2_CHECK(e.base_model_hash == d.base_model_hash, "the expert (", e.task,
             ") was trained on another model's decomposition (base model hash ", e.base_model_hash.substr(0, 16),
             "…, the decomposition's is ", d.base_model_hash.substr(0, 16), "…)");
    const auto each_matrix = [&](auto&& f) {
        for (std::size_t l = 0; l < adapter.layers(); ++l)
            for (std::size_t p = 0; p < nn::all_projections.size(); ++p)
                if (adapter.matrix(l, p).active())
                    f(adapter.matrix(l, p), nn::matrix_name(l, nn::all_projections[p]));
    };
    each_matrix([&](const svf_state& s, const std::string&) {
        T2_CHECK(s.parametrization != svf_parametrization::mixture,
                 "apply_expert: the adapter is a mixture; set its α (set_mixture_alpha)");
    });
    for (const auto& [name, values] : e.z) {
        T2_CHECK(d.find(name), "the expert adapts ", name, ", which the decomposition does not hold");
        T2_CHECK(adapter.find(name), "the expert adapts ", name, ", which the adapter does not");
    }
    each_matrix([&](const svf_state& s, const std::string& name) {
        T2_CHECK(s.rescale == e.rescale, "the expert (", e.task, ") was trained ", e.rescale ? "with" : "without",
                 " rescaling, the adapter runs ", s.rescale ? "with" : "without");
        const std::vector<float>* z = e.find(name);
        T2_CHECK(z || s.parametrization == svf_parametrization::z, "the expert has no z for ", name,
                 " (z = 1), which a sigmoid-parametrized adapter cannot hold");
        if (!z)
            return;
        T2_CHECK(z->size() == s.parameters.size(), "the expert's ", name, " has ", z->size(),
                 " values, the matrix has rank ", s.parameters.size());
        for (std::size_t j = 0; j < z->size(); ++j) {
            const float value = (*z)[j];
            T2_CHECK(std::isfinite(value), "the expert's ", name, " holds a non-finite value");
            T2_CHECK(s.parametrization == svf_parametrization::z || (value > 0.f && value < 1.f), "the expert's ",
                     name, "[", j, "] is ", value, "; a sigmoid-parametrized adapter needs 0 < z < 1");
        }
    });
    each_matrix([&](svf_state& s, const std::string& name) {
        const std::vector<float>* z = e.find(name);
        for (std::size_t j = 0; j < s.parameters.size(); ++j) {
            const float value = z ? (*z)[j] : 1.f;
            s.parameters[j] = s.parametrization == svf_parametrization::z ? value : std::log(value / (1.f - value));
        }
    });
}

// The expert an SVF adapter holds now (z = sigmoid(θ) for the sigmoid parametrization).
inline expert to_expert(const svf_adapter& adapter, const decomposition& d, std::string task = {},
                        std::string training = {}) {
    expert e{d.base_model_hash, false, std::move(task), std::move(training), {}};
    for (std::size_t l = 0; l < adapter.layers(); ++l)
        for (std::size_t p = 0; p < nn::all_projections.size(); ++p) {
            const svf_state& s = adapter.matrix(l, p);
            if (!s.active())
                continue;
            T2_CHECK(s.parametrization != svf_parametrization::mixture, "to_expert: the adapter is a mixture");
            e.rescale = s.rescale;
            std::vector<float> z(s.parameters.size());
            s.expert_vector(z);
            e.z.emplace_back(nn::matrix_name(l, nn::all_projections[p]), std::move(z));
        }
    return e;
}

// Mixing weights: one α for the model (alpha.size() == K) or one per layer
// (alpha.size() == n_layers·K, layer-major), as the adapter was made.
inline void set_mixture_alpha(svf_adapter& adapter, std::span<const float> alpha) {
    T2_CHECK(alpha.size() == adapter.parameters().size(), "set_mixture_alpha: ", alpha.size(), " weights, the mixture has ",
             adapter.parameters().size(), " (", adapter.layout().size(), " × K)");
    for (const float a : alpha)
        T2_CHECK(std::isfinite(a), "set_mixture_alpha: a non-finite mixing weight");
    std::copy(alpha.begin(), alpha.end(), adapter.parameters().begin());
}

// Composes W' for every matrix of the adapter where that is cheaper for the `tokens` tokens
// to run before its parameters change (or as `mode` says). Optional: forward is exact
// either way, and a composed W' whose parameters have changed since is never used.
template <exec::cpu_executor E, nn::model_config C>
void prepare(const E& ex, const nn::llama<C, svf>& model, svf_adapter& adapter, std::size_t tokens,
             svf_mode mode = svf_mode::automatic) {
    T2_CHECK(adapter.base() == model.weights().owner.get() && adapter.layers() == model.config().n_layers,
             "prepare: the adapter was made for another model");
    for (std::size_t l = 0; l < adapter.layers(); ++l)
        for (std::size_t p = 0; p < nn::all_projections.size(); ++p)
            nn::projection_of(model.weights().blocks[l], nn::all_projections[p])
                .weight()
                .prepare(ex, adapter.matrix(l, p), tokens, mode);
}

} // namespace adapt
T2_NAMESPACE_END
