// Parity of t2's adapter gradients with PyTorch autograd. tests/parity/grad_reference.py
// builds the adapted weights from their definitions in float64 torch (SVF: U diag(σ⊙z·c) Vᵀ
// from t2's decomposition file, z the parameters or, parametrized by sigmoid, z = sigmoid(θ);
// mixtures: z = Σ_k α_k z_k over frozen experts z_k; LoRA: W + (α/r)·B A), runs a Llama
// forward of its own, takes the loss and calls backward. t2's nn::forward_backward (float32)
// with the case's adapter state (adapt::make_svf_adapter, make_mixture_adapter,
// make_lora_adapter) on the frozen model must agree, on exec::scalar and
// exec::threads<exec::simd<>>, in the loss and in every gradient tensor the adapter holds
// (dL/dz or dL/dθ of each matrix, dL/dα of a mixture, dL/dA and dL/dB of each LoRA matrix,
// read from adapter.gradient(name)), normwise per tensor, within bounds derived from the
// computation (evaluate's comment, after support/tolerance.hpp's model argument): the loss
// through what its rows' dL/dlogits see of the classifier input's relative error; each
// gradient tensor through the forward, loss and backward chains, relative to the magnitudes
// of the loss rows' shares of it, which t2 computes one row at a time (cancellation between
// rows is measured, not assumed). The gradient without its largest row's share (a masking
// slip) must exceed the bound: it does so by two orders of magnitude.
// Models: stories260K, and random weights (GQA with an untied classifier, MQA, rotate-halves
// RoPE) written as llama2.c files so that the reference reads the same f32 weights.
// Losses: one sequence with the masked mean next-token cross-entropy, the mask leaving a
// prompt out (its first positions weigh 0); and batches of 3 sequences of unequal lengths
// (training_batch) with nn::reinforce (signed rewards, the prompts' rows masked out) plus
// nn::kl_to_base in either direction, whose base logits t2 takes from nn::batch_logits of the
// adapted model without an adapter (nullptr), which runs the dense base matrices exactly, an
// SVF model's decomposed ones too (checked, to the bit, against the dense model's), and the
// reference from its own float64 forward of the checkpoint's dense weights. A batch case
// checks the sum as above and each term on its own against the reference's value and
// gradient of that term alone, so that a term small beside the other (the KL near the base)
// is checked too, against bounds from its own rows.
//
// t2 writes every case's inputs (case.txt, parameters as .npy) under
// T2_TEST_TMP_DIR/parity_grad, runs the script once for all of them (one torch import), and
// reads its float64 .npy gradients back. Without a Python that can import torch the tests
// fail, saying so; T2_PYTHON in the environment overrides /usr/bin/python3.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>


#include "support/check.hpp"
#include "support/python_reference.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"
#include "t2/adapt/model.hpp"
#include "t2/io/adapter_files.hpp"
#include "t2/io/llama2c.hpp"
#include "t2/io/npy.hpp"
#include "t2/nn/backprop.hpp"
#include "t2/nn/random_init.hpp"

