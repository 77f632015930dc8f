// The vector and row kernels (blas1, elementwise, activations, softmax, norms, rope,
// reductions) on every CPU executor at the sizes a transformer runs them: vectors of 288
// (stories15M's dim), 4096 (a 7B model's dim) and 1 Mi elements (bandwidth-bound); rows ×
// cols of 16 × 4096 and 128 × 768; the 32000-token vocabulary for softmax and argmax; rope
// over 12 heads of 64 for 1 and 128 tokens.
//
// Names: <kernel>/<executor>/<size>, executor ∈ {scalar, simd, threads1, threads2}
// (threads<simd<>> on 1 and 2 threads). bytes_per_second counts each element read or
// written once; items_per_second counts elements.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"
#include "t2/t2.hpp"

namespace {

using t2::ops::gelu_approximation;
using t2::ops::rope_layout;

t2::vector<float> random_vector(std::size_t n, std::uint64_t seed, float lo = -1.f,
                                float hi = 1.f) {
    t2::vector<float> v(n);
    const t2::philox rng(seed);
    for (std::size_t i = 0; i < n; ++i)
        v[i] = rng.uniform(i, lo, hi);
    return v;
}

using t2_bench::pool;

t2::matrix<float> random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    return t2_bench::random_matrix(rows, cols, seed, -4.f, 4.f);
}

// Runs body once per iteration and reports bytes (each element read or written once) and
// elements per second.
template <class Body>
void measure(benchmark::State& state, std::size_t elements, std::size_t bytes, Body&& body) {
    for (auto _ : state) {
        body();
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes));
    state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(elements));
}

template <class Fn>
void add_benchmark(const std::string& name, Fn&& fn) {
    benchmark::RegisterBenchmark(name.c_str(), std::forward<Fn>(fn))->UseRealTime();
}

std::string shape(std::size_t rows, std::size_t cols) {
    return std::to_string(rows) + "x" + std::to_string(cols);
}

constexpr std::size_t f = sizeof(float);
const std::size_t vector_sizes[] = {288, 4096, std::size_t{1} << 20};
const std::pair<std::size_t, std::size_t> row_shapes[] = {{16, 4096}, {128, 768}, {1, 32000}};

