// t2_demo: one Llama-style decoder block (RMSNorm, q/k/v projections, rotary embeddings,
// causal softmax attention, output projection, SwiGLU MLP, residuals) — the library's own
// block, the one inference and training run — with random weights, run on every executor.
// It prints how long each takes and how far each result is from the scalar reference: the
// same model code, only the executor changes.
//
// This is the foundation's tour; the self-adaptation demo replaces it once the model,
// the adapter and two-pass inference exist.
//
//   t2_demo [--tokens N] [--dim D] [--hidden H] [--heads N] [--threads N] [--seed S]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "t2/t2.hpp"

namespace {

using t2::matrix;
using t2::vector;

struct options {
    std::size_t tokens = 64, dim = 288, hidden = 768, heads = 6, threads = 0;
    std::uint64_t seed = 42;
};

constexpr const char* usage =
    "usage: t2_demo [--tokens N] [--dim D] [--hidden H] [--heads N] [--threads N] [--seed S]\n"
    "Runs one Llama-style decoder block with random weights on the scalar, SIMD and\n"
    "threaded executors and compares each result with the scalar reference.\n"
    "  --tokens N   sequence length (default 64)\n"
    "  --dim D      model width, a multiple of --heads with an even head size (default 288)\n"
    "  --hidden H   MLP width (default 768)\n"
    "  --heads N    attention heads (default 6)\n"
    "  --threads N  threads for the threaded executor (default: all hardware threads)\n"
    "  --seed S     weight seed (default 42)\n";

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "t2_demo: %s\n", message.c_str());
    std::exit(2);
}

std::size_t parse_count(std::string_view flag, const char* text, std::size_t max) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long value = std::strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || value == 0 || value > max)
        fail(std::string(flag) + " wants a whole number from 1 to " + std::to_string(max) +
             ", got '" + text + "'");
    return static_cast<std::size_t>(value);
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            std::fputs(usage, stdout);
            std::exit(0);
        }
        if (i + 1 >= argc)
            fail("unknown argument '" + std::string(arg) + "' (see --help)");
        const char* value = argv[++i];
        if (arg == "--tokens") o.tokens = parse_count(arg, value, 4096);
        else if (arg == "--dim") o.dim = parse_count(arg, value, 8192);
        else if (arg == "--hidden") o.hidden = parse_count(arg, value, 32768);
        else if (arg == "--heads") o.heads = parse_count(arg, value, 256);
        else if (arg == "--threads") o.threads = parse_count(arg, value, 1024);
        else if (arg == "--seed") o.seed = parse_count(arg, value, std::numeric_limits<std::uint32_t>::max());
        else fail("unknown argument '" + std::string(arg) + "' (see --help)");
    }
    if (o.dim % o.heads != 0 || (o.dim / o.heads) % 2 != 0)
        fail("--dim " + std::to_string(o.dim) + " must split into " + std::to_string(o.heads) +
             " heads of an even size");
    return o;
}

matrix<float> random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    matrix<float> m(rows, cols);
    const t2::philox rng(seed);
    const float bound = 1.f / std::sqrt(static_cast<float>(cols)); // keeps activations O(1)
    for (std::size_t i = 0; i < m.size(); ++i)
        m[i] = rng.uniform(i, -bound, bound);
    return m;
}

// The library's decoder block (t2::nn::block_forward) with random dense weights; the
// matrices are stored [out × in] as checkpoints store them.
struct random_block {
    t2::nn::llama_config config;
    vector<float> attention_norm, mlp_norm;
    t2::nn::block_weights<t2::nn::dense<float>> weights;

    explicit random_block(const options& o)
        : config{.dim = o.dim, .hidden_dim = o.hidden, .n_layers = 1, .n_heads = o.heads, .n_kv_heads = o.heads,
                 .vocab_size = 1, .seq_len = o.tokens},
          attention_norm(o.dim), mlp_norm(o.dim) {
        attention_norm.fill(1.f);
        mlp_norm.fill(1.f);
        const auto dense = [&](std::size_t out, std::size_t in, std::uint64_t salt) {
            return t2::nn::linear<t2::nn::dense<float>>(t2::nn::dense<float>(random_matrix(out, in, o.seed + salt)));
        };
        weights = {.attention_norm = attention_norm.view(),
                   .wq = dense(o.dim, o.dim, 1),
                   .wk = dense(o.dim, o.dim, 2),
                   .wv = dense(o.dim, o.dim, 3),
                   .wo = dense(o.dim, o.dim, 4),
                   .mlp_norm = mlp_norm.view(),
                   .w1 = dense(o.hidden, o.dim, 5),
                   .w2 = dense(o.dim, o.hidden, 7),
                   .w3 = dense(o.hidden, o.dim, 6)};
    }
};