namespace {

namespace fs = std::filesystem;
using t2::nn::llama_config;
using dense_weights = t2::nn::llama_weights<t2::nn::dense<float>>;


const std::string script =
    fs::path(T2_TEST_DATA_DIR "/../parity/grad_reference.py").lexically_normal().string();

// A base model as t2 holds it, and the llama2.c file the reference reads it from.
struct base_model {
    std::string name;
    llama_config config;
    dense_weights weights;
    std::string path;
    std::string layout; // "interleaved" | "halves", as the reference calls them
    std::vector<std::int32_t> tokens;
    std::vector<float> mask; // one weight per prediction, tokens.size() − 1
};

enum class adapter { svf, mixture, lora };

// A batch loss: nn::reinforce{rewards, mask} + nn::kl_to_base{base logits, coefficient,
// kl_weights, direction} over B packed sequences.
struct batch_loss {
    std::vector<std::vector<std::int32_t>> sequences;
    std::vector<float> mask;    // one weight per packed row: 0 on each sequence's prompt rows
    std::vector<float> rewards; // one per sequence
    float kl_coefficient = 0.2f;
    std::vector<float> kl_weights; // one per row, or empty (all 1)
    t2::ops::kl_direction direction = t2::ops::kl_direction::base_to_adapted;
};

struct grad_case {
    std::string name;
    adapter kind = adapter::svf;
    std::shared_ptr<const base_model> model;
    fs::path dir;
    // svf and mixture
    t2::adapt::decomposition decomposition;
    bool rescale = false;
    // svf: z (or θ, sigmoid) are the parameters
    t2::adapt::svf_parametrization parametrization = t2::adapt::svf_parametrization::z;
    std::vector<std::vector<float>> z;      // svf: z or θ, one per decomposed matrix, in its order
    std::vector<t2::adapt::expert> experts; // mixture
    std::vector<float> alpha;               // mixture: [K] or [n_layers × K]
    // lora
    std::string selection;
    t2::adapt::lora_options lora;
    std::vector<std::pair<std::string, std::pair<t2::matrix<float>, t2::matrix<float>>>> ab; // A, B
    // With a batch loss, its sequences replace the model's one and its loss the masked mean CE.
    std::optional<batch_loss> batch;
};

struct reference_set {
    std::vector<grad_case> cases;
    std::string error; // why there are none
    double seconds = 0; // the script's run time
};

template <class T>
std::string joined(const std::vector<T>& values) {
    std::ostringstream s;
    s << std::setprecision(9);
    for (std::size_t i = 0; i < values.size(); ++i)
        s << (i ? "," : "") << values[i];
    return s.str();
}

// Predictions [0, prompt) weigh 0, the rest 1.
std::vector<float> prompt_mask(std::size_t tokens, std::size_t prompt) {
    std::vector<float> m(tokens - 1, 1.f);
    std::fill(m.begin(), m.begin() + static_cast<std::ptrdiff_t>(prompt), 0.f);
    return m;
}

std::vector<float> uniform(std::size_t n, std::uint64_t seed, float lo, float hi) {
    std::vector<float> v(n);
    t2_test::fill_uniform(v, seed, lo, hi);
    return v;
}

// The decomposed matrices a selection picks out of a larger decomposition.
t2::adapt::decomposition subset(const t2::adapt::decomposition& d, const t2::adapt::selection& s) {
    t2::adapt::decomposition out{d.base_model_hash, s.text(), {}};
    for (const auto& m : d.matrices)
        if (s.contains(m.slot))
            out.matrices.push_back(m);
    return out;
}

// stories260K as published, with run.c's greedy continuation of "The dog ran" (48 tokens,
// the sequence of test_parity_torch); the first 5 predictions are the prompt's.
std::shared_ptr<base_model> stories260k() {
    const std::string path = T2_SHARED_MODELS_DIR "/stories260K.bin";
    auto ck = t2::io::read_llama2c(path);
    auto m = std::make_shared<base_model>();
    m->name = "stories260K";
    m->config = ck.config;
    m->weights = std::move(ck.weights);
    m->path = path;
    m->layout = "interleaved";
    m->tokens = {1,   291, 400, 428, 352, 303, 267, 265, 282, 295, 433, 335, 345, 357, 426, 342,
                 397, 355, 267, 337, 335, 265, 315, 267, 422, 419, 426, 342, 397, 355, 267, 337,
                 335, 265, 315, 267, 422, 419, 269, 352, 379, 261, 420, 277, 264, 265, 282, 295};
    m->mask = prompt_mask(m->tokens.size(), 5);
    return m;
}

// Random weights written as a legacy llama2.c file. A rotate-halves model is stored with the
// same bytes (llama2.c has no layout field) and the reference told its layout.
std::shared_ptr<base_model> random_model(const std::string& name, const llama_config& c, std::uint64_t seed,
                                         const fs::path& dir) {
    auto m = std::make_shared<base_model>();
    m->name = name;
    m->config = c;
    m->weights = t2::nn::random_weights(c, seed);
    m->path = (dir / (name + ".bin")).string();
    m->layout = c.rope_layout == t2::ops::rope_layout::halves ? "halves" : "interleaved";
    llama_config stored = c;
    stored.rope_layout = t2::ops::rope_layout::interleaved;
    t2::io::write_llama2c(m->path, stored, m->weights);
    m->tokens = t2_test::random_tokens(c.seq_len + 1, c.vocab_size, seed + 1);
    m->mask = prompt_mask(m->tokens.size(), 3);
    return m;
}

bool sigmoid(const grad_case& c) { return c.parametrization == t2::adapt::svf_parametrization::sigmoid; }

// The name of an SVF case's parameters of one matrix, as the reference names them: the
// parameters' file in in/ and their gradient's in out/.
std::string svf_parameter(const grad_case& c, const std::string& matrix) {
    return matrix + (sigmoid(c) ? ".theta" : ".z");
}

void save(const fs::path& path, std::span<const float> values, std::vector<std::size_t> shape) {
    t2::io::write_npy(path.string(), values, shape);
}

// Writes the case's directory: case.txt and the parameters in in/.
void write_inputs(const grad_case& c) {
    const base_model& m = *c.model;
    fs::create_directories(c.dir / "in");
    std::ofstream spec(c.dir / "case.txt");
    spec << "# written by test_parity_grad for " << c.name << "\n";
    spec << "kind\t" << (c.kind == adapter::svf ? "svf" : c.kind == adapter::mixture ? "mixture" : "lora") << "\n";
    spec << "checkpoint\t" << m.path << "\nlayout\t" << m.layout << "\n";
    if (c.batch) {
        const batch_loss& b = *c.batch;
        spec << "sequences\t";
        for (std::size_t i = 0; i < b.sequences.size(); ++i)
            spec << (i ? ";" : "") << joined(b.sequences[i]);
        spec << "\nmask\t" << joined(b.mask) << "\nloss\treinforce,kl\nrewards\t" << joined(b.rewards)
             << "\nkl_coefficient\t" << std::setprecision(9) << b.kl_coefficient << "\nkl_direction\t"
             << (b.direction == t2::ops::kl_direction::base_to_adapted ? "base_to_adapted" : "adapted_to_base")
             << "\n";
        if (!b.kl_weights.empty())
            spec << "kl_weights\t" << joined(b.kl_weights) << "\n";
    } else {
        spec << "tokens\t" << joined(m.tokens) << "\nmask\t" << joined(m.mask) << "\n";
    }
    const fs::path in = c.dir / "in";
    if (c.kind == adapter::lora) {
        std::vector<std::string> names;
        for (const auto& [name, ab] : c.ab) {
            names.push_back(name);
            save(in / (name + ".A.npy"), ab.first.span(), {ab.first.extent(0), ab.first.extent(1)});
            save(in / (name + ".B.npy"), ab.second.span(), {ab.second.extent(0), ab.second.extent(1)});
        }
        spec << "matrices\t" << joined(names) << "\nlora_alpha\t" << std::setprecision(9) << c.lora.alpha
             << "\nlora_rank\t" << c.lora.rank << "\n";
        return;
    }
    const fs::path decomposition = c.dir / "decomposition.safetensors";
    t2::io::write_decomposition(decomposition.string(), c.decomposition);
    spec << "decomposition\t" << decomposition.string() << "\nrescale\t" << (c.rescale ? 1 : 0) << "\n";
    const auto& matrices = c.decomposition.matrices;
    if (c.kind == adapter::svf) {
        // Only the sigmoid parametrization is written: the reference's default is z, so the
        // z cases' case.txt are as before this field existed.
        if (sigmoid(c))
            spec << "parametrization\tsigmoid\n";
        for (std::size_t i = 0; i < matrices.size(); ++i)
            save(in / (svf_parameter(c, matrices[i].name) + ".npy"), c.z[i], {c.z[i].size()});
        return;
    }
    const std::size_t K = c.experts.size();
    for (const auto& mat : matrices) {
        std::vector<float> rows;
        for (const auto& e : c.experts) {
            const auto* z = e.find(mat.name);
            rows.insert(rows.end(), z->begin(), z->end());
        }
        save(in / (mat.name + ".experts.npy"), rows, {K, mat.factors.rank()});
    }
    if (c.alpha.size() == K)
        save(in / "alpha.npy", c.alpha, {K});
    else
        save(in / "alpha.npy", c.alpha, {m.config.n_layers, K});
}

// z uniform in [1 − spread, 1 + spread].
grad_case svf_case(std::string name, std::shared_ptr<const base_model> m, t2::adapt::decomposition d, bool rescale,
                   std::uint64_t seed, float spread = 0.5f) {
    grad_case c;
    c.name = std::move(name);
    c.kind = adapter::svf;
    c.model = std::move(m);
    c.decomposition = std::move(d);
    c.rescale = rescale;
    for (const auto& mat : c.decomposition.matrices)
        c.z.push_back(uniform(mat.factors.rank(), seed++, 1.f - spread, 1.f + spread));
    return c;
}

// The sigmoid parametrization, z = sigmoid(θ): θ uniform in [center − spread, center + spread].
grad_case sigmoid_case(std::string name, std::shared_ptr<const base_model> m, t2::adapt::decomposition d,
                       bool rescale, std::uint64_t seed, float center, float spread) {
    grad_case c = svf_case(std::move(name), std::move(m), std::move(d), rescale, seed, spread);
    c.parametrization = t2::adapt::svf_parametrization::sigmoid;
    for (auto& theta : c.z)
        for (float& t : theta)
            t += center - 1.f;
    return c;
}

grad_case mixture_case(std::string name, std::shared_ptr<const base_model> m, t2::adapt::decomposition d,
                       bool rescale, bool per_layer, std::uint64_t seed) {
    constexpr std::size_t K = 3;
    grad_case c;
    c.name = std::move(name);
    c.kind = adapter::mixture;
    c.model = std::move(m);
    c.decomposition = std::move(d);
    c.rescale = rescale;
    c.experts.resize(K);
    for (auto& e : c.experts) {
        e.base_model_hash = c.decomposition.base_model_hash;
        e.rescale = rescale;
        for (const auto& mat : c.decomposition.matrices)
            e.z.emplace_back(mat.name, uniform(mat.factors.rank(), seed++, 0.f, 2.f));
    }
    c.alpha = uniform(per_layer ? c.model->config.n_layers * K : K, seed, 0.1f, 0.6f);
    return c;
}

// LoRA with make_lora_adapter's fresh A and a nonzero B (B = 0 would make dL/dA vanish).
grad_case lora_case(std::string name, std::shared_ptr<const base_model> m, std::string selection,
                    t2::adapt::lora_options options, std::uint64_t seed) {
    grad_case c;
    c.name = std::move(name);
    c.kind = adapter::lora;
    c.model = std::move(m);
    c.selection = std::move(selection);
    c.lora = options;
    const auto model = t2::adapt::make_lora_model(c.model->config, c.model->weights);
    const auto fresh = t2::adapt::make_lora_adapter(model, t2::adapt::selection::parse(c.selection), options, seed);
    for (std::size_t l = 0; l < c.model->config.n_layers; ++l)
        for (const auto p : t2::nn::all_projections) {
            const t2::adapt::lora_state& s = fresh.matrix(l, std::size_t(p));
            if (!s.active())
                continue;
            const std::size_t in = s.a.size() / s.rank, out = s.b.size() / s.rank;
            t2::matrix<float> a(s.rank, in), b(out, s.rank);
            std::copy(s.a.begin(), s.a.end(), a.data());
            t2_test::fill_uniform(b.span(), seed + 1000 * l + std::size_t(p), -0.3f, 0.3f);
            c.ab.emplace_back(t2::nn::matrix_name(l, p), std::make_pair(std::move(a), std::move(b)));
        }
    return c;
}

// The case with a batch loss instead: the sequences (of unequal lengths), the first
// prompt_rows[b] rows of sequence b masked out of REINFORCE, rewards +1, −1, 0.5, and the KL
// to the base in the direction given, on every row or (kl_on_answers) on the answer rows only.
grad_case with_batch(grad_case c, std::vector<std::vector<std::int32_t>> sequences,
                     const std::vector<std::size_t>& prompt_rows, t2::ops::kl_direction direction,
                     bool kl_on_answers = false) {
    batch_loss b;
    for (std::size_t i = 0; i < sequences.size(); ++i) {
        const auto m = prompt_mask(sequences[i].size(), prompt_rows[i]);
        b.mask.insert(b.mask.end(), m.begin(), m.end());
    }
    b.sequences = std::move(sequences);
    b.rewards = {1.f, -1.f, 0.5f};
    b.direction = direction;
    if (kl_on_answers)
        b.kl_weights = b.mask;
    c.batch = std::move(b);
    return c;
}

// Every case's inputs, the script's run over all of them.
reference_set prepare() {
    reference_set set;
    const fs::path dir = fs::path(T2_TEST_TMP_DIR) / "parity_grad";
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir);
    const t2::exec::threads<t2::exec::scalar> ex(t2_test::test_pool(2));
    try {
        const auto stories = stories260k();
        const auto all = t2::adapt::decompose(ex, stories->config, stories->weights, t2::adapt::selection::all());
        set.cases.push_back(svf_case("stories260K-svf-mlp-rescale", stories,
                                     subset(all, t2::adapt::selection::mlp()), true, 100));
        set.cases.push_back(svf_case("stories260K-svf-all", stories, all, false, 200));
        set.cases.push_back(mixture_case("stories260K-mixture-attn-per-layer-rescale", stories,
                                         subset(all, t2::adapt::selection::attention()), true, true, 300));
        set.cases.push_back(lora_case("stories260K-lora-qv", stories, R"(.*\.attention\.w[qv])",
                                      {.rank = 4, .alpha = 8.f}, 400));
        // The sigmoid parametrization far from its start: θ in ±1.5, z in [0.18, 0.82].
        set.cases.push_back(sigmoid_case("stories260K-svf-sigmoid-all-rescale", stories, all, true, 450, 0.f, 1.5f));

        // Batches of 9, 5 and 13 tokens: pieces of the story, each from BOS; z = 1 ± 0.1 (z = 1
        // would be the base model, where the KL and its gradient vanish).
        using t2::ops::kl_direction;
        const auto piece = [&](std::size_t from, std::size_t n) {
            std::vector<std::int32_t> s{1};
            s.insert(s.end(), stories->tokens.begin() + static_cast<std::ptrdiff_t>(from),
                     stories->tokens.begin() + static_cast<std::ptrdiff_t>(from + n - 1));
            return s;
        };
        const std::vector<std::vector<std::int32_t>> story_batch{piece(1, 9), piece(20, 5), piece(30, 13)};
        const std::vector<std::size_t> story_prompts{3, 2, 4};
        set.cases.push_back(with_batch(svf_case("batch-stories260K-svf-all-kl-base-to-adapted", stories, all, false,
                                                500, 0.1f),
                                       story_batch, story_prompts, kl_direction::base_to_adapted));
        set.cases.push_back(with_batch(svf_case("batch-stories260K-svf-mlp-rescale-kl-adapted-to-base", stories,
                                                subset(all, t2::adapt::selection::mlp()), true, 600, 0.1f),
                                       story_batch, story_prompts, kl_direction::adapted_to_base));
        set.cases.push_back(with_batch(mixture_case("batch-stories260K-mixture-attn-kl-adapted-to-base", stories,
                                                    subset(all, t2::adapt::selection::attention()), false, false,
                                                    700),
                                       story_batch, story_prompts, kl_direction::adapted_to_base, true));
        set.cases.push_back(with_batch(lora_case("batch-stories260K-lora-qv-kl-base-to-adapted", stories,
                                                 R"(.*\.attention\.w[qv])", {.rank = 4, .alpha = 8.f}, 800),
                                       story_batch, story_prompts, kl_direction::base_to_adapted));
        // θ = 0.1 ± 0.2 around make_svf_adapter's start (θ = 0.1, z ≈ 0.52): with rescaling the
        // singular values move by about ±10%, as z = 1 ± 0.1 above (equal θ would be the base).
        set.cases.push_back(with_batch(sigmoid_case("batch-stories260K-svf-sigmoid-all-rescale-kl-adapted-to-base",
                                                    stories, all, true, 900, 0.1f, 0.2f),
                                       story_batch, story_prompts, kl_direction::adapted_to_base));

        const llama_config gqa{.dim = 48, .hidden_dim = 64, .n_layers = 2, .n_heads = 6, .n_kv_heads = 2,
                               .vocab_size = 37, .seq_len = 16, .shared_classifier = false};
        const llama_config mqa{.dim = 32, .hidden_dim = 40, .n_layers = 2, .n_heads = 4, .n_kv_heads = 1,
                               .vocab_size = 29, .seq_len = 12};
        const llama_config halves{.dim = 24, .hidden_dim = 36, .n_layers = 2, .n_heads = 3, .n_kv_heads = 3,
                                  .vocab_size = 31, .seq_len = 14, .rope_layout = t2::ops::rope_layout::halves,
                                  .shared_classifier = false};
        std::uint64_t seed = 1000;
        for (const auto& [name, config, per_layer] :
             {std::tuple{"gqa", gqa, false}, std::tuple{"mqa", mqa, true}, std::tuple{"halves", halves, false}}) {
            const auto m = random_model(name, config, seed, dir);
            const auto d = t2::adapt::decompose(ex, config, m->weights, t2::adapt::selection::all());
            const std::string prefix = std::string(name) + "-";
            set.cases.push_back(svf_case(prefix + "svf-all-rescale", m, d, true, seed + 10));
            if (std::string(name) == "gqa") // the sigmoid parametrization without rescaling
                set.cases.push_back(sigmoid_case(prefix + "svf-sigmoid-all", m, d, false, seed + 70, 0.f, 1.5f));
            set.cases.push_back(mixture_case(prefix + (per_layer ? "mixture-per-layer" : "mixture-global"), m, d,
                                             false, per_layer, seed + 20));
            set.cases.push_back(lora_case(prefix + "lora-all", m, "all", {.rank = 3, .alpha = 6.f}, seed + 30));
            // Batches of 9, 5 and 13 random tokens (13 fills the MQA model's context of 12).
            const std::vector<std::vector<std::int32_t>> sequences{
                t2_test::random_tokens(9, config.vocab_size, seed + 40),
                t2_test::random_tokens(5, config.vocab_size, seed + 41),
                t2_test::random_tokens(13, config.vocab_size, seed + 42)};
            const std::vector<std::size_t> prompts{3, 2, 4};
            set.cases.push_back(with_batch(svf_case("batch-" + prefix + "svf-all-rescale-kl-base-to-adapted", m, d,
                                                    true, seed + 50, 0.1f),
                                           sequences, prompts, t2::ops::kl_direction::base_to_adapted));
            set.cases.push_back(with_batch(lora_case("batch-" + prefix + "lora-all-kl-adapted-to-base", m, "all",
                                                     {.rank = 3, .alpha = 6.f}, seed + 60),
                                           sequences, prompts, t2::ops::kl_direction::adapted_to_base,
                                           /*kl_on_answers=*/std::string(name) == "mqa"));
            seed += 100;
        }
        std::ofstream manifest(dir / "manifest.txt");
        manifest << "# case directories, written by test_parity_grad\n";
        for (auto& c : set.cases) {
            c.dir = dir / c.name;
            write_inputs(c);
            manifest << c.dir.string() << "\n";
        }
    } catch (const std::exception& e) {
        set.error = std::string("preparing the cases failed: ") + e.what();
        set.cases.clear();
        return set;
    }

