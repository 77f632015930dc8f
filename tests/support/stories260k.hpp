#pragma once
// The real stories260K model with all its matrices decomposed, loaded once per test program.
#include <string>
#include <utility>

#include "t2/adapt/decomposition.hpp"
#include "t2/io/llama2c.hpp"

namespace t2_test {

struct decomposed_stories {
    t2::nn::llama_config config;
    t2::nn::llama_weights<t2::nn::dense<float>> weights;
    t2::adapt::decomposition decomposition;
};

inline const decomposed_stories& decomposed_stories260k() {
    static const decomposed_stories s = [] {
        auto ck = t2::io::read_llama2c(std::string(T2_SHARED_MODELS_DIR) + "/stories260K.bin");
        auto d = t2::adapt::decompose(t2::exec::scalar{}, ck.config, ck.weights, t2::adapt::selection::all());
        return decomposed_stories{ck.config, std::move(ck.weights), std::move(d)};
    }();
    return s;
}

} // namespace t2_test
