#pragma once
// Helpers shared by the benchmark programs.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "t2/t2.hpp"

namespace t2_bench {

inline t2::matrix<float> random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed,
                                       float lo = -1.f, float hi = 1.f) {
    t2::matrix<float> m(rows, cols);
    const t2::philox rng(seed);
    for (std::size_t i = 0; i < m.size(); ++i)
        m[i] = rng.uniform(i, lo, hi);
    return m;
}

// One pool per thread count, made once: creating threads is not what is measured.
inline t2::exec::thread_pool& pool(std::size_t threads) {
    static std::vector<std::unique_ptr<t2::exec::thread_pool>> pools;
    if (pools.size() <= threads)
        pools.resize(threads + 1);
    if (!pools[threads])
        pools[threads] = std::make_unique<t2::exec::thread_pool>(threads);
    return *pools[threads];
}

// --- the end-to-end programs (bench_generate, bench_train) ---------------------------------

// The tinyllamas shapes (vocab 32000, tied classifier, MHA), with random weights in use.
struct named_config {
    const char* name;
    t2::nn::llama_config config;
};

inline t2::nn::llama_config tinyllama(std::size_t dim, std::size_t hidden, std::size_t layers, std::size_t heads) {
    t2::nn::llama_config c;
    c.dim = dim;
    c.hidden_dim = hidden;
    c.n_layers = layers;
    c.n_heads = c.n_kv_heads = heads;
    c.vocab_size = 32000;
    c.seq_len = 1024;
    return c;
}

// stories260K's shape: the pretrained model in ../shared/models (GQA, its own 512-token
// vocabulary), tiny enough that per-call costs, not bandwidth, bound its speed.
inline t2::nn::llama_config stories260k() {
    t2::nn::llama_config c = tinyllama(64, 172, 5, 8);
    c.n_kv_heads = 4;
    c.vocab_size = 512;
    c.seq_len = 512;
    return c;
}

inline const std::array<named_config, 4>& tinyllamas() {
    static const std::array<named_config, 4> all{{{"stories260K", stories260k()},
                                                  {"stories15M", tinyllama(288, 768, 6, 6)},
                                                  {"stories42M", tinyllama(512, 1376, 8, 8)},
                                                  {"stories110M", tinyllama(768, 2048, 12, 12)}}};
    return all;
}

inline const t2::nn::llama_config* find_tinyllama(std::string_view name) {
    for (const auto& c : tinyllamas())
        if (name == c.name)
            return &c.config;
    return nullptr;
}

// A bad command line: one line on stderr, exit status 2.
[[noreturn]] inline void usage_failure(const char* program, const std::string& message) {
    std::fprintf(stderr, "%s: %s\n", program, message.c_str());
    std::exit(2);
}

inline std::vector<std::string> split(const std::string& text) {
    std::vector<std::string> out;
    std::size_t at = 0;
    while (at <= text.size()) {
        const std::size_t comma = std::min(text.find(',', at), text.size());
        out.push_back(text.substr(at, comma - at));
        at = comma + 1;
    }
    return out;
}

// A whole number in [1, 10⁶] given for `flag`, else a usage failure.
inline std::size_t parse_count(const char* program, const std::string& flag, const std::string& text) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || text[0] == '-' || v == 0 || v > 1000000)
        usage_failure(program, flag + " wants a positive whole number, got '" + text + "'");
    return std::size_t(v);
}

inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

} // namespace t2_bench
