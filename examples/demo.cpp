// t2_demo: one Llama-style decoder block (RMSNorm, q/k/v projections, rotary embeddings,
// causal softmax attention, output projection, SwiGLU MLP, residuals) built from t2's
// kernels, run on every executor. It prints how long each takes and how far each result
// is from the scalar reference — the same model code, only the executor changes.
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
#include <string>
#include <string_view>
#include <thread>

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

struct block_weights {
    vector<float> attention_norm, mlp_norm;
    matrix<float> wq, wk, wv, wo; // [dim × dim], stored [out × in]
    matrix<float> w1, w3;         // [hidden × dim]
    matrix<float> w2;             // [dim × hidden]

    block_weights(const options& o)
        : attention_norm(o.dim), mlp_norm(o.dim), wq(random_matrix(o.dim, o.dim, o.seed + 1)),
          wk(random_matrix(o.dim, o.dim, o.seed + 2)), wv(random_matrix(o.dim, o.dim, o.seed + 3)),
          wo(random_matrix(o.dim, o.dim, o.seed + 4)), w1(random_matrix(o.hidden, o.dim, o.seed + 5)),
          w3(random_matrix(o.hidden, o.dim, o.seed + 6)), w2(random_matrix(o.dim, o.hidden, o.seed + 7)) {
        attention_norm.fill(1.f);
        mlp_norm.fill(1.f);
    }
};

// y = x · Wᵀ for W stored [out × in].
template <class E>
void linear(const E& ex, const matrix<float>& x, const matrix<float>& w, matrix<float>& y) {
    t2::ops::gemm(ex, x, w, y, {.transpose_b = true});
}

// x[T×D] ← x + Block(x), causal over the T positions.
template <class E>
void decoder_block(const E& ex, const options& o, const block_weights& w, matrix<float>& x) {
    const std::size_t T = o.tokens, D = o.dim, hd = D / o.heads;
    matrix<float> h(T, D), q(T, D), k(T, D), v(T, D), attended(T, D), out(T, D);

    t2::ops::rmsnorm(ex, x, w.attention_norm, h, 1e-5f);
    linear(ex, h, w.wq, q);
    linear(ex, h, w.wk, k);
    linear(ex, h, w.wv, v);
    const t2::ops::rope_config rope{.head_dim = hd};
    t2::ops::rope(ex, q, 0, rope);
    t2::ops::rope(ex, k, 0, rope);

    // Views are contiguous, so each head is gathered into its own [T × hd] matrices.
    matrix<float> qh(T, hd), kh(T, hd), vh(T, hd), scores(T, T), oh(T, hd);
    for (std::size_t head = 0; head < o.heads; ++head) {
        for (std::size_t t = 0; t < T; ++t)
            for (std::size_t i = 0; i < hd; ++i) {
                qh(t, i) = q(t, head * hd + i);
                kh(t, i) = k(t, head * hd + i);
                vh(t, i) = v(t, head * hd + i);
            }
        t2::ops::gemm(ex, qh, kh, scores, {.transpose_b = true, .alpha = 1.f / std::sqrt(float(hd))});
        for (std::size_t t = 0; t < T; ++t) // causal: position t sees positions ≤ t
            for (std::size_t s = t + 1; s < T; ++s)
                scores(t, s) = -std::numeric_limits<float>::infinity();
        t2::ops::softmax(ex, scores, scores);
        t2::ops::gemm(ex, scores, vh, oh);
        for (std::size_t t = 0; t < T; ++t)
            for (std::size_t i = 0; i < hd; ++i)
                attended(t, head * hd + i) = oh(t, i);
    }
    linear(ex, attended, w.wo, out);
    t2::ops::add(ex, x.flat(), out.flat(), x.flat());

    matrix<float> gate(T, o.hidden), up(T, o.hidden), act(T, o.hidden);
    t2::ops::rmsnorm(ex, x, w.mlp_norm, h, 1e-5f);
    linear(ex, h, w.w1, gate);
    linear(ex, h, w.w3, up);
    t2::ops::swiglu(ex, gate.flat(), up.flat(), act.flat());
    linear(ex, act, w.w2, out);
    t2::ops::add(ex, x.flat(), out.flat(), x.flat());
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
run_result run(const E& ex, const options& o, const block_weights& w, const matrix<float>& input) {
    double best = std::numeric_limits<double>::infinity();
    matrix<float> x = input;
    for (int rep = 0; rep < 3; ++rep) { // best of three: the machine may be busy
        x = input;
        const auto start = std::chrono::steady_clock::now();
        decoder_block(ex, o, w, x);
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

    const block_weights weights(o);
    const matrix<float> input = random_matrix(o.tokens, o.dim, o.seed);

    const run_result reference = run(t2::exec::scalar{}, o, weights, input);
    const auto report = [&](const char* name, const run_result& r) {
        std::printf("  %-24s %9.2f ms %8.1f GFLOP/s   max |Δ| vs scalar: %.1e (relative)\n", name,
                    r.seconds * 1e3, flops(o) / r.seconds * 1e-9,
                    max_relative_difference(r.x, reference.x));
    };
    report("scalar (reference)", reference);
#if T2_ENABLE_SIMD
    const t2::exec::simd<> simd;
    report("simd", run(simd, o, weights, input));
    t2::exec::thread_pool pool(threads);
    const std::string threaded = "threads<simd> x" + std::to_string(threads);
    report(threaded.c_str(), run(t2::exec::threads<t2::exec::simd<>>(pool), o, weights, input));
#else
    t2::exec::thread_pool pool(threads);
    const std::string threaded = "threads<scalar> x" + std::to_string(threads);
    report(threaded.c_str(), run(t2::exec::threads<t2::exec::scalar>(pool), o, weights, input));
#endif
    std::printf("(SIMD: %s, %zu f32 lanes: the widest ISA the compile flags allow)\n",
                T2_ENABLE_SIMD ? "on" : "off", T2_ENABLE_SIMD ? t2::exec::simd<>::lanes : std::size_t{1});
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "t2_demo: %s\n", e.what());
    return 1;
}
