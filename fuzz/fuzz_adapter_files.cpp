// libFuzzer target for t2's decomposition, expert and router files (include/t2/io/adapter_files.hpp)
// and training checkpoints (include/t2/io/training_checkpoint.hpp): safetensors with t2's
// metadata, validated tensor by tensor.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude fuzz/fuzz_adapter_files.cpp -o fuzz_adapter_files
//   ./fuzz_adapter_files -max_total_time=60 fuzz/corpus/adapter_files
//
// Every input either reads or throws t2::error. A decomposition that reads drives an SVF
// matrix with an adapter state (prepare, forward, backward); an expert that reads is written
// back and read again, which must give the same expert; so is a checkpoint that reads; a
// router that reads routes a hidden state.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <unistd.h>
#include <vector>

#include "t2/adapt/svf.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/io/adapter_files.hpp"
#include "t2/io/training_checkpoint.hpp"

namespace {

namespace io = t2::io;

void exercise(const t2::adapt::decomposition& d) {
    const t2::exec::scalar ex;
    for (const auto& m : d.matrices) {
        if (m.factors.u.extent(0) * m.factors.v.extent(0) > (1u << 16))
            continue; // the readers are what is fuzzed, not large products
        const t2::adapt::svf w(m.factors);
        // One matrix's adapter state, z = 0.5, viewing these vectors.
        std::vector<float> z(w.rank(), 0.5f), gradient(w.rank(), 0.f);
        t2::adapt::svf_state s;
        s.parameters = z;
        s.gradient = gradient;
        w.prepare(ex, s, 1); // composes W' where that is cheaper for one token
        t2::matrix<float> x(2, w.in_features()), y(2, w.out_features()), dx(2, w.in_features());
        std::vector<float> scratch(std::max(w.scratch_floats(2), w.backward_scratch_floats(2)));
        const t2::nn::adapter_rows<t2::adapt::svf_state> rows{0, 2, &s};
        w.forward(ex, x.view(), y.view(), std::span(&rows, 1), scratch);
        w.backward(ex, x.view(), y.view(), dx.view(), &s, scratch);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
    std::shared_ptr<const io::safetensors_file> file;
    try {
        file = std::make_shared<const io::safetensors_file>(bytes, "fuzz.safetensors");
    } catch (const t2::error&) {
        return 0;
    }
    try {
        exercise(io::read_decomposition(file));
    } catch (const t2::error&) {
    }
    try {
        const t2::adapt::expert e = io::read_expert(*file);
        static const std::string path =
            (std::filesystem::temp_directory_path() / ("t2_fuzz_expert_" + std::to_string(::getpid()))).string();
        io::write_expert(path, e);
        const t2::adapt::expert again = io::read_expert(path);
        if (again.z != e.z || again.task != e.task || again.training != e.training || again.rescale != e.rescale ||
            again.base_model_hash != e.base_model_hash)
            __builtin_trap();
    } catch (const t2::error&) {
    }
    try {
        const io::router_file r = io::read_router(*file);
        std::vector<float> h(r.router.config().dim, 0.25f), alpha(r.router.config().experts);
        if (h.size() * r.router.config().key_dim <= (1u << 16))
            r.router.forward(h, alpha);
    } catch (const t2::error&) {
    }
    try {
        const io::training_checkpoint ck = io::read_training_checkpoint(*file);
        static const std::string path =
            (std::filesystem::temp_directory_path() / ("t2_fuzz_checkpoint_" + std::to_string(::getpid()))).string();
        io::write_training_checkpoint(path, ck.parameters, ck.optimizer_state, ck.loop, ck.extra);
        const io::training_checkpoint again = io::read_training_checkpoint(path);
        const auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
            return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                              [](float x, float y) { return x == y || (std::isnan(x) && std::isnan(y)); });
        };
        const bool same_score = again.loop.best_score == ck.loop.best_score ||
                                (std::isnan(again.loop.best_score) && std::isnan(ck.loop.best_score));
        if (!same(again.parameters, ck.parameters) || !same(again.optimizer_state, ck.optimizer_state) ||
            !same(again.loop.best_parameters, ck.loop.best_parameters) || again.loop.step != ck.loop.step ||
            again.loop.best_step != ck.loop.best_step || !same_score || again.extra != ck.extra)
            __builtin_trap();
    } catch (const t2::error&) {
    }
    return 0;
}
