// Parity with an independent implementation. tests/parity/llama_reference.py is a Llama
// written in PyTorch (its own ops, float64, no t2 code); it writes random-weight checkpoints
// of several shapes (MHA, GQA, MQA, untied classifier, odd sizes, non-default eps and RoPE
// base) in every format t2 reads, plus stories260K (the published file, llama.cpp's GGUF
// conversion and re-exports), and the reference logits of every position. t2 loads each file
// with its reader (and io::load_checkpoint must recognise the format) and must agree with the
// reference at every logit,
//   |t2[t, j] − ref[t, j]| ≤ (γ̃_N + ρ_rope)·s_j + u·|ref[t, j]|,
// in prefill on exec::scalar and exec::threads<exec::simd<>>, and in token-by-token decoding
// through the KV cache: support/tolerance.hpp's model argument (comments 2 and 3) puts one
// f32 evaluation within γ̃_N·s_j of the exact logit (half of logit_order_tolerance, which is
// for two f32 evaluations), the reference's exact RoPE angles against t2's f32 ones add
// ρ_rope (rope_angle_error; both in logit_reference_tolerance), and the float64 reference's
// own error (~N·2⁻⁵³ relative) is below the u·|ref| allowed for reading it in f32. Quantized and half-precision files are
// compared with a reference that uses the weights as stored (dequantized exactly as the format
// defines; f16 × int8 is exact in f32, so t2's weights are the reference's). The worst ratio
// of error to bound of each case is printed.
//
// The script runs once for all cases (one torch import, about 2 s) and writes its files into
// T2_TEST_TMP_DIR/parity_torch, with manifest.txt listing them (tab-separated). Without a
// Python that can import torch the tests fail, saying so: CI installs Debian's python3-torch.
// T2_PYTHON in the environment overrides /usr/bin/python3.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>


#include "support/check.hpp"
#include "support/python_reference.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"
#include "t2/io/gguf.hpp"
#include "t2/io/huggingface.hpp"
#include "t2/io/llama2c.hpp"
#include "t2/io/load.hpp"

namespace {

namespace fs = std::filesystem;
using model_type = t2::nn::llama<t2::nn::llama_config>;

const std::string script =
    fs::path(T2_TEST_DATA_DIR "/../parity/llama_reference.py").lexically_normal().string();

struct parity_case {
    std::string name, format, path, logits;
    std::vector<std::int32_t> tokens;
};

struct reference_set {
    std::vector<parity_case> cases;
    std::string error; // why the script could not produce them
    double seconds = 0;
};

std::vector<std::int32_t> parse_tokens(const std::string& text) {
    std::vector<std::int32_t> ids;
    std::istringstream in(text);
    for (std::string id; std::getline(in, id, ',');)
        ids.push_back(static_cast<std::int32_t>(std::stol(id)));
    return ids;
}

reference_set run_reference() {
    reference_set set;
    const fs::path dir = fs::path(T2_TEST_TMP_DIR) / "parity_torch";
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir);
    const auto run = t2_test::run_python_script(
        script,
        "batch --dir " + t2_test::shell_quoted(dir.string()) + " --stories " +
            t2_test::shell_quoted(std::string(T2_SHARED_MODELS_DIR) + "/stories260K.bin"),
        dir / "python.log");
    set.seconds = run.seconds;
    if (!run.error.empty()) {
        set.error = run.error;
        return set;
    }
    std::ifstream manifest(dir / "manifest.txt");
    for (std::string line; std::getline(manifest, line);) {
        if (line.empty() || line[0] == '#')
            continue;
        std::vector<std::string> fields;
        std::istringstream in(line);
        for (std::string field; std::getline(in, field, '\t');)
            fields.push_back(field);
        if (fields.size() != 5 || fields[4].empty()) {
            set.error = (dir / "manifest.txt").string() + ": malformed line: " + line;
            return set;
        }
        set.cases.push_back({fields[0], fields[1], fields[2], fields[3], parse_tokens(fields[4])});
    }
    if (set.cases.empty())
        set.error = (dir / "manifest.txt").string() + " lists no cases";
    return set;
}