    const auto run = t2_test::run_python_script(
        script, "batch " + t2_test::shell_quoted((dir / "manifest.txt").string()), dir / "python.log");
    set.seconds = run.seconds;
    if (!run.error.empty()) {
        set.error = run.error;
        set.cases.clear();
    }
    return set;
}

// The inputs are written and the script runs once per test program.
const reference_set& references() {
    static const reference_set set = prepare();
    return set;
}

// t2's loss and gradients, named as the reference names them, with the bounds on their
// errors against the exact values (below): the loss's, and each gradient tensor's, normwise.
struct t2_result {
    double loss = 0, loss_bound = 0;
    std::vector<std::pair<std::string, std::vector<float>>> grads;
    std::vector<double> grad_bounds;
    std::vector<std::vector<double>> largest_row; // per tensor: the row share G_r of largest norm
};

// A result and the reference's out/ subdirectory it is compared with ("" for the loss itself).
using labelled_results = std::vector<std::pair<std::string, t2_result>>;

std::vector<float> copied(std::span<const float> values) { return {values.begin(), values.end()}; }

// Row `row` of a loss alone: the loss's dL/dlogits on that row only, so that forward_backward
// gives that row's share of the gradient (the loss's value is returned unchanged).
template <class Loss>
struct row_of {
    const Loss* loss;
    std::size_t row;