template <class E>
void register_kernels(const E& ex, const std::string& exec_name) {
    const auto name = [&](const char* kernel, const std::string& size) {
        return std::string(kernel) + "/" + exec_name + "/" + size;
    };
    for (std::size_t n : vector_sizes) {
        const std::string size = std::to_string(n);
        add_benchmark(name("dot", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1), y = random_vector(n, 2);
            measure(s, n, 2 * n * f, [&] { benchmark::DoNotOptimize(t2::ops::dot(ex, x, y)); });
        });
        add_benchmark(name("axpy", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1);
            auto y = random_vector(n, 2);
            measure(s, n, 3 * n * f, [&] { t2::ops::axpy(ex, 1e-3f, x, y); });
        });
        add_benchmark(name("add", size), [=](benchmark::State& s) {
            const auto a = random_vector(n, 1), b = random_vector(n, 2);
            t2::vector<float> y(n);
            measure(s, n, 3 * n * f, [&] { t2::ops::add(ex, a, b, y); });
        });
        add_benchmark(name("mul", size), [=](benchmark::State& s) {
            const auto a = random_vector(n, 1), b = random_vector(n, 2);
            t2::vector<float> y(n);
            measure(s, n, 3 * n * f, [&] { t2::ops::mul(ex, a, b, y); });
        });
        add_benchmark(name("scale", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1);
            t2::vector<float> y(n);
            measure(s, n, 2 * n * f, [&] { t2::ops::scale(ex, 0.5f, x, y); });
        });
        add_benchmark(name("silu", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1, -6.f, 6.f);
            t2::vector<float> y(n);
            measure(s, n, 2 * n * f, [&] { t2::ops::silu(ex, x, y); });
        });
        add_benchmark(name("gelu", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1, -6.f, 6.f);
            t2::vector<float> y(n);
            measure(s, n, 2 * n * f, [&] { t2::ops::gelu(ex, x, y); });
        });
        add_benchmark(name("gelu_tanh", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1, -6.f, 6.f);
            t2::vector<float> y(n);
            measure(s, n, 2 * n * f, [&] { t2::ops::gelu(ex, x, y, gelu_approximation::tanh); });
        });
        add_benchmark(name("swiglu", size), [=](benchmark::State& s) {
            const auto g = random_vector(n, 1, -6.f, 6.f), u = random_vector(n, 2);
            t2::vector<float> y(n);
            measure(s, n, 3 * n * f, [&] { t2::ops::swiglu(ex, g, u, y); });
        });
        add_benchmark(name("sum", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1);
            measure(s, n, n * f, [&] { benchmark::DoNotOptimize(t2::ops::sum(ex, x)); });
        });
        add_benchmark(name("max", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1);
            measure(s, n, n * f, [&] { benchmark::DoNotOptimize(t2::ops::max(ex, x)); });
        });
        add_benchmark(name("argmax", size), [=](benchmark::State& s) {
            const auto x = random_vector(n, 1);
            measure(s, n, n * f, [&] { benchmark::DoNotOptimize(t2::ops::argmax(ex, x)); });
        });
    }
    add_benchmark(name("argmax", "32000"), [=](benchmark::State& s) {
        const auto x = random_vector(32000, 1);
        measure(s, 32000, 32000 * f, [&] { benchmark::DoNotOptimize(t2::ops::argmax(ex, x)); });
    });

    for (const auto& rc : row_shapes) {
        const std::size_t rows = rc.first, cols = rc.second, n = rows * cols;
        add_benchmark(name("softmax", shape(rows, cols)), [=](benchmark::State& s) {
            const auto x = random_matrix(rows, cols, 1);
            t2::matrix<float> y(rows, cols);
            measure(s, n, 2 * n * f, [&] { t2::ops::softmax(ex, x, y); });
        });
        add_benchmark(name("rmsnorm", shape(rows, cols)), [=](benchmark::State& s) {
            const auto x = random_matrix(rows, cols, 1);
            const auto w = random_vector(cols, 2);
            t2::matrix<float> y(rows, cols);
            measure(s, n, 2 * n * f, [&] { t2::ops::rmsnorm(ex, x, w, y); });
        });
        add_benchmark(name("layernorm", shape(rows, cols)), [=](benchmark::State& s) {
            const auto x = random_matrix(rows, cols, 1);
            const auto g = random_vector(cols, 2), b = random_vector(cols, 3);
            t2::matrix<float> y(rows, cols);
            measure(s, n, 2 * n * f, [&] { t2::ops::layernorm(ex, x, g, b, y); });
        });
    }

    for (std::size_t tokens : {1, 128})
        for (rope_layout layout : {rope_layout::interleaved, rope_layout::halves}) {
            const std::size_t cols = 12 * 64, n = tokens * cols;
            const char* kernel =
                layout == rope_layout::interleaved ? "rope_interleaved" : "rope_halves";
            add_benchmark(name(kernel, shape(tokens, cols)), [=](benchmark::State& s) {
                auto x = random_matrix(tokens, cols, 1);
                const t2::ops::rope_config cfg{.head_dim = 64, .layout = layout};
                measure(s, n, 2 * n * f, [&] { t2::ops::rope(ex, x, 100, cfg); });
            });
        }
}

} // namespace

int main(int argc, char** argv) {
    register_kernels(t2::exec::scalar{}, "scalar");
#if T2_ENABLE_SIMD
    register_kernels(t2::exec::simd<>{}, "simd");
    register_kernels(t2::exec::threads<t2::exec::simd<>>(pool(1)), "threads1");
    register_kernels(t2::exec::threads<t2::exec::simd<>>(pool(2)), "threads2");
#endif
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
