#pragma once
// Transformer²'s two-pass inference over one frozen base: pass 1 (a dispatcher,
// adapt/dispatch.hpp) decides per prompt how to adapt, the decision's adapter is made (or
// found in the cache), pass 2 answers with it.
//
//   t2::adapt::self_adaptive sa(model, decomposition, experts, {.cache_bytes = 256 << 20});
//   t2::adapt::prompt_based dispatch(tokenizer);
//   const auto answers = sa.generate(ex, dispatch, prompts, sampler, {.max_new_tokens = 128});
//   answers[b].decision.label, answers[b].decision.alpha, answers[b].timing.dispatch_seconds
//
// Prompts of one call that reach different decisions run pass 2 together, each with its
// own adapter. An adapter is a mixture of the library at the decision's α, prepared in the
// cheaper SVF mode for the tokens it is about to run (adapt::prepare): composed W' for long
// answers, factored (nothing to build) for short ones and for batches that mix decisions. Composed adapters are kept by α and
// reused by later prompts with the same decision, within cache_bytes of composed weights,
// the least recently used dropped first; one that alone would not fit runs factored.
// Switching experts never touches the base.
//
// Borrows the model and the decomposition; owns the library. Not for concurrent calls (the
// cache is shared); contexts of one call run together.
#include <algorithm>
#include <chrono>
#include <concepts>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "t2/adapt/dispatch.hpp"
#include "t2/adapt/model.hpp"
#include "t2/nn/generate.hpp"
#include "t2/ops/sampling.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

struct self_adaptive_options {
    std::size_t cache_bytes = std::size_t{256} << 20; // composed W' kept between prompts
};

// Wall time of the three stages of the call that produced an answer (shared by its batch).
struct adaptive_timing {
    double dispatch_seconds = 0; // pass 1
    double adapt_seconds = 0;    // mixtures made and W' composed (0 when all were cached)
    double answer_seconds = 0;   // pass 2
};

struct adaptive_answer {
    nn::generation generation;
    dispatch_decision decision;
    adaptive_timing timing;
};

// What self_adaptive::generate asks of a dispatcher (adapt/dispatch.hpp): one decision per
// prompt.
template <class D, class E, class Model>
concept dispatcher_for = requires(D& d, const E& ex, const Model& model,
                                  std::span<const std::span<const std::int32_t>> prompts) {
    { d.decide(ex, model, prompts) } -> std::same_as<std::vector<dispatch_decision>>;
};

template <nn::model_config C = nn::llama_config>
class self_adaptive {
public:
    using model_type = nn::llama<C, svf>;

    self_adaptive(const model_type& model, const decomposition& d, std::vector<expert> experts,
                  self_adaptive_options options = {})
        : model_(&model), decomposition_(&d), options_(options) {
        set_experts(std::move(experts));
    }

    const model_type& model() const noexcept { return *model_; }
    const decomposition& decomposed() const noexcept { return *decomposition_; }
    std::span<const expert> experts() const noexcept { return experts_; }
    std::span<const std::string> expert_names() const noexcept { return names_; }

    // A new library (validated against the decomposition, as mixtures are); the cache of the
    // old one is dropped.
    void set_experts(std::vector<expert> experts) {
        T2_CHECK(!experts.empty(), "self_adaptive: no experts");
        for (std::size_t k = 0; k < experts.size(); ++k)
            T2_CHECK(experts[k].rescale == experts[0].rescale, "self_adaptive: expert ", k, " (", experts[k].task,
                     ") was trained ", experts[k].rescale ? "with" : "without", " rescaling, expert 0 (",
                     experts[0].task, ") ", experts[0].rescale ? "with" : "without");
        // Made once here so that a library of another model is refused now, not at pass 2.
        (void)make_mixture_adapter(*model_, *decomposition_, experts, {.rescale = experts[0].rescale});
        experts_ = std::move(experts);
        names_.clear();
        for (const expert& e : experts_)
            names_.push_back(e.task);
        cache_.clear();
    }

    // Pass 1, adaptation and pass 2 for every prompt (BOS first).
    template <exec::cpu_executor E, dispatcher_for<E, self_adaptive> Dispatcher, class Stop = nn::no_stop_condition>
    std::vector<adaptive_answer> generate(const E& ex, Dispatcher& dispatcher,
                                          std::span<const std::span<const std::int32_t>> prompts,
                                          ops::sampler& sample, const nn::generation_options& options = {},
                                          Stop&& stop = {}) {
        using clock = std::chrono::steady_clock;
        const auto seconds = [](clock::time_point from) {
            return std::chrono::duration<double>(clock::now() - from).count();
        };
        const std::size_t B = prompts.size();
        T2_CHECK(B > 0, "self_adaptive: no prompts");
        adaptive_timing timing;
        auto t = clock::now();
        std::vector<dispatch_decision> decisions = dispatcher.decide(ex, *this, prompts);
        timing.dispatch_seconds = seconds(t);
        T2_CHECK(decisions.size() == B, "self_adaptive: the dispatcher decided for ", decisions.size(), " of ", B,
                 " prompts");

        t = clock::now();
        ++calls_;
        // A batch whose prompts run with different adapters runs factored (svf's forward
        // uses a composed W' only when every row has its adapter): nothing to compose then.
        const bool one_decision = std::ranges::all_of(decisions, [&](const auto& d) { return d.alpha == decisions[0].alpha; });
        std::vector<const svf_adapter*> adapters(B, nullptr);
        for (std::size_t b = 0; b < B; ++b) {
            if (decisions[b].is_base() || adapters[b])
                continue;
            // Every prompt with this decision runs with one adapter, prepared for all their tokens.
            std::size_t tokens = 0;
            for (std::size_t o = b; o < B && one_decision; ++o)
                tokens += prompts[o].size() + options.max_new_tokens;
            const svf_adapter* adapter = adapter_for(ex, decisions[b].alpha, tokens);
            for (std::size_t o = b; o < B; ++o)
                if (decisions[o].alpha == decisions[b].alpha)
                    adapters[o] = adapter;
        }
        timing.adapt_seconds = seconds(t);

        t = clock::now();
        auto generations = nn::generate(ex, *model_, prompts, sample, options, std::forward<Stop>(stop),
                                        std::span<const svf_adapter* const>(adapters));
        timing.answer_seconds = seconds(t);

        std::vector<adaptive_answer> out(B);
        for (std::size_t b = 0; b < B; ++b)
            out[b] = {std::move(generations[b]), std::move(decisions[b]), timing};
        return out;
    }