    template <class E>
    float operator()(const E& ex, const t2::nn::loss_rows& rows, t2::matrix_view<const float> logits,
                     t2::matrix_view<float> dlogits) const {
        t2::matrix<float> all(logits.extent(0), logits.extent(1));
        all.fill(0.f);
        const float value = (*loss)(ex, rows, logits, all);
        if (!dlogits.empty())
            for (std::size_t v = 0; v < logits.extent(1); ++v)
                dlogits.data()[row * dlogits.extent(1) + v] += all(row, v);
        return value;
    }
};

// The bounds, for one f32 evaluation of the model (forward and backward) against the exact
// values (the float64 reference's own error, ~N·2⁻⁵³, is far below), after
// support/tolerance.hpp's model argument (comment 2: relative errors add up along the chain of
// roundings, the sublayers taken to be well conditioned).
//
// Forward. What reaches the classifier, h = g ⊙ x̂ with ‖h‖₂ ≤ ‖g‖_∞·√D, is within ρ_h·‖h‖₂,
// ρ_h = γ̃_{N_f} + ρ_rope: N_f = summation_chain_length plus the adapter's factors (a factored
// matrix, SVF's U diag(σ⊙z) Vᵀ or LoRA's B·A, adds a sum of length r, and a token's chain
// passes four adapted matrices per block, q/k/v, o, w1/w3, w2: 4·n_layers·r), ρ_rope the
// reference's exact RoPE angles against t2's f32 ones (rope_angle_error). The base logits a
// KL reads (the dense model's) have no factors: ρ_h bounds them too.
//
// Loss, per row r with coefficient c_r (next-token CE: mask_r/Σmask; REINFORCE:
// reward·mask/B; KL: coefficient·weight). A change Δh of the classifier's input moves the
// row's loss by (Wᵀ·∂L_r/∂z)·Δh, so by at most ρ_h·‖h‖₂·‖Wᵀ∂L_r/∂z‖₂ (and the same for the
// base logits through ∂L_r/∂b); ∂L_r/∂z is c·(p − onehot) for CE, c·(q − p) and
// c·p·(−D − KL) (base) for KL(p‖q), c·q·(D − KL) and c·(p − q) (base) for KL(q‖p),
// D = log q − log p, computed here in double from t2's logits (the first-order term's own
// error is second order). Unlike a bound on each logit, this sees that a shift common to a
// row's logits does not move its loss. The loss kernels add their log-sum-exps' error
// ε_r = u·(max − min) + function_error + γ̃_V (tests/test_nn_loss.cpp): |c|·ε_r for CE,
// |c|·(ε_p + ε_q)·(1 + 2Σ s|D|) for KL. The value is the sum over the rows, and u·|L| for its
// f32 return.
//
// Gradients. The chain of a gradient element runs through the forward (N_f), the loss's
// log-sum-exp (V + 4), the backward (backward_chain_length, plus the factors again) and the
// parameter's own reduction over the rows and a projection (R + max(D, hidden) + r, a
// mixture's sum over its matrices and experts, the sigmoid's σ' a few roundings): N_g, so
// each element of a row's share G_r of the gradient is within ρ_g = γ̃_{N_g} + 2ρ_rope (the
// rotations forward and backward) of its magnitude. A row's dL/dlogits is a difference
// whose error is relative to its terms, not to its value: ρ_g·A_r·‖dlogits_r‖₁ with A_r the
// ratio of the terms' magnitude to the value's (CE c·(p − onehot): A = 1/(2(1 − p_t)), the
// error relative to p, the value 2|c|(1 − p_t); KL(p‖q) c·(q − p): A = 2/Σ|q − p|; KL(q‖p)
// c·q·(D − KL): A = (Σ q|D − KL| + 4 + Σ q|D|)/Σ q|D − KL|, D and KL carrying absolute errors
// 2ρ and ρ·(2 + Σ q|D|)), plus the kernels' 2ε_r; that error goes through the same backward
// as dlogits_r, which the conditioning assumption takes not to amplify it more than the
// row's own. What that assumption cannot cover is cancellation between rows (a gradient
// summed over positions with both signs: the KL near the base, REINFORCE's signed rewards),
// so the magnitude is measured rather than assumed: t2 computes each row's share G_r on its
// own (row_of), and per tensor, |G_r| elementwise,
//   ‖g_t2 − g_exact‖₂ ≤ ‖ Σ_r (ρ_g + 2ε_r + 2u)·(1 + A_r)·|G_r| ‖₂.
// G_r is t2's own f32 value: a magnitude, its relative error second order.
struct loss_term {
    enum kind_t { cross_entropy, kl_base_to_adapted, kl_adapted_to_base } kind;
    std::size_t row;
    double coefficient;
};