// The script runs once per test program, for every test case below.
const reference_set& references() {
    static const reference_set set = run_reference();
    return set;
}

t2::io::checkpoint load(const parity_case& c) {
    if (c.format.starts_with("llama2c"))
        return t2::io::read_llama2c(c.path);
    if (c.format.starts_with("gguf"))
        return t2::io::read_gguf(c.path);
    if (c.format.starts_with("hf"))
        return t2::io::read_huggingface(c.path);
    throw std::runtime_error(c.name + ": unknown format " + c.format);
}

// Logits [T × vocab] of every position, from one prefill call.
template <class E>
std::vector<float> prefill(const E& ex, const model_type& model, const std::vector<std::int32_t>& tokens) {
    auto state = model.make_state();
    const auto logits = model.forward(ex, state, tokens, t2::nn::logits_for::all);
    return {logits.data(), logits.data() + logits.size()};
}

// The same, one token per call (decoding through the KV cache).
template <class E>
std::vector<float> decode(const E& ex, const model_type& model, const std::vector<std::int32_t>& tokens) {
    auto state = model.make_state();
    std::vector<float> all;
    for (const std::int32_t& token : tokens) {
        const auto logits = model.forward(ex, state, std::span<const std::int32_t>(&token, 1));
        all.insert(all.end(), logits.data(), logits.data() + logits.size());
    }
    return all;
}

// Per logit [T × vocab]: one f32 evaluation against the float64 reference (the top of this file).
std::vector<double> logit_bounds(const model_type& model, const t2_test::npy_array& ref) {
    const std::size_t T = ref.shape[0], V = ref.shape[1];
    const std::vector<float> per_logit = t2_test::logit_reference_tolerance(model, T);
    std::vector<double> bound(T * V);
    for (std::size_t t = 0; t < T; ++t)
        for (std::size_t j = 0; j < V; ++j)
            bound[t * V + j] = double(per_logit[j]) + t2_test::unit_roundoff * std::abs(ref.data[t * V + j]);
    return bound;
}

t2_test::bounded_comparison compare(const std::vector<float>& got, const t2_test::npy_array& ref,
                                    const std::vector<double>& bound) {
    const std::size_t T = ref.shape[0], V = ref.shape[1];
    if (got.size() != T * V)
        throw std::runtime_error("t2 returned " + std::to_string(got.size()) + " logits, expected " +
                                 std::to_string(T * V));
    return t2_test::compare_within(std::span<const float>(got), ref.data, bound);
}

std::string formatted(double e) {
    std::ostringstream s;
    s << std::scientific << std::setprecision(2) << e;
    return s.str();
}

// Checks one case on every executor; returns a line for the summary.
std::string check_case(const parity_case& c) {
    CAPTURE(c.name);
    CAPTURE(c.path);
    const t2_test::npy_array ref = t2_test::read_npy(c.logits);
    auto ck = load(c);
    // io::load_checkpoint recognises the format by content.
    CHECK(t2::io::load_checkpoint(c.path).format == ck.format);
    // The file holds what the case claims to test (a fallback to f32 would pass trivially).
    for (const std::string dtype : {"f16", "bf16", "q8_0"})
        if (c.format.ends_with("-" + dtype)) {
            INFO("no tensor of " << c.path << " is stored as " << dtype);
            CHECK(std::any_of(ck.tensors.begin(), ck.tensors.end(),
                              [&](const auto& t) { return t.dtype == dtype; }));
        }
    if (ref.shape.size() != 2 || ref.shape[0] != c.tokens.size() || ref.shape[1] != ck.config.vocab_size)
        throw std::runtime_error(c.logits + " is not [" + std::to_string(c.tokens.size()) + " x " +
                                 std::to_string(ck.config.vocab_size) + "] (tokens x vocabulary)");
    const model_type model(ck.config, std::move(ck.weights));
    const std::vector<double> bound = logit_bounds(model, ref);

    std::string line = c.name + ":";
    const auto check = [&](const std::string& how, const std::vector<float>& got) {
        const auto e = compare(got, ref, bound);
        const std::size_t V = ref.shape[1];
        INFO(c.name << ", " << how << ": worst position " << e.worst_index / V << " of " << c.tokens.size()
                    << ", logit " << e.worst_index % V << ": t2 " << e.got << ", reference " << e.want
                    << ", |difference| is " << e.worst_ratio << " of its bound " << e.bound);
        CHECK(e.ok);
        line += " " + how + " " + formatted(e.worst_ratio);
    };
    check("scalar", prefill(t2::exec::scalar{}, model, c.tokens));
#if T2_ENABLE_SIMD
    const t2::exec::threads<t2::exec::simd<>> fast(t2_test::test_pool(2));
    check("threads<simd>", prefill(fast, model, c.tokens));
    check("decode threads<simd>", decode(fast, model, c.tokens));
#else
    const t2::exec::threads<t2::exec::scalar> fast(t2_test::test_pool(2));
    check("threads<scalar>", prefill(fast, model, c.tokens));
    check("decode threads<scalar>", decode(fast, model, c.tokens));
#endif
    return line;
}

