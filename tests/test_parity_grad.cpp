// Parity of t2's adapter gradients with PyTorch autograd. tests/parity/grad_reference.py
// builds the adapted weights from their definitions in float64 torch (SVF: U diag(σ⊙z·c) Vᵀ
// from t2's decomposition file, z the parameters or, parametrized by sigmoid, z = sigmoid(θ);
// mixtures: z = Σ_k α_k z_k over frozen experts z_k; LoRA: W + (α/r)·B A), runs a Llama
// forward of its own, takes the loss and calls backward. t2's nn::forward_backward (float32)
// with the case's adapter state (adapt::make_svf_adapter, make_mixture_adapter,
// make_lora_adapter) on the frozen model must agree, on exec::scalar and
// exec::threads<exec::simd<>>, to
//   |loss_t2 − loss_ref| / |loss_ref| ≤ 1e-5,
//   ‖g_t2 − g_ref‖ / ‖g_ref‖ ≤ 1e-3 for every gradient tensor the adapter holds (dL/dz or
//   dL/dθ of each matrix, dL/dα of a mixture, dL/dA and dL/dB of each LoRA matrix), read
//   from adapter.gradient(name).
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
// is checked too: its gradient to 1e-3 of its own norm, its value to 1e-5 of the sum of the
// terms' magnitudes (compare() says why).
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

constexpr double loss_tolerance = 1e-5;
constexpr double grad_tolerance = 1e-3;

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

// t2's loss and gradients, named as the reference names them.
struct t2_result {
    double loss = 0;
    std::vector<std::pair<std::string, std::vector<float>>> grads;
};

// A result and the reference's out/ subdirectory it is compared with ("" for the loss itself).
using labelled_results = std::vector<std::pair<std::string, t2_result>>;

std::vector<float> copied(std::span<const float> values) { return {values.begin(), values.end()}; }

// Runs the case's loss through forward_backward on model with adapter; named(adapter) lists
// the gradients. A batch case gives the sum and each term on its own, each from a zeroed
// gradient (forward_backward accumulates into it).
template <class E, class Model, class Adapter, class Named>
labelled_results evaluate(const E& ex, const grad_case& c, const Model& model, Adapter& adapter, Named named) {
    labelled_results out;
    const auto run = [&](std::string label, const auto& loss_of) {
        adapter.zero_gradient();
        t2_result r;
        r.loss = loss_of();
        r.grads = named(adapter);
        out.emplace_back(std::move(label), std::move(r));
    };
    const base_model& m = *c.model;
    if (!c.batch) {
        run("", [&] { return t2::nn::forward_backward(ex, model, adapter, m.tokens, m.mask); });
        return out;
    }
    const batch_loss& b = *c.batch;
    std::vector<std::span<const std::int32_t>> spans(b.sequences.begin(), b.sequences.end());
    const t2::nn::training_batch batch(spans);
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
    return out;
}

template <class E>
labelled_results run_t2(const E& ex, const grad_case& c) {
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
        return evaluate(ex, c, model, state, [&](auto& a) {
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
        return evaluate(ex, c, model, state, [&](auto& a) {
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
    return evaluate(ex, c, model, state, [&](auto& a) {
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

// Compares one executor's result with the reference's in out/<label>; returns
// "<how> loss E grad E (tensor)". The loss error is |loss_t2 − loss_ref| / loss_scale.
std::string compare(const grad_case& c, const std::string& how, const std::string& label, const t2_result& got,
                    double loss_scale) {
    const fs::path out = label.empty() ? c.dir / "out" : c.dir / "out" / label;
    const double want_loss = reference_loss(out);
    const double loss_error = std::abs(got.loss - want_loss) / loss_scale;
    INFO(c.name << ", " << how << (label.empty() ? "" : ", term " + label) << ": loss t2 " << std::setprecision(9)
                << got.loss << ", reference " << want_loss << ", error relative to " << loss_scale);
    CHECK(loss_error <= loss_tolerance);
    double worst = 0;
    std::string worst_name;
    for (const auto& named : got.grads) {
        const std::string& name = named.first; // not a structured binding: INFO captures it
        const std::vector<float>& g = named.second;
        const t2_test::npy_array want = t2_test::read_npy(out / (name + ".npy"));
        INFO(c.name << ", " << how << ": gradient of " << name);
        REQUIRE(want.data.size() == g.size());
        double diff = 0, norm = 0;
        for (std::size_t i = 0; i < g.size(); ++i) {
            diff += (double(g[i]) - want.data[i]) * (double(g[i]) - want.data[i]);
            norm += want.data[i] * want.data[i];
        }
        const double error = std::isfinite(diff) ? std::sqrt(diff / norm) : INFINITY;
        INFO("||t2 - ref|| / ||ref|| = " << error << " (tolerance " << grad_tolerance << "), ||ref|| = "
                                         << std::sqrt(norm));
        CHECK(norm > 0); // a vanishing gradient would pass trivially
        CHECK(error <= grad_tolerance);
        if (!(error <= worst)) {
            worst = error;
            worst_name = name;
        }
    }
    std::ostringstream s;
    s << how << (label.empty() ? "" : " " + label + " (" + formatted(want_loss) + ")") << ": loss "
      << formatted(loss_error) << ", worst gradient " << formatted(worst) << " (" << worst_name << ", "
      << got.grads.size() << " tensors)";
    return s.str();
}

// Every result of one executor (a batch case: the sum, then each term), a line each. The sum's
// loss is checked relative to itself; a term's to the sum's absolute tolerance,
// 1e-5·Σ_terms |L_term|: a term's value is accurate as a part of the sum, not on its own when
// it is small (the KL near the base is a sum of squares of differences of nearly equal f32
// logits, its relative accuracy the logits' error over those differences: ~1e-5 at z = 1 ±
// 0.1). Every term's gradient is still checked to 1e-3 of its own norm.
std::string compare(const grad_case& c, const std::string& how, const labelled_results& got) {
    double terms_scale = 0;
    for (const auto& named : got)
        if (!named.first.empty())
            terms_scale += std::abs(reference_loss(c.dir / "out" / named.first));
    std::string lines;
    for (const auto& [label, result] : got)
        lines += "\n    " + compare(c, how, label, result,
                                     label.empty() ? std::abs(reference_loss(c.dir / "out")) : terms_scale);
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
    summary << "|loss_t2 - loss_ref| / |loss_ref|, and max over tensors of ||g_t2 - g_ref|| / ||g_ref|| "
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
            summary << "  " << c->name << compare(*c, "scalar", run_t2(scalar, *c))
                    << compare(*c, fast_name, run_t2(fast, *c)) << "\n";
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