struct model_errors {
    double hidden = 0;   // ρ_h: relative error of what reaches the classifier
    double gradient = 0; // ρ_g = γ̃_{N_g} + 2ρ_rope
    double h_norm = 0;   // ‖h‖₂ ≤ ‖g‖_∞·√D of a row reaching the classifier
    std::vector<double> classifier; // [vocab × D], row-major
    std::size_t D = 0;
};

std::size_t adapter_rank(const grad_case& c) {
    if (c.kind == adapter::lora)
        return c.lora.rank;
    std::size_t r = 0;
    for (const auto& m : c.decomposition.matrices)
        r = std::max(r, m.factors.rank());
    return r;
}

model_errors model_errors_of(const grad_case& c, const t2::nn::training_batch& batch) {
    const llama_config& config = c.model->config;
    std::size_t context = 0;
    for (std::size_t b = 0; b < batch.sequences(); ++b)
        context = std::max(context, batch.rows_of(b));
    const std::size_t r = adapter_rank(c), extra = 4 * std::size_t(config.n_layers) * r;
    const std::size_t forward = t2_test::summation_chain_length(config, context) + extra;
    const std::size_t mixture = c.kind == adapter::mixture ? c.decomposition.matrices.size() * r + c.experts.size() : 0;
    const std::size_t reduction = batch.rows() + std::max<std::size_t>(config.dim, config.hidden_dim) + r + mixture + 8;
    const std::size_t chain = forward + std::size_t(config.vocab_size) + 4 + // the loss's log-sum-exp
                              t2_test::backward_chain_length(config, context) + extra + reduction;
    const double rope = t2_test::rope_angle_error(config, context);
    model_errors e;
    e.hidden = t2_test::summation_error_bound(forward) + rope;
    e.gradient = t2_test::summation_error_bound(chain) + 2 * rope;
    const auto& w = c.model->weights;
    double g_max = 0;
    for (std::size_t j = 0; j < w.final_norm.size(); ++j)
        g_max = std::max(g_max, std::abs(double(w.final_norm[j])));
    e.D = config.dim;
    e.h_norm = g_max * std::sqrt(double(config.dim));
    const auto W = w.classifier.weight().weight();
    e.classifier.assign(W.data(), W.data() + W.size());
    return e;
}

// A row's log-softmax in double from t2's f32 logits, and ε of the kernels' log-sum-exp.
struct row_softmax {
    std::vector<double> logp;
    double eps = 0;
};

row_softmax log_softmax(const float* x, std::size_t V) {
    const double max = *std::max_element(x, x + V), min = *std::min_element(x, x + V);
    double s = 0;
    for (std::size_t v = 0; v < V; ++v)
        s += std::exp(double(x[v]) - max);
    row_softmax r{std::vector<double>(V), t2_test::unit_roundoff * (max - min) + t2_test::function_error +
                                              t2_test::summation_error_bound(V)};
    for (std::size_t v = 0; v < V; ++v)
        r.logp[v] = double(x[v]) - max - std::log(s);
    return r;
}

// ‖Wᵀd‖₂: how much a change Δh of the classifier's input moves Σ_v d_v z_v, per unit of ‖Δh‖.
double through_classifier(const model_errors& e, const std::vector<double>& d) {
    std::vector<double> y(e.D, 0.0);
    for (std::size_t v = 0; v < d.size(); ++v)
        for (std::size_t j = 0; j < e.D; ++j)
            y[j] += d[v] * e.classifier[v * e.D + j];
    double n = 0;
    for (double x : y)
        n += x * x;
    return std::sqrt(n);
}

// One row's share of the loss bound, and its gradient weight (above).
struct row_bound {
    double value = 0, weight = 0;
};

