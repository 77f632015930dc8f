// Decoding allocates nothing per token: after the first calls have sized a sequence's
// workspace (and each thread's gemm packing buffer), further tokens run on reused memory.
// This translation unit replaces the global operator new to count allocations; counting is
// switched on only around the calls measured, so doctest's own allocations do not count.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "support/check.hpp"
#include "t2/adapt/model.hpp"
#include "t2/io/llama2c.hpp"
#include "t2/nn/backprop.hpp"
#include "t2/nn/generate.hpp"
#include "t2/nn/random_init.hpp"

// The replacements below pair malloc with free (aligned_alloc's memory is freed by free too);
// GCC cannot see that they replace the global operators and warns about a mismatch.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace {
std::atomic<bool> counting{false};
std::atomic<std::size_t> allocations{0};

// Out of line: a debugger's breakpoint here shows where an unexpected allocation comes from.
[[gnu::noinline]] void count_allocation() {
    if (counting.load(std::memory_order_relaxed))
        allocations.fetch_add(1, std::memory_order_relaxed);
}
} // namespace

void* operator new(std::size_t bytes) {
    count_allocation();
    if (void* p = std::malloc(bytes ? bytes : 1))
        return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t bytes) { return ::operator new(bytes); }
// t2's tensors, workspaces and packing buffers (core/memory.hpp's aligned_allocate).
void* operator new(std::size_t bytes, std::align_val_t alignment) {
    count_allocation();
    const std::size_t a = static_cast<std::size_t>(alignment);
    if (void* p = std::aligned_alloc(a, (bytes + a - 1) / a * a))
        return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t bytes, std::align_val_t alignment) { return ::operator new(bytes, alignment); }