// x[T×D] ← x + Block(x), causal over the T positions.
template <class E>
void decoder_block(const E& ex, const random_block& block, matrix<float>& x) {
    const t2::nn::llama_config& c = block.config;
    const std::size_t T = x.extent(0);
    matrix<float> h(T, c.dim), q(T, c.dim), k(T, c.dim), v(T, c.dim), attended(T, c.dim), projected(T, c.dim);
    matrix<float> gate(T, c.hidden_dim), up(T, c.hidden_dim);
    t2::tensor<float, t2::dims<3>> probs(t2::dims<3>(c.n_heads, T, T));
    const t2::nn::block_activations a{.x = x.view(), .h1 = h.view(), .q = q.view(), .k = k.view(), .v = v.view(),
                                      .attended = attended.view(), .x_mid = x.view(), .h2 = h.view(),
                                      .gate = gate.view(), .up = up.view(), .act = gate.view(),
                                      .projected = projected.view(), .out = x.view()};
    std::vector<std::size_t> positions(T);
    std::iota(positions.begin(), positions.end(), std::size_t{0});
    t2::nn::block_forward(ex, c, block.weights, a, std::span<const std::size_t>(positions),
                          [&](const auto& inner, auto qs, auto ks, auto vs, auto out) {
                              t2::ops::causal_attention(inner, qs, ks, vs, out, probs.view(), c.n_heads, c.n_kv_heads);
                          });
}

double flops(const options& o) {
    const double T = double(o.tokens), D = double(o.dim), H = double(o.hidden);
    return 2 * T * D * D * 4 + 2 * 2 * T * T * D + 2 * 3 * T * D * H;
}

struct run_result {
    matrix<float> x;
    double seconds;
};

template <class E>
run_result run(const E& ex, const random_block& block, const matrix<float>& input) {
    double best = std::numeric_limits<double>::infinity();
    matrix<float> x = input;
    for (int rep = 0; rep < 3; ++rep) { // best of three: the machine may be busy
        x = input;
        const auto start = std::chrono::steady_clock::now();
        decoder_block(ex, block, x);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return {std::move(x), best};
}

double max_relative_difference(const matrix<float>& got, const matrix<float>& want) {
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < want.size(); ++i)
        scale = std::max(scale, double(std::abs(want[i])));
    for (std::size_t i = 0; i < want.size(); ++i)
        worst = std::max(worst, std::abs(double(got[i]) - double(want[i])) / scale);
    return worst;
}

} // namespace

int main(int argc, char** argv) try {
    const options o = parse(argc, argv);
    const std::size_t threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
    std::printf("t2 %s — one decoder block: %zu tokens, dim %zu, hidden %zu, %zu heads\n",
                T2_VERSION_STRING, o.tokens, o.dim, o.hidden, o.heads);

    const random_block block(o);
    const matrix<float> input = random_matrix(o.tokens, o.dim, o.seed);

    const run_result reference = run(t2::exec::scalar{}, block, input);
    const auto report = [&](const char* name, const run_result& r) {
        std::printf("  %-24s %9.2f ms %8.1f GFLOP/s   max |Δ| vs scalar: %.1e (relative)\n", name,
                    r.seconds * 1e3, flops(o) / r.seconds * 1e-9,
                    max_relative_difference(r.x, reference.x));
    };
    report("scalar (reference)", reference);
#if T2_ENABLE_SIMD
    const t2::exec::simd<> simd;
    report("simd", run(simd, block, input));
    t2::exec::thread_pool pool(threads);
    const std::string threaded = "threads<simd> x" + std::to_string(threads);
    report(threaded.c_str(), run(t2::exec::threads<t2::exec::simd<>>(pool), block, input));
#else
    t2::exec::thread_pool pool(threads);
    const std::string threaded = "threads<scalar> x" + std::to_string(threads);
    report(threaded.c_str(), run(t2::exec::threads<t2::exec::scalar>(pool), block, input));
#endif
    std::printf("(SIMD: %s, %zu f32 lanes: the widest ISA the compile flags allow)\n",
                T2_ENABLE_SIMD ? "on" : "off", T2_ENABLE_SIMD ? t2::exec::simd<>::lanes : std::size_t{1});
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "t2_demo: %s\n", e.what());
    return 1;
}