row_bound bound_of(const loss_term& term, const t2::nn::training_batch& batch, const t2::matrix<float>& logits,
                   const t2::matrix<float>* base, const model_errors& e) {
    const double u = t2_test::unit_roundoff;
    const std::size_t V = logits.extent(1), r = term.row;
    const double c = term.coefficient;
    const row_softmax q = log_softmax(logits.data() + r * V, V);
    std::vector<double> da(V), db(V); // dL_r/d(adapted logits), dL_r/d(base logits)
    if (term.kind == loss_term::cross_entropy) {
        const std::size_t t = std::size_t(batch.targets()[r]);
        double rest = 0; // 1 − p_t without cancellation
        for (std::size_t v = 0; v < V; ++v) {
            da[v] = c * (std::exp(q.logp[v]) - (v == t ? 1.0 : 0.0));
            if (v != t)
                rest += std::exp(q.logp[v]);
        }
        const double A = rest > 0 ? 1 / (2 * rest) : 0.0;
        return {e.hidden * e.h_norm * through_classifier(e, da) + std::abs(c) * q.eps,
                (e.gradient + 2 * q.eps + 2 * u) * (1 + A)};
    }
    const row_softmax p = log_softmax(base->data() + r * V, V);
    const bool forward = term.kind == loss_term::kl_base_to_adapted;
    double kl = 0, weighted = 0; // Σ s·D signed as the KL, Σ s|D|
    for (std::size_t v = 0; v < V; ++v) {
        const double d = q.logp[v] - p.logp[v], s = std::exp(forward ? p.logp[v] : q.logp[v]);
        kl += forward ? -s * d : s * d;
        weighted += s * std::abs(d);
    }
    double value_mag = 0, error_mag = 0;
    for (std::size_t v = 0; v < V; ++v) {
        const double pv = std::exp(p.logp[v]), qv = std::exp(q.logp[v]), d = q.logp[v] - p.logp[v];
        if (forward) { // KL(p‖q) = −Σ p·D
            da[v] = c * (qv - pv);
            db[v] = c * pv * (-d - kl);
            value_mag += std::abs(qv - pv);
            error_mag += qv + pv;
        } else { // KL(q‖p) = Σ q·D
            da[v] = c * qv * (d - kl);
            db[v] = c * (pv - qv);
            value_mag += qv * std::abs(d - kl);
            error_mag += qv * std::abs(d - kl);
        }
    }
    if (!forward)
        error_mag += 4 + weighted;
    const double eps = std::max(p.eps, q.eps), A = value_mag > 0 ? error_mag / value_mag : 0.0;
    return {e.hidden * e.h_norm * (through_classifier(e, da) + through_classifier(e, db)) +
                std::abs(c) * (p.eps + q.eps) * (1 + 2 * weighted),
            (e.gradient + 2 * eps + 2 * u) * (1 + A)};
}

// Runs the case's loss through forward_backward on model with adapter; named(adapter) lists
// the gradients. A batch case gives the sum and each term on its own, each from a zeroed
// gradient (forward_backward accumulates into it). With `bounds`, each result gets its bounds
// (above; the rows' shares are computed one forward_backward each).
template <class E, class Model, class Adapter, class Named>
labelled_results evaluate(const E& ex, const grad_case& c, bool bounds, const Model& model, Adapter& adapter,
                          Named named) {
    labelled_results out;
    const base_model& m = *c.model;
    std::vector<std::span<const std::int32_t>> spans;
    if (c.batch)
        spans.assign(c.batch->sequences.begin(), c.batch->sequences.end());
    else
        spans.emplace_back(m.tokens);
    const t2::nn::training_batch batch(spans);
    // Σ_r (ρ_r·A_r + the model's relative error)·|G_r| of a loss's terms, per tensor.
    using magnitudes = std::vector<std::vector<double>>;
    magnitudes largest; // of the sum's rows, for the check that a dropped row is caught
    std::vector<double> largest_norm;
    const auto add_rows = [&](magnitudes& into, double& value, const auto& loss, const std::vector<loss_term>& terms,
                              const t2::matrix<float>& logits, const t2::matrix<float>* base, const model_errors& e) {
        for (const loss_term& term : terms) {
            if (term.coefficient == 0)
                continue;
            const row_bound rb = bound_of(term, batch, logits, base, e);
            value += rb.value;
            adapter.zero_gradient();
            t2::nn::forward_backward(ex, model, adapter, batch, row_of<std::decay_t<decltype(loss)>>{&loss, term.row});
            const auto grads = named(adapter);
            into.resize(grads.size());
            largest.resize(grads.size());
            largest_norm.resize(grads.size(), -1.0);
            for (std::size_t k = 0; k < grads.size(); ++k) {
                double norm = 0;
                for (float x : grads[k].second)
                    norm += double(x) * double(x);
                if (norm > largest_norm[k]) {
                    largest_norm[k] = norm;
                    largest[k].assign(grads[k].second.begin(), grads[k].second.end());
                }
                into[k].resize(grads[k].second.size(), 0.0);
                for (std::size_t i = 0; i < into[k].size(); ++i)
                    into[k][i] += rb.weight * std::abs(double(grads[k].second[i]));
            }
        }
    };
    const auto finish = [](t2_result& r, const magnitudes& m, double value) {
        r.loss_bound = value + t2_test::unit_roundoff * std::abs(r.loss);
        for (const auto& tensor : m) {
            double norm = 0;
            for (double x : tensor)
                norm += x * x;
            r.grad_bounds.push_back(std::sqrt(norm));
        }
    };
    const auto run = [&](std::string label, const auto& loss_of) {
        adapter.zero_gradient();
        t2_result r;
        r.loss = loss_of();
        r.grads = named(adapter);
        out.emplace_back(std::move(label), std::move(r));
    };
    const model_errors errors = bounds ? model_errors_of(c, batch) : model_errors{};
    if (!c.batch) {
        run("", [&] { return t2::nn::forward_backward(ex, model, adapter, m.tokens, m.mask); });
        if (bounds) {
            const t2::matrix<float> logits = t2::nn::batch_logits(ex, model, batch, &adapter);
            double total = 0;
            for (float w : m.mask)
                total += w;
            std::vector<loss_term> terms;
            for (std::size_t r = 0; r < m.mask.size(); ++r)
                terms.push_back({loss_term::cross_entropy, r, double(m.mask[r]) / total});
            magnitudes mag;
            double value = 0;
            add_rows(mag, value, t2::nn::next_token_cross_entropy{m.mask}, terms, logits, nullptr, errors);
            finish(out.back().second, mag, value);
            out.back().second.largest_row = largest;
        }
        return out;
    }
    const batch_loss& b = *c.batch;
    // The base: the adapted model without an adapter, which runs the dense base matrices
    // exactly (an SVF model's decomposed ones too, not U diag(σ) Vᵀ), as the reference's base
    // forward does with the checkpoint's weights.
    const t2::matrix<float> base_logits = t2::nn::batch_logits(ex, model, batch);
    {
        // What the reference's base is: the dense model's logits, to the bit.
        const t2::nn::llama<llama_config> dense(m.config, m.weights);
        const t2::matrix<float> want = t2::nn::batch_logits(ex, dense, batch);
        INFO(c.name << ": the adapted model without an adapter differs from the dense base");
        REQUIRE(base_logits.size() == want.size());
        CHECK(std::equal(want.data(), want.data() + want.size(), base_logits.data()));
    }
    const t2::nn::reinforce reinforce{b.rewards, b.mask};
    const t2::nn::kl_to_base kl{base_logits, b.kl_coefficient, b.kl_weights, b.direction};
    const auto with = [&](const auto& loss) {
        return [&] { return t2::nn::forward_backward(ex, model, adapter, batch, loss); };
    };
    run("", with(t2::nn::losses(reinforce, kl)));
    run("reinforce", with(reinforce));
    run("kl", with(kl));
    if (bounds) {
        const t2::matrix<float> logits = t2::nn::batch_logits(ex, model, batch, &adapter);
        std::vector<loss_term> reinforce_terms, kl_terms;
        const auto kind = b.direction == t2::ops::kl_direction::base_to_adapted ? loss_term::kl_base_to_adapted
                                                                                 : loss_term::kl_adapted_to_base;
        for (std::size_t s = 0; s < batch.sequences(); ++s)
            for (std::size_t r = batch.offsets()[s]; r < batch.offsets()[s + 1]; ++r) {
                reinforce_terms.push_back({loss_term::cross_entropy, r,
                                           double(b.rewards[s]) * double(b.mask[r]) / double(batch.sequences())});
                kl_terms.push_back(
                    {kind, r, double(b.kl_coefficient) * (b.kl_weights.empty() ? 1.0 : double(b.kl_weights[r]))});
            }
        magnitudes mag_reinforce, mag_kl;
        double value_reinforce = 0, value_kl = 0;
        add_rows(mag_reinforce, value_reinforce, reinforce, reinforce_terms, logits, nullptr, errors);
        add_rows(mag_kl, value_kl, kl, kl_terms, logits, &base_logits, errors);
        magnitudes mag_sum = mag_reinforce;
        for (std::size_t k = 0; k < mag_sum.size(); ++k)
            for (std::size_t i = 0; i < mag_sum[k].size(); ++i)
                mag_sum[k][i] += mag_kl[k][i];
        finish(out[0].second, mag_sum, value_reinforce + value_kl);
        out[0].second.largest_row = largest;
        finish(out[1].second, mag_reinforce, value_reinforce);
        finish(out[2].second, mag_kl, value_kl);
    }
    return out;
}