// The nothrow forms too (std::stable_sort's temporary buffer uses them): every form pairs
// with the deletes below.
void* operator new(std::size_t bytes, const std::nothrow_t&) noexcept {
    try {
        return ::operator new(bytes);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t bytes, const std::nothrow_t& tag) noexcept { return ::operator new(bytes, tag); }
void* operator new(std::size_t bytes, std::align_val_t alignment, const std::nothrow_t&) noexcept {
    try {
        return ::operator new(bytes, alignment);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t bytes, std::align_val_t alignment, const std::nothrow_t& tag) noexcept {
    return ::operator new(bytes, alignment, tag);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {

const std::string models = T2_SHARED_MODELS_DIR;
using model_type = t2::nn::llama<t2::nn::llama_config>;

// The allocations f makes, t2's aligned buffers included.
template <class F>
std::size_t allocations_of(F&& f) {
    allocations = 0;
    counting = true;
    f();
    counting = false;
    return allocations;
}

// Decodes `tokens` steps of B sequences in lockstep, sequence b with adapters[b % size]
// (none if empty), and returns the allocations of steps 3 … tokens (the first two size the
// workspace and the packing buffers).
template <class E, class Model>
std::size_t lockstep_decode_allocations(const E& ex, const Model& model, std::size_t B, std::size_t tokens,
                                        std::span<const typename Model::adapter_type* const> adapters = {}) {
    std::vector<t2::nn::llama_state> states;
    for (std::size_t b = 0; b < B; ++b)
        states.push_back(model.make_state(tokens + 1));
    std::vector<std::int32_t> next(B, 1);
    std::vector<typename Model::step> steps(B);
    t2::nn::decoder_workspace ws;
    const auto step = [&] {
        for (std::size_t b = 0; b < B; ++b)
            steps[b] = {&states[b], std::span<const std::int32_t>(&next[b], 1),
                        adapters.empty() ? nullptr : adapters[b % adapters.size()]};
        const auto logits = model.forward(ex, std::span<const typename Model::step>(steps), ws);
        for (std::size_t b = 0; b < B; ++b)
            next[b] = t2::ops::argmax(std::span<const float>(logits.row(b).data(), logits.extent(1)));
    };
    step();
    step();
    return allocations_of([&] {
        for (std::size_t t = 2; t < tokens; ++t)
            step();
    });
}

} // namespace

TEST_CASE("decoding allocates nothing per token, one sequence or a lockstep batch") {
    auto ck = t2::io::read_llama2c(models + "/stories260K.bin");
    const model_type model(ck.config, std::move(ck.weights));
    // The counter sees t2's buffers: a fresh state allocates its cache.
    CHECK(allocations_of([&] { (void)model.make_state(8); }) > 0);
    CHECK(lockstep_decode_allocations(t2::exec::scalar{}, model, 1, 24) == 0);
#if T2_ENABLE_SIMD
    // One row: dot products; 8 rows: few-row tiles; 24 rows: the packed gemm.
    for (const std::size_t B : {1, 8, 24}) {
        CAPTURE(B);
        CHECK(lockstep_decode_allocations(t2::exec::simd<>{}, model, B, 24) == 0);
    }
    // Threads: which worker packs what varies from call to call, so only one row (no packing).
    t2::exec::thread_pool pool(2);
    CHECK(lockstep_decode_allocations(t2::exec::threads<t2::exec::simd<>>(pool), model, 1, 24) == 0);
#endif
}

TEST_CASE("decoding with adapters allocates nothing per token; nor does a second training step") {
    auto ck = t2::io::read_llama2c(models + "/stories260K.bin");
    const t2::exec::scalar ex;
    const auto d = t2::adapt::decompose(ex, ck.config, ck.weights, t2::adapt::selection::all());
    const auto svf = t2::adapt::make_svf_model(ck.config, ck.weights, d);
    auto composed = t2::adapt::make_svf_adapter(svf), factored = t2::adapt::make_svf_adapter(svf);
    t2_test::fill_uniform(composed.parameters(), 1, 0.5f, 1.5f);
    t2_test::fill_uniform(factored.parameters(), 2, 0.5f, 1.5f);
    t2::adapt::prepare(ex, svf, composed, 1, t2::adapt::svf_mode::composed);
    const t2::adapt::svf_adapter* one[] = {&factored};
    const t2::adapt::svf_adapter* mixed[] = {&composed, nullptr, &factored};
    CHECK(lockstep_decode_allocations(ex, svf, 1, 24, std::span(one)) == 0);
    CHECK(lockstep_decode_allocations(ex, svf, 6, 24, std::span(mixed)) == 0);
    const auto lora = t2::adapt::make_lora_model(ck.config, ck.weights);
    const auto lora_adapter = t2::adapt::make_lora_adapter(lora, t2::adapt::selection::all(), {.rank = 4});
    const t2::adapt::lora_adapter* lora_one[] = {&lora_adapter};
    CHECK(lockstep_decode_allocations(ex, lora, 3, 24, std::span(lora_one)) == 0);
#if T2_ENABLE_SIMD
    CHECK(lockstep_decode_allocations(t2::exec::simd<>{}, svf, 6, 24, std::span(mixed)) == 0);
#endif

    // Training: the second step on the same batch shape reuses the training workspace.
    const std::vector<std::int32_t> a{1, 403, 407, 261, 378, 432}, b{1, 376, 17};
    const std::span<const std::int32_t> sequences[] = {a, b};
    const t2::nn::training_batch batch{std::span<const std::span<const std::int32_t>>(sequences)};
    t2::nn::training_workspace ws;
    const auto base_logits = t2::nn::batch_logits(ex, svf, batch);
    const std::vector<float> rewards{1.f, -1.f};
    const auto loss = t2::nn::losses(t2::nn::reinforce{rewards},
                                     t2::nn::kl_to_base{.base_logits = base_logits.view(), .coefficient = 0.1f});
    t2::nn::forward_backward(ex, svf, factored, batch, loss, ws);
    CHECK(allocations_of([&] { t2::nn::forward_backward(ex, svf, factored, batch, loss, ws); }) == 0);
#if T2_ENABLE_SIMD
    // (Not with threads: which worker packs which gemm varies from step to step, and a
    // worker grows its packing buffer the first time it packs a larger one.)
    const t2::exec::simd<> simd;
    t2::nn::forward_backward(simd, svf, factored, batch, loss, ws);
    CHECK(allocations_of([&] { t2::nn::forward_backward(simd, svf, factored, batch, loss, ws); }) == 0);
#endif
}

TEST_CASE("greedy generation allocates the same whatever the number of tokens") {
    auto ck = t2::io::read_llama2c(models + "/stories260K.bin");
    const model_type model(ck.config, std::move(ck.weights));
    const std::vector<std::int32_t> prompt{1, 403, 407};
    const auto count = [&](std::size_t steps) {
        auto state = model.make_state(64);
        t2::ops::sampler greedy({.temperature = 0.f});
        return allocations_of([&] {
            (void)t2::nn::generate(t2::exec::scalar{}, model, state, prompt, steps, greedy, [](auto, auto) {});
        });
    };
    // stories260K ends its story with BOS only after ~100 tokens: both runs are full length.
    CHECK(count(10) == count(40));
}