// Runs every case whose name starts with one of the prefixes, after checking that the
// expected ones are all there (a case the script stopped writing must not pass unnoticed).
void check_cases(const std::vector<std::string>& prefixes, const std::vector<std::string>& expected) {
    const reference_set& set = references();
    if (!set.error.empty())
        FAIL(set.error);
    std::vector<const parity_case*> selected;
    for (const auto& c : set.cases)
        for (const auto& p : prefixes)
            if (c.name.starts_with(p)) {
                selected.push_back(&c);
                break;
            }
    for (const auto& name : expected) {
        INFO("the reference script wrote no case " << name);
        CHECK(std::any_of(selected.begin(), selected.end(), [&](auto* c) { return c->name == name; }));
    }
    std::ostringstream summary;
    summary << "worst |t2 - ref| / bound over the logits (PyTorch reference: " << std::fixed
            << std::setprecision(1) << set.seconds << " s)\n";
    for (const parity_case* c : selected) {
        try {
            const std::string line = check_case(*c);
            summary << "  " << line << "\n";
        } catch (const std::exception& e) { // a reader's t2::error, a bad file: the next case runs
            FAIL_CHECK(c->name << " (" << c->path << "): " << std::string(e.what()));
            summary << "  " << c->name << ": failed\n";
        }
    }
    MESSAGE(summary.str());
}

std::vector<std::string> product(const std::vector<std::string>& formats, const std::vector<std::string>& shapes) {
    std::vector<std::string> names;
    for (const auto& f : formats)
        for (const auto& s : shapes)
            names.push_back(f + "-" + s);
    return names;
}

const std::vector<std::string> all_shapes = {"mha", "gqa", "mqa", "odd", "theta"};
const std::vector<std::string> llama2c_shapes = {"mha", "gqa", "mqa", "odd"}; // default eps, theta

} // namespace

TEST_CASE("parity with PyTorch: llama2.c checkpoints (legacy, v1 f32, v2 Q8_0)") {
    check_cases({"llama2c-"}, product({"llama2c-v0", "llama2c-v1", "llama2c-v2"}, llama2c_shapes));
}

TEST_CASE("parity with PyTorch: GGUF v3 (F32, F16, BF16, Q8_0)") {
    auto expected = product({"gguf", "gguf-f16", "gguf-bf16"}, all_shapes);
    for (const auto& name : product({"gguf-q8_0"}, {"mha", "gqa", "mqa"})) // whole Q8_0 blocks
        expected.push_back(name);
    check_cases({"gguf-"}, expected);
}

TEST_CASE("parity with PyTorch: Hugging Face safetensors (F32, BF16, F16, sharded)") {
    check_cases({"hf-"}, product({"hf", "hf-bf16", "hf-f16", "hf-sharded"}, all_shapes));
}

TEST_CASE("parity with PyTorch: stories260K as published, as GGUF, re-exported") {
    check_cases({"stories260K"}, {"stories260K", "stories260K-gguf", "stories260K-llama2c-v2",
                                  "stories260K-hf", "stories260K-gguf-q8_0"});
}