template <class E>
labelled_results run_t2(const E& ex, const grad_case& c, bool bounds = false) {
    const base_model& m = *c.model;
    const llama_config& config = m.config;
    using named_grads = std::vector<std::pair<std::string, std::vector<float>>>;
    if (c.kind == adapter::svf) {
        const auto model = t2::adapt::make_svf_model(config, m.weights, c.decomposition);
        auto state = t2::adapt::make_svf_adapter(model, {.parametrization = c.parametrization, .rescale = c.rescale});
        const auto& matrices = c.decomposition.matrices;
        REQUIRE(state.layout().size() == matrices.size()); // every parameter is compared
        for (std::size_t i = 0; i < matrices.size(); ++i) {
            const auto values = state.parameters(matrices[i].name);
            REQUIRE(values.size() == c.z[i].size());
            std::copy(c.z[i].begin(), c.z[i].end(), values.begin());
        }
        return evaluate(ex, c, bounds, model, state, [&](auto& a) {
            named_grads r;
            for (const auto& mat : matrices)
                r.emplace_back(svf_parameter(c, mat.name), copied(a.gradient(mat.name)));
            return r;
        });
    }
    if (c.kind == adapter::mixture) {
        const std::size_t K = c.experts.size();
        const bool per_layer = c.alpha.size() != K;
        const auto model = t2::adapt::make_svf_model(config, m.weights, c.decomposition);
        auto state = t2::adapt::make_mixture_adapter(model, c.decomposition, c.experts,
                                                     {.rescale = c.rescale, .per_layer = per_layer});
        t2::adapt::set_mixture_alpha(state, c.alpha);
        // The experts are frozen: dL/dα is the adapter's only gradient ([K], or [n_layers × K]
        // layer-major as the reference's alpha.npy). Each α's gradient sums over the matrices
        // that share it, which forward_backward accumulates.
        return evaluate(ex, c, bounds, model, state, [&](auto& a) {
            std::vector<float> dalpha;
            for (std::size_t l = 0; l < (per_layer ? config.n_layers : 1); ++l) {
                const auto g = a.gradient(per_layer ? "layers." + std::to_string(l) + ".alpha" : "alpha");
                REQUIRE(g.size() == K);
                dalpha.insert(dalpha.end(), g.begin(), g.end());
            }
            REQUIRE(dalpha.size() == a.gradient().size()); // every parameter is compared
            return named_grads{{"alpha", dalpha}};
        });
    }
    const auto model = t2::adapt::make_lora_model(config, m.weights);
    auto state = t2::adapt::make_lora_adapter(model, t2::adapt::selection::parse(c.selection), c.lora);
    REQUIRE(state.layout().size() == 2 * c.ab.size()); // every parameter is compared
    for (const auto& named : c.ab) { // not a structured binding: REQUIRE may capture it
        const t2::matrix<float>& want_a = named.second.first;
        const t2::matrix<float>& want_b = named.second.second;
        const auto a = state.parameters(named.first + ".lora_a"), b = state.parameters(named.first + ".lora_b");
        REQUIRE(a.size() == want_a.size());
        REQUIRE(b.size() == want_b.size());
        std::copy(want_a.data(), want_a.data() + want_a.size(), a.begin());
        std::copy(want_b.data(), want_b.data() + want_b.size(), b.begin());
    }
    return evaluate(ex, c, bounds, model, state, [&](auto& a) {
        named_grads r;
        for (const auto& named : c.ab) {
            r.emplace_back(named.first + ".A", copied(a.gradient(named.first + ".lora_a")));
            r.emplace_back(named.first + ".B", copied(a.gradient(named.first + ".lora_b")));
        }
        return r;
    });
}

std::string formatted(double e) {
    std::ostringstream s;
    s << std::scientific << std::setprecision(2) << e;
    return s.str();
}

double reference_loss(const fs::path& out) {
    const t2_test::npy_array loss = t2_test::read_npy(out / "loss.npy");
    REQUIRE(loss.data.size() == 1);
    return loss.data[0];
}