    // The adapter of mixing weights α, from the cache or made now and prepared for `tokens`
    // tokens. It stays valid until the next call of this object that changes the cache.
    template <exec::cpu_executor E>
    const svf_adapter* adapter_for(const E& ex, std::span<const float> alpha, std::size_t tokens) {
        const std::size_t K = experts_.size(), L = model_->config().n_layers;
        T2_CHECK(alpha.size() == K || alpha.size() == L * K, "self_adaptive: ", alpha.size(),
                 " mixing weights; the library has ", K, " experts (give ", K, ", or ", L * K, " for one α per layer)");
        for (const float a : alpha)
            T2_CHECK(std::isfinite(a), "self_adaptive: a non-finite mixing weight");
        auto it = cache_.begin();
        while (it != cache_.end() && !std::ranges::equal(it->alpha, alpha))
            ++it;
        if (it == cache_.end()) {
            cache_.push_front({{alpha.begin(), alpha.end()},
                               make_mixture_adapter(*model_, *decomposition_, experts_,
                                                    {.rescale = experts_[0].rescale, .per_layer = alpha.size() != K}),
                               0, 0, false});
            set_mixture_alpha(cache_.front().adapter, alpha);
            it = cache_.begin();
        } else {
            cache_.splice(cache_.begin(), cache_, it); // most recently used first
            it = cache_.begin();
        }
        it->last_call = calls_;
        if (!it->prepared || composed_matrices(tokens) > composed_matrices(it->tokens))
            prepare_within_budget(ex, *it, tokens);
        return &it->adapter;
    }

    // Composed weights held by the cache, and the adapters in it.
    std::size_t cached_bytes() const noexcept {
        std::size_t total = 0;
        for (const entry& e : cache_)
            total += e.bytes;
        return total;
    }
    std::size_t cached_adapters() const noexcept { return cache_.size(); }

private:
    struct entry {
        std::vector<float> alpha;
        svf_adapter adapter;
        std::size_t bytes = 0;      // of its composed W'
        std::size_t tokens = 0;     // it was prepared for
        bool prepared = false;
        std::uint64_t last_call = 0; // the call that last used it: not evicted during that call
    };

    // How many matrices the automatic mode composes for `tokens` tokens; more tokens never
    // compose fewer, so an entry is prepared again only when this grows.
    std::size_t composed_matrices(std::size_t tokens) const {
        std::size_t n = 0;
        for (const auto& block : model_->weights().blocks)
            for (const nn::projection p : nn::all_projections) {
                const svf& w = nn::projection_of(block, p).weight();
                n += w.adapted() && cheaper_svf_mode(w.out_features(), w.in_features(), w.rank(), tokens) ==
                                        svf_mode::composed;
            }
        return n;
    }

    static std::size_t composed_bytes(const svf_adapter& a) {
        std::size_t bytes = 0;
        for (std::size_t l = 0; l < a.layers(); ++l)
            for (std::size_t p = 0; p < nn::all_projections.size(); ++p)
                bytes += a.matrix(l, p).composed.size() * sizeof(float);
        return bytes;
    }

    // Prepares e for `tokens`; then drops least recently used entries of earlier calls until
    // the composed weights fit, and if e alone does not fit, runs it factored.
    template <exec::cpu_executor E>
    void prepare_within_budget(const E& ex, entry& e, std::size_t tokens) {
        prepare(ex, *model_, e.adapter, tokens);
        e.bytes = composed_bytes(e.adapter);
        e.tokens = tokens;
        e.prepared = true;
        for (auto it = cache_.end(); it != cache_.begin() && cached_bytes() > options_.cache_bytes;) {
            --it;
            if (it->last_call != calls_)
                it = cache_.erase(it);
        }
        if (cached_bytes() > options_.cache_bytes) {
            prepare(ex, *model_, e.adapter, tokens, svf_mode::factored);
            e.bytes = 0;
        }
    }

    const model_type* model_;
    const decomposition* decomposition_;
    self_adaptive_options options_;
    std::vector<expert> experts_;
    std::vector<std::string> names_;
    std::list<entry> cache_; // most recently used first
    std::uint64_t calls_ = 0;
};

} // namespace adapt
T2_NAMESPACE_END