// Compares one executor's result with the reference's in out/<label>, within the bounds of
// `bounded` (evaluate's, from one executor: they are magnitudes); returns
// "<how> loss E grad E (tensor)", E the worst ratio of error to bound.
std::string compare(const grad_case& c, const std::string& how, const std::string& label, const t2_result& got,
                    const t2_result& bounded) {
    const fs::path out = label.empty() ? c.dir / "out" : c.dir / "out" / label;
    const double want_loss = reference_loss(out);
    const auto loss = t2_test::compare_within(got.loss, want_loss, bounded.loss_bound);
    {
        INFO(c.name << ", " << how << (label.empty() ? "" : ", term " + label) << ": loss t2 "
                    << std::setprecision(9) << got.loss << ", reference " << want_loss << ", |difference| is "
                    << loss.worst_ratio << " of its bound " << bounded.loss_bound);
        CHECK(loss.ok);
    }
    REQUIRE(bounded.grad_bounds.size() == got.grads.size());
    double worst = 0, worst_caught = INFINITY;
    std::string worst_name;
    for (std::size_t k = 0; k < got.grads.size(); ++k) {
        const std::string& name = got.grads[k].first;
        const std::vector<float>& g = got.grads[k].second;
        const t2_test::npy_array want = t2_test::read_npy(out / (name + ".npy"));
        INFO(c.name << ", " << how << (label.empty() ? "" : ", term " + label) << ": gradient of " << name);
        REQUIRE(want.data.size() == g.size());
        double diff = 0, norm = 0;
        for (std::size_t i = 0; i < g.size(); ++i) {
            diff += (double(g[i]) - want.data[i]) * (double(g[i]) - want.data[i]);
            norm += want.data[i] * want.data[i];
        }
        const double bound = bounded.grad_bounds[k];
        const auto within = t2_test::compare_within(std::isfinite(diff) ? std::sqrt(diff) : INFINITY, 0.0, bound);
        INFO("||t2 - ref|| = " << std::sqrt(diff) << " is " << within.worst_ratio << " of its bound " << bound
                               << ", ||ref|| = " << std::sqrt(norm));
        CHECK(norm > 0); // a vanishing gradient would pass trivially
        CHECK(within.ok);
        if (!(within.worst_ratio <= worst)) {
            worst = within.worst_ratio;
            worst_name = name;
        }
        // The bound still catches a real error: the gradient without the share of one row of
        // the loss (the one of largest norm), as a masking or packing slip would leave it.
        if (how == "scalar" && label.empty()) {
            REQUIRE(bounded.largest_row.size() == got.grads.size());
            const std::vector<double>& row = bounded.largest_row[k];
            double wrong = 0;
            for (std::size_t i = 0; i < g.size(); ++i)
                wrong += (double(g[i]) - row[i] - want.data[i]) * (double(g[i]) - row[i] - want.data[i]);
            wrong = std::sqrt(wrong);
            INFO("without its largest row's share: an error " << wrong << " against the bound " << bound);
            CHECK(wrong > bound);
            worst_caught = std::min(worst_caught, wrong / bound);
        }
    }
    std::ostringstream s;
    s << how << (label.empty() ? "" : " " + label + " (" + formatted(want_loss) + ")") << ": loss "
      << formatted(loss.worst_ratio) << ", worst gradient " << formatted(worst) << " (" << worst_name << ", "
      << got.grads.size() << " tensors)";
    if (std::isfinite(worst_caught))
        s << "; a dropped row exceeds the bound " << formatted(worst_caught) << "x at least";
    return s.str();
}

// Every result of one executor (a batch case: the sum, then each term, each with its own
// bounds: a term small beside the other, the KL near the base, is bounded by its own
// magnitudes), a line each.
std::string compare(const grad_case& c, const std::string& how, const labelled_results& got,
                    const labelled_results& bounded) {
    REQUIRE(got.size() == bounded.size());
    std::string lines;
    for (std::size_t i = 0; i < got.size(); ++i)
        lines += "\n    " + compare(c, how, got[i].first, got[i].second, bounded[i].second);
    return lines;
}

// Runs the cases whose names start with one of the prefixes, after checking that the expected
// ones are all there (a case that stopped being written must not pass unnoticed).
void check_cases(const std::vector<std::string>& prefixes, const std::vector<std::string>& expected) {
    const reference_set& set = references();
    if (!set.error.empty())
        FAIL(set.error);
    std::vector<const grad_case*> selected;
    for (const auto& c : set.cases)
        if (std::any_of(prefixes.begin(), prefixes.end(), [&](const auto& p) { return c.name.starts_with(p); }))
            selected.push_back(&c);
    for (const auto& name : expected) {
        INFO("no case " << name);
        CHECK(std::any_of(selected.begin(), selected.end(), [&](auto* c) { return c->name == name; }));
    }
    std::ostringstream summary;
    summary << "|loss_t2 - loss_ref| / bound, and max over tensors of ||g_t2 - g_ref|| / bound "
            << "(PyTorch reference for all cases: " << std::fixed << std::setprecision(1) << set.seconds << " s)\n";
    const t2::exec::scalar scalar;
#if T2_ENABLE_SIMD
    const t2::exec::threads<t2::exec::simd<>> fast(t2_test::test_pool(2));
    const std::string fast_name = "threads<simd> (2)";
#else
    const t2::exec::threads<t2::exec::scalar> fast(t2_test::test_pool(2));
    const std::string fast_name = "threads<scalar> (2)";
#endif
    for (const grad_case* c : selected) {
        CAPTURE(c->name);
        try {
            const labelled_results fast_results = run_t2(fast, *c, /*bounds=*/true);
            summary << "  " << c->name << compare(*c, "scalar", run_t2(scalar, *c), fast_results)
                    << compare(*c, fast_name, fast_results, fast_results) << "\n";
        } catch (const std::exception& e) {
            FAIL_CHECK(c->name << ": " << std::string(e.what()));
            summary << "  " << c->name << ": failed\n";
        }
    }
    MESSAGE(summary.str());
}

} // namespace

TEST_CASE("gradient parity with PyTorch autograd: stories260K (SVF, mixture, LoRA)") {
    check_cases({"stories260K-"}, {"stories260K-svf-mlp-rescale", "stories260K-svf-all",
                                   "stories260K-mixture-attn-per-layer-rescale", "stories260K-lora-qv",
                                   "stories260K-svf-sigmoid-all-rescale"});
}

TEST_CASE("gradient parity with PyTorch autograd: random GQA, MQA and rotate-halves models") {
    check_cases({"gqa-", "mqa-", "halves-"},
                {"gqa-svf-all-rescale", "gqa-svf-sigmoid-all", "gqa-mixture-global", "gqa-lora-all",
                 "mqa-svf-all-rescale", "mqa-mixture-per-layer", "mqa-lora-all", "halves-svf-all-rescale",
                 "halves-mixture-global", "halves-lora-all"});
}

TEST_CASE("gradient parity with PyTorch autograd: batches with REINFORCE and KL to the base (stories260K, GQA, "
          "MQA, rotate-halves)") {
    check_cases({"batch-"}, {"batch-stories260K-svf-all-kl-base-to-adapted",
                             "batch-stories260K-svf-mlp-rescale-kl-adapted-to-base",
                             "batch-stories260K-mixture-attn-kl-adapted-to-base",
                             "batch-stories260K-lora-qv-kl-base-to-adapted",
                             "batch-stories260K-svf-sigmoid-all-rescale-kl-adapted-to-base",
                             "batch-gqa-svf-all-rescale-kl-base-to-adapted", "batch-gqa-lora-all-kl-adapted-to-base",
                             "batch-mqa-svf-all-rescale-kl-base-to-adapted", "batch-mqa-lora-all-kl-adapted-to-base",
                             "batch-halves-svf-all-rescale-kl-base-to-adapted",
                             "batch-halves-lora-all-kl-adapted-to-base"});
}
