// GGUF reader: the real stories260K.gguf against the llama2.c checkpoint and tokenizer of
// the same model (config, logits on every executor, greedy generation, tokenization);
// files written here (F32/F16/BF16/Q8_0 tensors of random tiny models with odd sizes, GQA,
// untied classifier, versions 2 and 3, several alignments) against the values written;
// and malformed files (truncation at every header byte, bit flips in every count, length,
// dimension, offset and type, absurd counts, semantic errors), each of which must give a
// t2::error and never crash (run this test under -fsanitize=address,undefined too).
// Export (io/gguf_writer.hpp, adapt/export.hpp): stories260K with an expert or a mixture
// applied, written as F32 (read back: the adapted logits bit for bit) and F16 (within the
// rounding of the weights), its vocabulary as llama.cpp's converter wrote it; a rotate-halves
// model permuted to llama.cpp's layout; bad input refused with the target untouched.
//
// With T2_WRITE_GGUF_CORPUS=DIR in the environment, the "seed corpus" case writes the fuzz
// seeds (fuzz/corpus/gguf/) into DIR.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "t2/adapt/decomposition.hpp"
#include "t2/adapt/export.hpp"
#include "t2/core/dtype.hpp"
#include "t2/core/rng.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/io/gguf.hpp"
#include "t2/io/gguf_writer.hpp"
#include "t2/io/llama2c.hpp"
#include "t2/io/tokenizer.hpp"
#include "t2/nn/llama.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/ops/sampling.hpp"

#include "support/temp_dir.hpp"
#include "support/tolerance.hpp"

namespace {

using bytes_t = std::vector<std::byte>;
using model_t = t2::nn::llama<t2::nn::llama_config>;

std::string shared(const char* file) { return std::string(T2_SHARED_MODELS_DIR) + "/" + file; }

bytes_t read_all(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes_t out(s.size());
    std::memcpy(out.data(), s.data(), s.size());
    return out;
}

// Copies every tensor out of `b`; with `view`, F32 tensors view `b` (which must then
// outlive the result).
t2::io::checkpoint parse(const bytes_t& b, const std::string& name = "test.gguf", bool view = false) {
    // An owner that owns nothing: the caller keeps b alive.
    const std::shared_ptr<const void> owner(std::shared_ptr<void>{}, view ? b.data() : nullptr);
    return t2::io::read_gguf(std::span<const std::byte>(b.data(), b.size()), name, owner);
}

// Parses and, if that succeeds, builds the model and the tokenizer's first encoding, as a
// user would; anything but success or t2::error fails the calling test.
bool loads(const bytes_t& b) {
    try {
        auto ck = parse(b, "test.gguf", true);
        model_t model(ck.config, std::move(ck.weights));
        if (ck.tokenizer)
            (void)ck.tokenizer->encode("a b");
        return true;
    } catch (const t2::error&) {
        return false;
    }
}

// ---- a small GGUF writer ----------------------------------------------------------------

template <class T>
void put(bytes_t& b, T v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
}
void put_str(bytes_t& b, std::string_view s) {
    put<std::uint64_t>(b, s.size());
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    b.insert(b.end(), p, p + s.size());
}

enum : std::uint32_t { T_U8 = 0, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 };
enum : std::uint32_t { G_F32 = 0, G_F16 = 1, G_Q8_0 = 8, G_Q4_K = 12, G_BF16 = 30 };

struct writer {
    bytes_t meta, infos, data;
    std::uint64_t n_kv = 0, n_tensors = 0;
    std::size_t alignment = 32;

    void key(std::string_view k, std::uint32_t type) {
        put_str(meta, k);
        put(meta, type);
        ++n_kv;
    }
    void u32(std::string_view k, std::uint32_t v) { key(k, T_U32), put(meta, v); }
    void f32(std::string_view k, float v) { key(k, T_F32), put(meta, v); }
    void str(std::string_view k, std::string_view v) { key(k, T_STR), put_str(meta, v); }
    void strs(std::string_view k, const std::vector<std::string>& v) {
        key(k, T_ARR), put<std::uint32_t>(meta, T_STR), put<std::uint64_t>(meta, v.size());
        for (const auto& s : v)
            put_str(meta, s);
    }
    void f32s(std::string_view k, const std::vector<float>& v) {
        key(k, T_ARR), put<std::uint32_t>(meta, T_F32), put<std::uint64_t>(meta, v.size());
        for (float x : v)
            put(meta, x);
    }
    void i32s(std::string_view k, const std::vector<std::int32_t>& v) {
        key(k, T_ARR), put<std::uint32_t>(meta, T_I32), put<std::uint64_t>(meta, v.size());
        for (auto x : v)
            put(meta, x);
    }
    // ne in GGUF order (fastest first); the data goes at the next aligned offset unless
    // `offset` says otherwise.
    void tensor(std::string_view name, std::vector<std::uint64_t> ne, std::uint32_t type,
                const bytes_t& raw, std::optional<std::uint64_t> offset = std::nullopt) {
        while (data.size() % alignment)
            data.push_back(std::byte{0});
        put_str(infos, name);
        put<std::uint32_t>(infos, std::uint32_t(ne.size()));
        for (auto d : ne)
            put(infos, d);
        put(infos, type);
        put<std::uint64_t>(infos, offset.value_or(data.size()));
        data.insert(data.end(), raw.begin(), raw.end());
        ++n_tensors;
    }
    bytes_t bytes(std::uint32_t version = 3) const {
        bytes_t b;
        put<std::uint32_t>(b, 0x46554747);
        put(b, version);
        put(b, n_tensors);
        put(b, n_kv);
        b.insert(b.end(), meta.begin(), meta.end());
        b.insert(b.end(), infos.begin(), infos.end());
        while (b.size() % alignment)
            b.push_back(std::byte{0});
        b.insert(b.end(), data.begin(), data.end());
        return b;
    }
};

// Encodes values as a ggml type and returns what a correct reader must dequantize them to.
bytes_t encode(std::uint32_t type, const std::vector<float>& x, std::vector<float>& expected) {
    bytes_t raw;
    expected.resize(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        if (type == G_F32) {
            put(raw, x[i]);
            expected[i] = x[i];
        } else if (type == G_F16) {
            const auto h = t2::detail::f32_to_f16(x[i]);
            put(raw, h.bits);
            expected[i] = t2::detail::f16_to_f32(h);
        } else if (type == G_BF16) {
            const auto h = t2::detail::f32_to_bf16(x[i]);
            put(raw, h.bits);
            expected[i] = t2::detail::bf16_to_f32(h);
        }
    }
    if (type == G_Q8_0) {
        REQUIRE(x.size() % 32 == 0);
        for (std::size_t b = 0; b < x.size(); b += 32) {
            float amax = 0;
            for (std::size_t i = 0; i < 32; ++i)
                amax = std::max(amax, std::abs(x[b + i]));
            const float d = amax / 127.f, id = d ? 1.f / d : 0.f;
            const auto d16 = t2::detail::f32_to_f16(d);
            put(raw, d16.bits);
            for (std::size_t i = 0; i < 32; ++i) {
                const auto q = static_cast<std::int8_t>(std::clamp(std::round(x[b + i] * id), -127.f, 127.f));
                put(raw, q);
                expected[b + i] = t2::detail::f16_to_f32(d16) * float(q);
            }
        }
    }
    return raw;
}

struct tiny_spec {
    std::size_t dim = 32, hidden = 44, layers = 2, heads = 4, kv_heads = 2, vocab = 37, seq = 16;
    bool tied = false, tokenizer = true;
    std::string arch = "llama";
    std::uint32_t version = 3;
    std::size_t alignment = 32; // 0: no general.alignment key (the default, 32)
    // Types by role; Q8_0 needs rows (ne0) that are multiples of 32.
    std::uint32_t embed = G_F16, q = G_Q8_0, k = G_BF16, v = G_F32, o = G_Q8_0, gate = G_Q8_0,
                  down = G_F16, up = G_BF16, norm = G_F32, out = G_BF16;
    std::uint64_t seed = 1;
};

struct tiny_model {
    writer w;
    std::map<std::string, std::vector<float>> expected; // dequantized values, row-major
    std::vector<std::string> pieces;                    // as the GGUF stores them
};

tiny_model make_tiny(const tiny_spec& s, bool add_tensors = true,
                     const std::function<void(tiny_model&)>& extra_meta = {}) {
    tiny_model m;
    writer& w = m.w;
    w.alignment = s.alignment ? s.alignment : 32;
    w.str("general.architecture", s.arch);
    w.str("general.name", "tiny");
    if (s.alignment)
        w.u32("general.alignment", std::uint32_t(s.alignment));
    w.u32("llama.context_length", std::uint32_t(s.seq));
    w.u32("llama.embedding_length", std::uint32_t(s.dim));
    w.u32("llama.feed_forward_length", std::uint32_t(s.hidden));
    w.u32("llama.block_count", std::uint32_t(s.layers));
    w.u32("llama.attention.head_count", std::uint32_t(s.heads));
    w.u32("llama.attention.head_count_kv", std::uint32_t(s.kv_heads));
    w.u32("llama.rope.dimension_count", std::uint32_t(s.dim / s.heads));
    w.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.f32("llama.rope.freq_base", 10000.f);
    if (s.tokenizer) {
        m.pieces = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab"};
        for (std::size_t i = m.pieces.size(); i < s.vocab; ++i)
            m.pieces.push_back("t" + std::to_string(i));
        m.pieces.resize(s.vocab);
        std::vector<float> scores(s.vocab);
        std::vector<std::int32_t> types(s.vocab, 1);
        for (std::size_t i = 0; i < s.vocab; ++i)
            scores[i] = -float(i);
        types[0] = 2, types[1] = types[2] = 3;
        w.str("tokenizer.ggml.model", "llama");
        w.strs("tokenizer.ggml.tokens", m.pieces);
        w.f32s("tokenizer.ggml.scores", scores);
        w.i32s("tokenizer.ggml.token_type", types);
        w.u32("tokenizer.ggml.bos_token_id", 1);
        w.u32("tokenizer.ggml.eos_token_id", 2);
    }
    if (extra_meta)
        extra_meta(m);
    if (!add_tensors)
        return m;
    const t2::philox rng(s.seed);
    std::uint64_t counter = 0;
    const auto add = [&](const std::string& name, std::size_t rows, std::size_t cols, std::uint32_t type) {
        std::vector<float> x(rows * cols);
        for (auto& e : x)
            e = rng.uniform(counter++) * 2.f - 1.f;
        if (rows == 1) // norms: around 1, as trained models have them
            for (auto& e : x)
                e = 1.f + 0.25f * e;
        auto raw = encode(type, x, m.expected[name]);
        if (rows == 1)
            w.tensor(name, {cols}, type, raw);
        else
            w.tensor(name, {cols, rows}, type, raw);
    };
    const std::size_t kv = s.dim / s.heads * s.kv_heads;
    add("token_embd.weight", s.vocab, s.dim, s.embed);
    for (std::size_t l = 0; l < s.layers; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        add(p + "attn_norm.weight", 1, s.dim, s.norm);
        add(p + "attn_q.weight", s.dim, s.dim, s.q);
        add(p + "attn_k.weight", kv, s.dim, s.k);
        add(p + "attn_v.weight", kv, s.dim, s.v);
        add(p + "attn_output.weight", s.dim, s.dim, s.o);
        add(p + "ffn_norm.weight", 1, s.dim, s.norm);
        add(p + "ffn_gate.weight", s.hidden, s.dim, s.gate);
        add(p + "ffn_down.weight", s.dim, s.hidden, s.down);
        add(p + "ffn_up.weight", s.hidden, s.dim, s.up);
    }
    add("output_norm.weight", 1, s.dim, s.norm);
    if (!s.tied)
        add("output.weight", s.vocab, s.dim, s.out);
    return m;
}

bytes_t tiny_bytes(const tiny_spec& s = {}) { return make_tiny(s).w.bytes(s.version); }

void check_values(const float* got, const std::vector<float>& want, const std::string& name) {
    INFO("tensor " << name);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < want.size(); ++i)
        bad += !(got[i] == want[i]);
    CHECK(bad == 0);
}

std::vector<std::int32_t> greedy(const model_t& model, std::size_t steps) {
    const t2::exec::scalar ex;
    auto state = model.make_state();
    std::vector<std::int32_t> out;
    std::int32_t token = t2::io::tokenizer::bos_id;
    for (std::size_t i = 0; i < steps; ++i) {
        const auto logits = model.forward(ex, state, std::span<const std::int32_t>(&token, 1));
        token = t2::ops::argmax(logits.span());
        if (token == t2::io::tokenizer::bos_id)
            break;
        out.push_back(token);
    }
    return out;
}

// ---- the fields of a GGUF header, found by an independent walk ---------------------------

enum class field_kind { count, key_length, value_type, string_length, array_type, array_length, value,
                        name_length, n_dims, dim, ggml_type, offset };
struct field {
    std::size_t at, size;
    field_kind kind;
};

std::vector<field> walk(const bytes_t& b, std::size_t& end_of_infos) {
    std::vector<field> f;
    std::size_t at = 0;
    const auto u = [&](std::size_t size, field_kind kind) {
        REQUIRE(at + size <= b.size());
        std::uint64_t v = 0;
        std::memcpy(&v, b.data() + at, size);
        f.push_back({at, size, kind});
        at += size;
        return v;
    };
    const auto string = [&](field_kind kind) { at += u(8, kind); };
    at = 8;
    const auto n_tensors = u(8, field_kind::count), n_kv = u(8, field_kind::count);
    const std::size_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    for (std::uint64_t i = 0; i < n_kv; ++i) {
        string(field_kind::key_length);
        const auto type = u(4, field_kind::value_type);
        if (type == T_STR) {
            string(field_kind::string_length);
        } else if (type == T_ARR) {
            const auto et = u(4, field_kind::array_type);
            const auto n = u(8, field_kind::array_length);
            for (std::uint64_t j = 0; j < n; ++j) {
                if (et == T_STR)
                    string(field_kind::string_length);
                else
                    at += sizes[et];
            }
        } else {
            u(sizes[type], field_kind::value);
        }
    }
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
        string(field_kind::name_length);
        const auto nd = u(4, field_kind::n_dims);
        for (std::uint64_t d = 0; d < nd; ++d)
            u(8, field_kind::dim);
        u(4, field_kind::ggml_type);
        u(8, field_kind::offset);
    }
    end_of_infos = at;
    return f;
}

template <class T>
void poke(bytes_t& b, std::size_t at, T v) {
    std::memcpy(b.data() + at, &v, sizeof(T));
}

std::string error_of(const bytes_t& b) {
    try {
        (void)parse(b);
    } catch (const t2::error& e) {
        return e.what();
    }
    return "";
}

} // namespace

// ---- the real model -------------------------------------------------------------------------

TEST_CASE("gguf: stories260K.gguf has the configuration of stories260K.bin") {
    const auto g = t2::io::read_gguf(shared("stories260K.gguf"));
    const auto b = t2::io::read_llama2c(shared("stories260K.bin"));
    CHECK(g.format == "gguf v3");
    CHECK(g.config.dim == b.config.dim);
    CHECK(g.config.hidden_dim == b.config.hidden_dim);
    CHECK(g.config.n_layers == b.config.n_layers);
    CHECK(g.config.n_heads == b.config.n_heads);
    CHECK(g.config.n_kv_heads == b.config.n_kv_heads);
    CHECK(g.config.vocab_size == b.config.vocab_size);
    CHECK(g.config.norm_eps == doctest::Approx(b.config.norm_eps).epsilon(1e-6));
    CHECK(g.config.rope_theta == b.config.rope_theta);
    CHECK(g.config.rope_layout == t2::ops::rope_layout::interleaved);
    // The converter wrote llama.context_length 2048 (the .bin says 512) and stored the tied
    // classifier as output.weight: a copy of the embedding.
    CHECK(g.config.seq_len == 2048);
    CHECK(b.config.seq_len == 512);
    CHECK_FALSE(g.config.shared_classifier);
    const auto cls = g.weights.classifier.weight().weight(), emb = b.weights.token_embedding;
    REQUIRE(cls.size() == emb.size());
    CHECK(std::equal(cls.data(), cls.data() + cls.size(), emb.data()));

    REQUIRE(g.tensors.size() == 48);
    CHECK(g.tensors[0].name == "token_embd.weight");
    CHECK(g.tensors[0].dtype == "f32");
    CHECK(g.tensors[0].shape == std::vector<std::size_t>{512, 64});
    CHECK(g.tensors[8].name == "blk.0.ffn_gate.weight");
    CHECK(g.tensors[8].shape == std::vector<std::size_t>{172, 64});
    CHECK(g.tensors[9].name == "blk.0.ffn_down.weight");
    CHECK(g.tensors[9].shape == std::vector<std::size_t>{64, 172});
}

TEST_CASE("gguf: stories260K.gguf gives the logits of stories260K.bin") {
    auto g = t2::io::read_gguf(shared("stories260K.gguf"));
    auto b = t2::io::read_llama2c(shared("stories260K.bin"));
    g.config.seq_len = b.config.seq_len; // the same cache size; the logits do not depend on it
    const model_t mg(g.config, g.weights), mb(b.config, b.weights);
    const std::vector<std::vector<std::int32_t>> sequences = {
        {1}, {1, 403, 407, 261, 378, 432, 383, 286}, {1, 5, 100, 511, 3, 260, 77, 77, 77, 400, 12}};
    const auto run = [&](const auto& ex, const char* name) {
        for (const auto& seq : sequences) {
            auto sg = mg.make_state(), sb = mb.make_state();
            const auto lg = mg.forward(ex, sg, seq, t2::nn::logits_for::all);
            const auto lb = mb.forward(ex, sb, seq, t2::nn::logits_for::all);
            REQUIRE(lg.size() == lb.size());
            double worst = 0;
            for (std::size_t i = 0; i < lg.size(); ++i)
                worst = std::max(worst, double(std::abs(lg.span()[i] - lb.span()[i])));
            INFO(name << ", " << seq.size() << " tokens: worst difference " << worst);
            CHECK(worst <= 1e-5);
        }
    };
    run(t2::exec::scalar{}, "scalar");
#if T2_ENABLE_SIMD
    run(t2::exec::simd<>{}, "simd");
#endif

    // The layout matters: rotating halves instead of interleaved pairs changes the logits,
    // so the agreement above confirms the GGUF's q/k rows are in the interleaved order.
    auto halves = g.config;
    halves.rope_layout = t2::ops::rope_layout::halves;
    const model_t mh(halves, g.weights);
    auto sh = mh.make_state(), sb = mb.make_state();
    const t2::exec::scalar ex;
    const auto lh = mh.forward(ex, sh, sequences[1]), lb = mb.forward(ex, sb, sequences[1]);
    double diff = 0;
    for (std::size_t i = 0; i < lh.size(); ++i)
        diff = std::max(diff, double(std::abs(lh.span()[i] - lb.span()[i])));
    CHECK(diff > 1e-2);
}

TEST_CASE("gguf: greedy generation from stories260K.gguf equals stories260K.bin's") {
    auto g = t2::io::read_gguf(shared("stories260K.gguf"));
    auto b = t2::io::read_llama2c(shared("stories260K.bin"));
    const model_t mg(g.config, g.weights), mb(b.config, b.weights);
    const auto ids_g = greedy(mg, 200), ids_b = greedy(mb, 200);
    CHECK(ids_g == ids_b);
    CHECK(ids_g.size() >= 100);
    REQUIRE(g.tokenizer);
    std::vector<std::int32_t> with_bos{1};
    with_bos.insert(with_bos.end(), ids_g.begin(), ids_g.end());
    const std::string text = g.tokenizer->decode(with_bos);
    CHECK(text.rfind("Once upon a time, there was a little girl named Lily.", 0) == 0);
}

TEST_CASE("gguf: the embedded vocabulary tokenizes like tok512.bin") {
    const auto g = t2::io::read_gguf(shared("stories260K.gguf"));
    REQUIRE(g.tokenizer);
    const auto& tg = *g.tokenizer;
    const auto tb = t2::io::read_llama2c_tokenizer(shared("tok512.bin"), 512);
    REQUIRE(tg.vocab_size() == tb.vocab_size());
    for (std::int32_t i = 0; i < 512; ++i) {
        INFO("token " << i);
        CHECK(tg.piece(i) == tb.piece(i));
        CHECK(tg.score(i) == tb.score(i));
    }
    const std::vector<std::string> prompts = {
        "", "Once upon a time", "Once upon a time, there was a little girl named Lily.",
        "Hello world! Tom's dog ran   fast...\nThe end.", " leading and trailing  ",
        "caf\xC3\xA9 \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80", "\t<s> </s> <0x41> \xE2\x96\x81x",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaa", "12345 + 678 = 7023?"};
    for (const auto& p : prompts) {
        INFO("prompt \"" << p << "\"");
        for (const bool bos : {true, false})
            for (const bool eos : {true, false}) {
                const auto ids = tg.encode(p, bos, eos);
                CHECK(ids == tb.encode(p, bos, eos));
                CHECK(tg.decode(ids) == tb.decode(ids));
            }
    }
    for (std::int32_t prev : {1, 2, 3, 300})
        for (std::int32_t t = 0; t < 512; ++t)
            CHECK(tg.decode(prev, t) == tb.decode(prev, t));
}

// ---- files written here -------------------------------------------------------------------

TEST_CASE("gguf: a written tiny model loads with the values written") {
    struct variant {
        const char* what;
        tiny_spec spec;
    };
    std::vector<variant> variants;
    variants.push_back({"mixed types, GQA, untied, v3", {}});
    tiny_spec v2;
    v2.version = 2;
    v2.alignment = 64;
    v2.seed = 2;
    variants.push_back({"v2, alignment 64", v2});
    tiny_spec odd;
    odd.alignment = 1; // F32 data at unaligned addresses must be copied, not viewed
    odd.dim = 24, odd.heads = 3, odd.kv_heads = 1, odd.hidden = 10, odd.vocab = 9, odd.layers = 3;
    odd.q = odd.o = odd.gate = G_F32; // Q8_0 needs rows of 32
    odd.tied = true;
    odd.seed = 3;
    variants.push_back({"MQA, odd sizes, tied, alignment 1", odd});
    tiny_spec all_q8;
    all_q8.embed = all_q8.q = all_q8.k = all_q8.v = all_q8.o = all_q8.gate = all_q8.up = all_q8.out = G_Q8_0;
    all_q8.down = G_BF16, all_q8.hidden = 64, all_q8.kv_heads = 4, all_q8.tokenizer = false;
    all_q8.alignment = 0;
    all_q8.seed = 4;
    variants.push_back({"Q8_0 everywhere, MHA, no tokenizer, default alignment", all_q8});

    for (const auto& variant : variants) {
        const tiny_spec& s = variant.spec;
        INFO(std::string(variant.what));
        const tiny_model m = make_tiny(s);
        const bytes_t file = m.w.bytes(s.version);
        for (const bool mapped : {false, true}) {
            INFO((mapped ? "read from a file" : "read from memory"));
            t2::io::checkpoint ck;
            if (mapped) {
                const std::string path = t2_test::temp_dir() + "/tiny_" + std::to_string(s.seed) + ".gguf";
                std::ofstream(path, std::ios::binary)
                    .write(reinterpret_cast<const char*>(file.data()), std::streamsize(file.size()));
                ck = t2::io::read_gguf(path);
                std::remove(path.c_str());
            } else {
                ck = parse(file);
            }
            const auto& c = ck.config;
            CHECK(ck.format == "gguf v" + std::to_string(s.version));
            CHECK(c.dim == s.dim);
            CHECK(c.hidden_dim == s.hidden);
            CHECK(c.n_layers == s.layers);
            CHECK(c.n_heads == s.heads);
            CHECK(c.n_kv_heads == s.kv_heads);
            CHECK(c.vocab_size == s.vocab);
            CHECK(c.seq_len == s.seq);
            CHECK(c.shared_classifier == s.tied);
            const auto& w = ck.weights;
            check_values(w.token_embedding.data(), m.expected.at("token_embd.weight"), "token_embd");
            for (std::size_t l = 0; l < s.layers; ++l) {
                const auto& b = w.blocks[l];
                const std::string p = "blk." + std::to_string(l) + ".";
                check_values(b.attention_norm.data(), m.expected.at(p + "attn_norm.weight"), p + "attn_norm");
                check_values(b.wq.weight().weight().data(), m.expected.at(p + "attn_q.weight"), p + "attn_q");
                check_values(b.wk.weight().weight().data(), m.expected.at(p + "attn_k.weight"), p + "attn_k");
                check_values(b.wv.weight().weight().data(), m.expected.at(p + "attn_v.weight"), p + "attn_v");
                check_values(b.wo.weight().weight().data(), m.expected.at(p + "attn_output.weight"), p + "attn_output");
                check_values(b.mlp_norm.data(), m.expected.at(p + "ffn_norm.weight"), p + "ffn_norm");
                check_values(b.w1.weight().weight().data(), m.expected.at(p + "ffn_gate.weight"), p + "ffn_gate");
                check_values(b.w2.weight().weight().data(), m.expected.at(p + "ffn_down.weight"), p + "ffn_down");
                check_values(b.w3.weight().weight().data(), m.expected.at(p + "ffn_up.weight"), p + "ffn_up");
            }
            check_values(w.final_norm.data(), m.expected.at("output_norm.weight"), "output_norm");
            check_values(w.classifier.weight().weight().data(),
                         m.expected.at(s.tied ? "token_embd.weight" : "output.weight"), "output");

            // Records: file order, stored types, row-major shapes.
            REQUIRE(ck.tensors.size() == 2 + 9 * s.layers + (s.tied ? 0 : 1));
            CHECK(ck.tensors[0].name == "token_embd.weight");
            CHECK(ck.tensors[0].dtype == t2::io::detail::ggml_dtype_string(s.embed));
            CHECK(ck.tensors[0].shape == std::vector<std::size_t>{s.vocab, s.dim});
            CHECK(ck.tensors[4].name == "blk.0.attn_v.weight");
            CHECK(ck.tensors[4].dtype == t2::io::detail::ggml_dtype_string(s.v));
            CHECK(ck.tensors[4].shape == std::vector<std::size_t>{s.dim / s.heads * s.kv_heads, s.dim});
            CHECK(ck.tensors[1].shape == std::vector<std::size_t>{s.dim});

            CHECK(ck.tokenizer.has_value() == s.tokenizer);
            if (s.tokenizer) {
                CHECK(ck.tokenizer->piece(3) == " ");
                CHECK(ck.tokenizer->piece(6) == " a");
                CHECK(ck.tokenizer->piece(1) == "\n<s>\n");
                CHECK(ck.tokenizer->encode("ab a", true, true) == std::vector<std::int32_t>{1, 6, 5, 6, 2});
                // No <0xXX> pieces in this vocabulary: bytes without a piece become <unk>.
                CHECK(ck.tokenizer->encode("\xC3\xA9", false) == std::vector<std::int32_t>{3, 0, 0});
            }

            // The loaded model computes what a model built from the expected values computes.
            const auto mat = [&](const std::string& name, std::size_t rows, std::size_t cols) {
                t2::matrix<float> x(rows, cols);
                std::copy(m.expected.at(name).begin(), m.expected.at(name).end(), x.data());
                return t2::nn::linear<t2::nn::dense<float>>(t2::nn::dense<float>(std::move(x)));
            };
            t2::nn::llama_weights<t2::nn::dense<float>> ref;
            ref.token_embedding = {m.expected.at("token_embd.weight").data(), t2::dims<2>(s.vocab, s.dim)};
            const std::size_t kv = s.dim / s.heads * s.kv_heads;
            for (std::size_t l = 0; l < s.layers; ++l) {
                const std::string p = "blk." + std::to_string(l) + ".";
                t2::nn::block_weights<t2::nn::dense<float>> b;
                b.attention_norm = {m.expected.at(p + "attn_norm.weight").data(), t2::dims<1>(s.dim)};
                b.mlp_norm = {m.expected.at(p + "ffn_norm.weight").data(), t2::dims<1>(s.dim)};
                b.wq = mat(p + "attn_q.weight", s.dim, s.dim);
                b.wk = mat(p + "attn_k.weight", kv, s.dim);
                b.wv = mat(p + "attn_v.weight", kv, s.dim);
                b.wo = mat(p + "attn_output.weight", s.dim, s.dim);
                b.w1 = mat(p + "ffn_gate.weight", s.hidden, s.dim);
                b.w2 = mat(p + "ffn_down.weight", s.dim, s.hidden);
                b.w3 = mat(p + "ffn_up.weight", s.hidden, s.dim);
                ref.blocks.push_back(std::move(b));
            }
            ref.final_norm = {m.expected.at("output_norm.weight").data(), t2::dims<1>(s.dim)};
            ref.classifier = mat(s.tied ? "token_embd.weight" : "output.weight", s.vocab, s.dim);
            const model_t loaded(c, ck.weights), built(c, std::move(ref));
            auto sl = loaded.make_state(), sr = built.make_state();
            const std::vector<std::int32_t> tokens = {1, 4, std::int32_t(s.vocab - 1), 0, 5};
            const t2::exec::scalar ex;
            const auto ll = loaded.forward(ex, sl, tokens, t2::nn::logits_for::all);
            const auto lr = built.forward(ex, sr, tokens, t2::nn::logits_for::all);
            CHECK(std::equal(ll.data(), ll.data() + ll.size(), lr.data()));
            CHECK(std::all_of(ll.data(), ll.data() + ll.size(), [](float x) { return std::isfinite(x); }));
        }
    }
}

TEST_CASE("gguf: stories260K.gguf read into memory and mapped give bit-identical logits") {
    const auto read = t2::io::read_gguf(shared("stories260K.gguf"));
    const auto mapped = t2::io::read_gguf(shared("stories260K.gguf"), {.mode = t2::io::load_mode::map});
    CHECK(read.weights.token_embedding.data() != mapped.weights.token_embedding.data());
    // The image starts page-aligned, so F32 tensors keep the file's 32-byte alignment.
    CHECK(reinterpret_cast<std::uintptr_t>(read.weights.token_embedding.data()) % 32 == 0);
    const model_t a(read.config, read.weights), b(mapped.config, mapped.weights);
    const std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 432, 383, 286};
    auto sa = a.make_state(16), sb = b.make_state(16);
    const t2::exec::scalar ex;
    const auto la = a.forward(ex, sa, tokens, t2::nn::logits_for::all);
    const auto lb = b.forward(ex, sb, tokens, t2::nn::logits_for::all);
    REQUIRE(la.size() == lb.size());
    CHECK(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)) == 0);
    // A truncated file is an error naming it, either way.
    const bytes_t whole = read_all(shared("stories260K.gguf"));
    const std::string cut = t2_test::temp_dir() + "/cut.gguf";
    std::ofstream(cut, std::ios::binary).write(reinterpret_cast<const char*>(whole.data()), std::streamsize(whole.size() - 100));
    for (const auto mode : {t2::io::load_mode::read, t2::io::load_mode::map})
        CHECK_THROWS_WITH_AS(t2::io::read_gguf(cut, {.mode = mode}), doctest::Contains("cut.gguf"), t2::error);
}

TEST_CASE("gguf: F32 tensors of a file are views of its image, of a memory image copies") {
    const bytes_t file = tiny_bytes();
    const std::string path = t2_test::temp_dir() + "/view.gguf";
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(file.data()), std::streamsize(file.size()));
    const auto mapped = t2::io::read_gguf(path, {.mode = t2::io::load_mode::map});
    std::remove(path.c_str()); // the mapping stays valid
    const auto copied = parse(file);
    // attn_v is F32: in the image (not copied) for the mapped file only.
    const float* v_mapped = mapped.weights.blocks[0].wv.weight().weight().data();
    const float* v_copied = copied.weights.blocks[0].wv.weight().weight().data();
    const auto in = [&](const float* p) {
        const auto* b = reinterpret_cast<const std::byte*>(p);
        return b >= file.data() && b < file.data() + file.size();
    };
    CHECK_FALSE(in(v_copied));
    CHECK(v_mapped[0] == v_copied[0]);
    const model_t model(mapped.config, mapped.weights); // usable after the file is gone
    auto state = model.make_state();
    const std::int32_t token = 3;
    CHECK(std::isfinite(model.forward(t2::exec::scalar{}, state, std::span(&token, 1)).span()[0]));
}

TEST_CASE("gguf: parsing metadata of every type") {
    tiny_spec s;
    const auto m = make_tiny(s, true, [](tiny_model& t) {
        writer& w = t.w;
        w.key("x.u8", T_U8), put<std::uint8_t>(w.meta, 200);
        w.key("x.i8", T_I8), put<std::int8_t>(w.meta, -5);
        w.key("x.u16", T_U16), put<std::uint16_t>(w.meta, 60000);
        w.key("x.i16", T_I16), put<std::int16_t>(w.meta, -300);
        w.key("x.i32", T_I32), put<std::int32_t>(w.meta, -70000);
        w.key("x.u64", T_U64), put<std::uint64_t>(w.meta, 1ull << 40);
        w.key("x.i64", T_I64), put<std::int64_t>(w.meta, -(1ll << 40));
        w.key("x.f64", T_F64), put<double>(w.meta, 0.25);
        w.key("x.bool", T_BOOL), put<std::uint8_t>(w.meta, 1);
        w.key("x.bools", T_ARR), put<std::uint32_t>(w.meta, T_BOOL), put<std::uint64_t>(w.meta, 2);
        put<std::uint8_t>(w.meta, 0), put<std::uint8_t>(w.meta, 1);
        w.key("x.empty", T_ARR), put<std::uint32_t>(w.meta, T_F64), put<std::uint64_t>(w.meta, 0);
        w.key("x.u16s", T_ARR), put<std::uint32_t>(w.meta, T_U16), put<std::uint64_t>(w.meta, 3);
        put<std::uint16_t>(w.meta, 1), put<std::uint16_t>(w.meta, 2), put<std::uint16_t>(w.meta, 3);
    });
    const bytes_t b = m.w.bytes();
    const t2::io::gguf_file f(std::span<const std::byte>(b.data(), b.size()), "types.gguf");
    CHECK(f.get_uint("x.u8") == 200u);
    CHECK(f.get_uint("x.u16") == 60000u);
    CHECK(f.get_uint("x.u64") == (1ull << 40));
    CHECK(f.get_float("x.f64") == 0.25);
    CHECK(f.get_float("llama.rope.freq_base") == 10000.0);
    CHECK(f.get_string("general.name") == "tiny");
    CHECK_FALSE(f.get_uint("no.such.key"));
    CHECK(f.get_ints("x.u16s") == std::vector<std::int64_t>{1, 2, 3});
    CHECK(f.get_ints("tokenizer.ggml.token_type").size() == s.vocab);
    CHECK(f.get_strings("tokenizer.ggml.tokens").size() == s.vocab);
    CHECK(f.find("x.bools")->count == 2);
    CHECK(f.find("x.empty")->count == 0);
    CHECK(f.alignment() == 32);
    CHECK(f.data_offset() % 32 == 0);
    // Negative values and wrong types are errors naming the key.
    for (const char* key : {"x.i8", "x.i16", "x.i32", "x.i64", "x.f64", "general.name", "x.bools"}) {
        INFO(key);
        CHECK_THROWS_WITH_AS(f.get_uint(key), doctest::Contains(key), t2::error);
    }
    CHECK_THROWS_AS(f.get_float("x.u8"), t2::error);
    CHECK_THROWS_AS(f.get_strings("x.u16s"), t2::error);
    CHECK_THROWS_AS(f.get_floats("tokenizer.ggml.tokens"), t2::error);
    CHECK(loads(b));
}

// ---- malformed files ------------------------------------------------------------------------

TEST_CASE("gguf: truncation anywhere is an error") {
    const bytes_t real = read_all(shared("stories260K.gguf"));
    std::size_t end_of_infos = 0;
    const auto fields = walk(real, end_of_infos);
    // Every byte of the header (which includes every field boundary) ...
    for (std::size_t n = 0; n <= end_of_infos + 32; ++n) {
        const bytes_t cut(real.begin(), real.begin() + std::ptrdiff_t(n));
        INFO("truncated to " << n << " bytes");
        CHECK_THROWS_AS(parse(cut), t2::error);
    }
    // ... and many points of the data section.
    const t2::philox rng(7);
    for (std::uint64_t i = 0; i < 200; ++i) {
        const std::size_t n = end_of_infos + std::size_t(rng.uniform(i) * float(real.size() - end_of_infos - 1));
        const bytes_t cut(real.begin(), real.begin() + std::ptrdiff_t(n));
        INFO("truncated to " << n << " bytes");
        CHECK_THROWS_AS(parse(cut), t2::error);
    }
    const bytes_t one_short(real.begin(), real.end() - 1);
    CHECK_THROWS_WITH_AS(parse(one_short, "short.gguf"), doctest::Contains("short.gguf"), t2::error);
    CHECK(fields.size() > 800);
}

TEST_CASE("gguf: bit flips in counts, lengths, dimensions and offsets are errors; in types never crash") {
    bytes_t real = read_all(shared("stories260K.gguf"));
    REQUIRE(loads(real));
    std::size_t end_of_infos = 0;
    const auto fields = walk(real, end_of_infos);
    std::size_t flips = 0, rejected = 0, strings = 0;
    for (const auto& f : fields) {
        // Every field but the vocabulary's 512 string lengths, of which every 8th.
        if (f.kind == field_kind::string_length && strings++ % 8 != 0)
            continue;
        const bool must_fail = f.kind != field_kind::value_type && f.kind != field_kind::ggml_type &&
                               f.kind != field_kind::value && f.kind != field_kind::array_type;
        for (std::size_t bit = 0; bit < 8 * f.size; ++bit) {
            const std::byte mask{static_cast<unsigned char>(1u << (bit % 8))};
            real[f.at + bit / 8] ^= mask; // flipped in place and back: no copy of the file
            const bool ok = loads(real);
            real[f.at + bit / 8] ^= mask;
            ++flips;
            rejected += !ok;
            if (must_fail) {
                INFO("field at " << f.at << " (kind " << int(f.kind) << "), bit " << bit);
                CHECK_FALSE(ok);
            }
        }
    }
    MESSAGE(flips << " single-bit flips in header fields, " << rejected << " rejected");
    // Random flips anywhere in the header: an error or a model, nothing else.
    const t2::philox rng(11);
    for (std::uint64_t i = 0; i < 3000; ++i) {
        std::vector<std::pair<std::size_t, std::byte>> flipped;
        for (std::uint64_t k = 0; k < 1 + i % 3; ++k) {
            const auto at = std::size_t(rng.uniform(2 * (i * 4 + k)) * float(end_of_infos));
            const auto bit = unsigned(rng.uniform(2 * (i * 4 + k) + 1) * 8.f);
            flipped.emplace_back(at, std::byte{static_cast<unsigned char>(1u << bit)});
            real[at] ^= flipped.back().second;
        }
        (void)loads(real);
        for (auto it = flipped.rbegin(); it != flipped.rend(); ++it)
            real[it->first] ^= it->second;
    }
    CHECK(loads(real));
}

TEST_CASE("gguf: header errors") {
    const bytes_t good = tiny_bytes();
    REQUIRE(loads(good));
    const auto with = [&](std::size_t at, auto v) {
        bytes_t b = good;
        poke(b, at, v);
        return b;
    };
    CHECK_THROWS_WITH_AS(parse(with(0, std::uint32_t(0x46554746))), doctest::Contains("not a GGUF file"), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(4, std::uint32_t(1))), doctest::Contains("version 1"), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(4, std::uint32_t(4))), doctest::Contains("version 4"), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(4, std::uint32_t(0x03000000))), doctest::Contains("big-endian"), t2::error);
    CHECK_THROWS_AS(parse(bytes_t{}), t2::error);
    CHECK_THROWS_AS(parse(bytes_t(3, std::byte{'G'})), t2::error);
    // Absurd counts: 2^60 tensors, 2^60 metadata entries.
    CHECK_THROWS_WITH_AS(parse(with(8, std::uint64_t(1) << 60)), doctest::Contains("tensors"), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(16, std::uint64_t(1) << 60)), doctest::Contains("metadata entries"), t2::error);
    CHECK_THROWS_AS(parse(with(8, ~std::uint64_t(0))), t2::error);
    // The first key's length, then its type.
    CHECK_THROWS_AS(parse(with(24, std::uint64_t(1) << 60)), t2::error);
    CHECK_THROWS_AS(parse(with(24, ~std::uint64_t(0))), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(24 + 8 + 20, std::uint32_t(13))), doctest::Contains("general.architecture"), t2::error);
    // The vocabulary's length: 2^60 strings; array element types that do not exist or nest.
    std::size_t end_of_infos = 0;
    const auto fields = walk(good, end_of_infos);
    std::size_t tokens_length = 0, tokens_type = 0;
    for (std::size_t i = 0; i + 1 < fields.size(); ++i)
        if (fields[i].kind == field_kind::array_type && !tokens_type) {
            tokens_type = fields[i].at;
            tokens_length = fields[i + 1].at;
        }
    REQUIRE(tokens_type);
    CHECK_THROWS_WITH_AS(parse(with(tokens_length, std::uint64_t(1) << 60)), doctest::Contains("tokenizer.ggml.tokens"), t2::error);
    CHECK_THROWS_AS(parse(with(tokens_length, ~std::uint64_t(0))), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(tokens_type, std::uint32_t(T_ARR))), doctest::Contains("array of arrays"), t2::error);
    CHECK_THROWS_AS(parse(with(tokens_type, std::uint32_t(99))), t2::error);
    // Tensor infos of the first tensor: n_dims, a dimension, the type, the offset.
    std::size_t n_dims = 0, dim = 0, type = 0, offset = 0;
    for (const auto& f : fields) {
        if (f.kind == field_kind::n_dims && !n_dims) n_dims = f.at;
        if (f.kind == field_kind::dim && !dim) dim = f.at;
        if (f.kind == field_kind::ggml_type && !type) type = f.at;
        if (f.kind == field_kind::offset && !offset) offset = f.at;
    }
    CHECK_THROWS_WITH_AS(parse(with(n_dims, std::uint32_t(5))), doctest::Contains("dimensions"), t2::error);
    CHECK_THROWS_AS(parse(with(n_dims, std::uint32_t(0))), t2::error);
    CHECK_THROWS_AS(parse(with(n_dims, ~std::uint32_t(0))), t2::error);
    CHECK_THROWS_AS(parse(with(dim, std::uint64_t(1) << 60)), t2::error);
    CHECK_THROWS_AS(parse(with(dim, ~std::uint64_t(0))), t2::error);
    CHECK_THROWS_AS(parse(with(dim, std::uint64_t(0))), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(type, std::uint32_t(G_Q4_K))), doctest::Contains("token_embd.weight has ggml type Q4_K"), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(type, std::uint32_t(1000))), doctest::Contains("unknown type 1000"), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(offset, std::uint64_t(1) << 60)), doctest::Contains("token_embd.weight"), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(offset, std::uint64_t(16))), doctest::Contains("alignment"), t2::error);
    CHECK_THROWS_WITH_AS(parse(with(offset, std::uint64_t(32))), doctest::Contains("overlap"), t2::error);
    CHECK_THROWS_AS(parse(with(offset, ~std::uint64_t(0) - 31)), t2::error);
}

TEST_CASE("gguf: semantic errors name the file and the key or tensor") {
    const auto error_with = [](const std::function<void(tiny_model&)>& meta, tiny_spec s = {},
                               bool tensors = true) {
        auto m = make_tiny(s, tensors, meta);
        return error_of(m.w.bytes(s.version));
    };
    const auto no_error = [](tiny_model&) {};
    CHECK(error_with(no_error).empty());

    // Required keys, each missing in turn (the writer adds them in this order; a missing
    // one is dropped by rewriting the metadata without it).
    for (const char* key : {"general.architecture", "llama.context_length", "llama.embedding_length",
                            "llama.feed_forward_length", "llama.block_count", "llama.attention.head_count",
                            "llama.attention.layer_norm_rms_epsilon"}) {
        INFO(key);
        tiny_model m = make_tiny({});
        // Rename the key in place (same length, so the file stays well-formed).
        std::string renamed = key;
        renamed[0] = 'X';
        auto& meta = m.w.meta;
        const auto it = std::search(meta.begin(), meta.end(), reinterpret_cast<const std::byte*>(key),
                                    reinterpret_cast<const std::byte*>(key) + std::strlen(key));
        REQUIRE(it != meta.end());
        std::memcpy(&*it, renamed.data(), renamed.size());
        const std::string e = error_of(m.w.bytes());
        CHECK(e.find("test.gguf") != std::string::npos);
        CHECK(e.find(key) != std::string::npos);
    }
    CHECK(error_with([](tiny_model& m) { m.w.str("general.name", "twice"); }).find("appears twice") != std::string::npos);
    CHECK(error_with([](tiny_model& m) { m.w.u32("llama.expert_count", 8); }).find("llama.expert_count") != std::string::npos);
    CHECK(error_with([](tiny_model& m) { m.w.str("llama.rope.scaling.type", "linear"); }).find("scaling") != std::string::npos);
    CHECK(error_with([](tiny_model& m) { m.w.u32("llama.attention.key_length", 6); }).find("key_length") != std::string::npos);
    CHECK(error_with([](tiny_model& m) { m.w.u32("llama.vocab_size", 99); }).find("llama.vocab_size") != std::string::npos);
    CHECK(error_with([](tiny_model& m) { m.w.key("x.flag", T_BOOL), put<std::uint8_t>(m.w.meta, 2); }).find("x.flag") != std::string::npos);
    {
        tiny_spec s;
        s.alignment = 0; // no general.alignment key of its own
        for (std::uint32_t a : {0u, 3u, 48u, 1u << 31}) {
            INFO("alignment " << a);
            const auto e = error_with([&](tiny_model& m) { m.w.u32("general.alignment", a); }, s, false);
            CHECK(e.find("general.alignment") != std::string::npos);
        }
        s.arch = "gpt2";
        CHECK(error_with(no_error, s).find("general.architecture is \"gpt2\"") != std::string::npos);
    }
    // Tokenizer fields.
    {
        tiny_spec s;
        s.tokenizer = false;
        const auto tok = [&](const std::function<void(writer&)>& f) {
            return error_with([&](tiny_model& m) {
                m.w.str("tokenizer.ggml.model", "llama");
                f(m.w);
            }, s);
        };
        const std::vector<std::string> pieces(s.vocab, "x");
        CHECK(tok([&](writer& w) { w.strs("tokenizer.ggml.tokens", pieces); }).empty());
        CHECK(tok([&](writer&) {}).find("tokenizer.ggml.tokens") != std::string::npos);
        CHECK(tok([&](writer& w) { w.strs("tokenizer.ggml.tokens", {"a", "b"}); }).find("tokenizer.ggml.tokens") != std::string::npos);
        CHECK(tok([&](writer& w) { w.f32s("tokenizer.ggml.tokens", {1.f}); }).find("tokenizer.ggml.tokens") != std::string::npos);
        CHECK(tok([&](writer& w) {
                  w.strs("tokenizer.ggml.tokens", pieces);
                  w.f32s("tokenizer.ggml.scores", {1.f});
              }).find("tokenizer.ggml.scores") != std::string::npos);
        CHECK(tok([&](writer& w) {
                  w.strs("tokenizer.ggml.tokens", pieces);
                  w.u32("tokenizer.ggml.bos_token_id", 5);
              }).find("bos_token_id") != std::string::npos);
        // Another tokenizer model leaves the tokenizer out.
        auto m = make_tiny(s, true, [](tiny_model& t) { t.w.str("tokenizer.ggml.model", "gpt2"); });
        const auto b = m.w.bytes();
        CHECK_FALSE(parse(b).tokenizer.has_value());
    }

    // Tensors: written by hand around a model without them.
    tiny_spec s;
    s.tied = true;
    const auto with_tensors = [&](const std::function<void(writer&, const tiny_model&)>& f) {
        tiny_model m = make_tiny(s);
        tiny_model bare = make_tiny(s, false);
        f(bare.w, m);
        return error_of(bare.w.bytes());
    };
    const auto all_but = [&](writer& w, const tiny_model& m, const std::string& skip,
                             const std::function<void(writer&)>& instead = {}) {
        // Re-adds every tensor of m except `skip`, which `instead` may replace.
        std::vector<float> unused;
        for (const auto& rec : parse(m.w.bytes()).tensors) {
            if (rec.name == skip) {
                if (instead)
                    instead(w);
                continue;
            }
            const auto& x = m.expected.at(rec.name);
            std::vector<std::uint64_t> ne(rec.shape.rbegin(), rec.shape.rend());
            w.tensor(rec.name, ne, G_F32, encode(G_F32, x, unused));
        }
    };
    CHECK(with_tensors([&](writer& w, const tiny_model& m) { all_but(w, m, ""); }).empty());
    CHECK(with_tensors([&](writer& w, const tiny_model& m) { all_but(w, m, "blk.1.ffn_up.weight"); })
              .find("tensor blk.1.ffn_up.weight is missing") != std::string::npos);
    CHECK(with_tensors([&](writer& w, const tiny_model& m) { all_but(w, m, "output_norm.weight"); })
              .find("output_norm.weight") != std::string::npos);
    CHECK(with_tensors([&](writer& w, const tiny_model& m) { all_but(w, m, "token_embd.weight"); })
              .find("token_embd.weight") != std::string::npos);
    CHECK(with_tensors([&](writer& w, const tiny_model& m) {
              all_but(w, m, "blk.0.attn_k.weight", [](writer& w2) {
                  w2.tensor("blk.0.attn_k.weight", {32, 8}, G_F32, bytes_t(32 * 8 * 4));
              });
          }).find("blk.0.attn_k.weight has shape [8, 32], expected [16, 32]") != std::string::npos);
    CHECK(with_tensors([&](writer& w, const tiny_model& m) {
              all_but(w, m, "");
              w.tensor("rope_freqs.weight", {4}, G_F32, bytes_t(16));
          }).find("rope_freqs.weight is not part") != std::string::npos);
    CHECK(with_tensors([&](writer& w, const tiny_model& m) {
              all_but(w, m, "");
              w.tensor("blk.0.attn_q.weight", {4}, G_F32, bytes_t(16));
          }).find("blk.0.attn_q.weight appears twice") != std::string::npos);
    CHECK(with_tensors([&](writer& w, const tiny_model& m) {
              all_but(w, m, "");
              w.tensor("extra", {4}, G_F32, bytes_t(16), 0);
          }).find("overlap") != std::string::npos);
    CHECK(with_tensors([&](writer& w, const tiny_model& m) {
              all_but(w, m, "");
              w.tensor("extra", {48}, G_Q8_0, bytes_t(51));
          }).find("blocks of 32") != std::string::npos);
    CHECK(with_tensors([&](writer& w, const tiny_model& m) {
              all_but(w, m, "");
              w.tensor("extra", {1, 1, 1, 1, 1}, G_F32, bytes_t(4));
          }).find("extra has 5 dimensions") != std::string::npos);
}

TEST_CASE("gguf: files that do not exist or are not files") {
    CHECK_THROWS_WITH_AS(t2::io::read_gguf("/nonexistent/model.gguf"), doctest::Contains("/nonexistent/model.gguf"), t2::error);
    CHECK_THROWS_AS(t2::io::read_gguf(t2_test::temp_dir()), t2::error);
    CHECK_THROWS_WITH_AS(t2::io::read_gguf(shared("stories260K.bin")), doctest::Contains("not a GGUF file"), t2::error);
}

// The fuzzer's seeds (fuzz/corpus/gguf/): small valid files of different shapes and types.
TEST_CASE("gguf: seed corpus") {
    tiny_spec a; // 1 layer, every type, untied, tokenizer
    a.layers = 1, a.vocab = 8, a.hidden = 8, a.seed = 21;
    tiny_spec b; // all F32, tied, v2, MQA, alignment 8, tokenizer
    b.dim = 8, b.heads = 2, b.kv_heads = 1, b.hidden = 6, b.vocab = 8, b.layers = 2, b.seq = 8;
    b.embed = b.q = b.k = b.v = b.o = b.gate = b.down = b.up = b.out = G_F32;
    b.tied = true, b.version = 2, b.alignment = 8, b.seed = 22;
    tiny_spec c; // Q8_0 and BF16 only, no tokenizer, default alignment
    c.layers = 1, c.vocab = 5, c.hidden = 32, c.heads = 2, c.kv_heads = 2, c.tokenizer = false, c.alignment = 0;
    c.embed = c.q = c.k = c.v = c.o = c.gate = c.down = c.up = c.out = G_Q8_0, c.norm = G_BF16, c.seed = 23;
    const std::pair<const char*, tiny_spec> seeds[] = {{"tiny_mixed.gguf", a}, {"tiny_f32_tied_v2.gguf", b},
                                                       {"tiny_q8_0.gguf", c}};
    const char* dir = std::getenv("T2_WRITE_GGUF_CORPUS");
    for (const auto& [name, spec] : seeds) {
        const bytes_t file = tiny_bytes(spec);
        CHECK(loads(file));
        CHECK(file.size() < 12000);
        if (dir)
            std::ofstream(std::string(dir) + "/" + name, std::ios::binary)
                .write(reinterpret_cast<const char*>(file.data()), std::streamsize(file.size()));
    }
}

// ---- export: adapted models written as GGUF -------------------------------------------------

namespace {

#if T2_ENABLE_SIMD
using export_executor = t2::exec::simd<>;
#else
using export_executor = t2::exec::scalar;
#endif
using svf_model_t = t2::nn::llama<t2::nn::llama_config, t2::adapt::svf>;

// stories260K with the SVD of every matrix of layers 1 and 3 (attention, q and k among them,
// and MLP); the other layers stay the base. Loaded and decomposed once.
struct export_base {
    t2::io::checkpoint ck;
    t2::io::tokenizer tok;
    t2::adapt::decomposition d;
};

const export_base& export_stories() {
    static const export_base s = [] {
        auto ck = t2::io::read_llama2c(shared("stories260K.bin"));
        auto tok = t2::io::read_llama2c_tokenizer(shared("tok512.bin"), ck.config.vocab_size);
        auto d = t2::adapt::decompose(t2::exec::scalar{}, ck.config, ck.weights,
                                      t2::adapt::selection::pattern("layers\\.[13]\\..*"));
        return export_base{std::move(ck), std::move(tok), std::move(d)};
    }();
    return s;
}

// z uniform in [0.5, 1.5] for every decomposed matrix.
t2::adapt::expert export_expert(const t2::adapt::decomposition& d, std::uint64_t seed, bool rescale) {
    t2::adapt::expert e{d.base_model_hash, rescale, "export " + std::to_string(seed), "", {}};
    const t2::philox rng(seed);
    std::uint64_t n = 0;
    for (const auto& m : d.matrices) {
        std::vector<float> z(m.factors.rank());
        for (float& v : z)
            v = rng.uniform(n++, 0.5f, 1.5f);
        e.z.emplace_back(m.name, std::move(z));
    }
    return e;
}

const std::vector<std::int32_t> export_tokens{1, 403, 407, 261, 378, 432, 383, 286, 5, 100, 511, 3, 260};

// The logits of every position of export_tokens.
template <class Model>
std::vector<float> all_logits(const Model& m, const typename Model::adapter_type* adapter = nullptr) {
    auto state = m.make_state(export_tokens.size());
    const auto logits = m.forward(export_executor{}, state, export_tokens, t2::nn::logits_for::all, adapter);
    return {logits.span().begin(), logits.span().end()};
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

std::vector<t2::matrix_view<const float>> block_matrices_of(const t2::nn::llama_weights<t2::nn::dense<float>>& w) {
    std::vector<t2::matrix_view<const float>> out;
    for (const auto& b : w.blocks)
        for (const auto p : t2::nn::all_projections)
            out.push_back(t2::nn::projection_of(b, p).weight().weight());
    return out;
}

// The file's tensors in order lie back to back, each at a multiple of the alignment and
// padded to the next: the only packing ggml's reader accepts.
void check_packing(const t2::io::gguf_file& f, std::size_t file_size) {
    std::uint64_t next = 0;
    for (const auto& t : f.tensors()) {
        INFO(t.name);
        CHECK(t.offset == next);
        next = (t.offset + t.data.size() + f.alignment() - 1) / f.alignment() * f.alignment();
    }
    CHECK(f.data_offset() + next == file_size);
}

std::vector<std::string> strings_of(const t2::io::gguf_file& f, std::string_view key) {
    const auto views = f.get_strings(key);
    return {views.begin(), views.end()};
}

} // namespace

TEST_CASE("gguf export: stories260K with an expert reads back with its config, vocabulary and exact logits") {
    const export_base& s = export_stories();
    const auto& c = s.ck.config;
    const svf_model_t model = t2::adapt::make_svf_model(c, s.ck.weights, s.d);
    auto adapter = t2::adapt::make_svf_adapter(model, {.rescale = true});
    t2::adapt::apply_expert(adapter, s.d, export_expert(s.d, 1, true));
    const export_executor ex;
    const auto merged = t2::adapt::merged_weights(ex, model, adapter);
    const std::string path = t2_test::temp_dir() + "/export_expert.gguf";
    t2::io::write_gguf(path, c, merged, &s.tok, {.name = "stories260K + export 1"});

    // The metadata llama.cpp's loader reads, with the types it insists on.
    const bytes_t bytes = read_all(path);
    const t2::io::gguf_file f(std::span<const std::byte>(bytes.data(), bytes.size()), path);
    CHECK(f.version() == 3);
    CHECK(f.alignment() == 32);
    check_packing(f, bytes.size());
    CHECK(f.get_string("general.architecture") == "llama");
    CHECK(f.get_string("general.name") == "stories260K + export 1");
    using t2::io::gguf_type;
    const std::pair<const char*, std::uint64_t> dims[] = {
        {"general.alignment", 32}, {"general.file_type", 0}, {"llama.vocab_size", 512},
        {"llama.context_length", 512}, {"llama.embedding_length", 64}, {"llama.block_count", 5},
        {"llama.feed_forward_length", 172}, {"llama.rope.dimension_count", 8},
        {"llama.attention.head_count", 8}, {"llama.attention.head_count_kv", 4},
        {"tokenizer.ggml.unknown_token_id", 0}, {"tokenizer.ggml.bos_token_id", 1}, {"tokenizer.ggml.eos_token_id", 2}};
    for (const auto& entry : dims) {
        const char* key = entry.first;
        INFO(key);
        REQUIRE(f.find(key));
        CHECK(f.find(key)->type == gguf_type::uint32);
        CHECK(f.get_uint(key) == entry.second);
    }
    CHECK(f.find("llama.attention.layer_norm_rms_epsilon")->type == gguf_type::float32);
    CHECK(f.get_float("llama.attention.layer_norm_rms_epsilon") == double(c.norm_eps));
    CHECK(f.find("llama.rope.freq_base")->type == gguf_type::float32);
    CHECK(f.get_float("llama.rope.freq_base") == 10000.0);
    CHECK(f.get_string("tokenizer.ggml.model") == "llama");
    CHECK(f.find("tokenizer.ggml.tokens")->element_type == gguf_type::string);
    CHECK(f.find("tokenizer.ggml.scores")->element_type == gguf_type::float32);
    CHECK(f.find("tokenizer.ggml.token_type")->element_type == gguf_type::int32);
    // The vocabulary is what llama.cpp's convert-llama2c-to-ggml wrote from the same
    // tok512.bin into stories260K.gguf: pieces, scores and token types, element for element.
    const bytes_t reference_bytes = read_all(shared("stories260K.gguf"));
    const t2::io::gguf_file reference(std::span<const std::byte>(reference_bytes.data(), reference_bytes.size()),
                                      "stories260K.gguf");
    CHECK(strings_of(f, "tokenizer.ggml.tokens") == strings_of(reference, "tokenizer.ggml.tokens"));
    CHECK(f.get_floats("tokenizer.ggml.scores") == reference.get_floats("tokenizer.ggml.scores"));
    CHECK(f.get_ints("tokenizer.ggml.token_type") == reference.get_ints("tokenizer.ggml.token_type"));
    // llama.cpp's names, every matrix F32; no output.weight: the classifier is the embedding.
    REQUIRE(f.tensors().size() == 2 + 9 * c.n_layers);
    const char* block[] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                           "ffn_norm", "ffn_gate", "ffn_down", "ffn_up"};
    CHECK(f.tensors().front().name == "token_embd.weight");
    for (std::size_t l = 0; l < c.n_layers; ++l)
        for (std::size_t i = 0; i < 9; ++i)
            CHECK(f.tensors()[1 + 9 * l + i].name == "blk." + std::to_string(l) + "." + block[i] + ".weight");
    CHECK(f.tensors().back().name == "output_norm.weight");
    for (const auto& t : f.tensors())
        CHECK(t.type == std::uint32_t(t2::io::ggml_type::f32));

    // Read back: the same configuration and tokenizer, the merged weights bit for bit.
    auto back = t2::io::read_gguf(path);
    CHECK(back.config.dim == c.dim);
    CHECK(back.config.hidden_dim == c.hidden_dim);
    CHECK(back.config.n_layers == c.n_layers);
    CHECK(back.config.n_heads == c.n_heads);
    CHECK(back.config.n_kv_heads == c.n_kv_heads);
    CHECK(back.config.vocab_size == c.vocab_size);
    CHECK(back.config.seq_len == c.seq_len);
    CHECK(back.config.norm_eps == c.norm_eps);
    CHECK(back.config.rope_theta == c.rope_theta);
    CHECK(back.config.rope_layout == c.rope_layout);
    CHECK(back.config.shared_classifier);
    REQUIRE(back.tokenizer);
    REQUIRE(back.tokenizer->vocab_size() == s.tok.vocab_size());
    for (std::int32_t i = 0; i < 512; ++i) {
        INFO("token " << i);
        CHECK(back.tokenizer->piece(i) == s.tok.piece(i));
        CHECK(back.tokenizer->score(i) == s.tok.score(i));
    }
    const auto written = block_matrices_of(merged), read = block_matrices_of(back.weights),
               base = block_matrices_of(s.ck.weights);
    for (std::size_t i = 0; i < written.size(); ++i) {
        INFO("matrix " << i);
        CHECK(same_bits(read[i].span(), written[i].span()));
        // Layers 1 and 3 are adapted, the others the base.
        const bool adapted = i / 7 == 1 || i / 7 == 3;
        CHECK(same_bits(read[i].span(), base[i].span()) != adapted);
    }
    CHECK(same_bits(back.weights.token_embedding.span(), s.ck.weights.token_embedding.span()));

    // The logits: those of the adapted model running the W's it composes, bit for bit; and
    // the expert does change them.
    t2::adapt::prepare(ex, model, adapter, 0, t2::adapt::svf_mode::composed);
    const auto adapted_logits = all_logits(model, &adapter);
    const model_t reread(back.config, std::move(back.weights));
    CHECK(same_bits(all_logits(reread), adapted_logits));
    const auto base_logits = all_logits(model_t(c, s.ck.weights));
    double moved = 0;
    for (std::size_t i = 0; i < base_logits.size(); ++i)
        moved = std::max(moved, double(std::abs(base_logits[i] - adapted_logits[i])));
    CHECK(moved > 1e-2);
}

TEST_CASE("gguf export: F16 holds the nearest halves of the weights, the logits within their rounding") {
    const export_base& s = export_stories();
    const auto& c = s.ck.config;
    const svf_model_t model = t2::adapt::make_svf_model(c, s.ck.weights, s.d);
    auto adapter = t2::adapt::make_svf_adapter(model);
    t2::adapt::apply_expert(adapter, s.d, export_expert(s.d, 2, false));
    const export_executor ex;
    const auto merged = t2::adapt::merged_weights(ex, model, adapter);
    const std::string path = t2_test::temp_dir() + "/export_f16.gguf";
    t2::io::write_gguf(path, c, merged, &s.tok, {.type = t2::io::ggml_type::f16});

    auto back = t2::io::read_gguf(path);
    for (const auto& t : back.tensors) {
        INFO(t.name);
        CHECK(t.dtype == (t.shape.size() == 1 ? "f32" : "f16")); // norms stay F32
    }
    {
        const bytes_t bytes = read_all(path);
        const t2::io::gguf_file f(std::span<const std::byte>(bytes.data(), bytes.size()), path);
        CHECK(f.get_uint("general.file_type") == 1u); // LLAMA_FTYPE_MOSTLY_F16
        check_packing(f, bytes.size());
    }
    // Every stored weight is the f32 weight rounded to nearest even (core/dtype.hpp's
    // conversion, tested against IEEE elsewhere); norms exactly.
    const auto rounded = [](std::span<const float> v) {
        std::vector<float> out(v.size());
        for (std::size_t i = 0; i < v.size(); ++i)
            out[i] = t2::detail::f16_to_f32(t2::detail::f32_to_f16(v[i]));
        return out;
    };
    const auto written = block_matrices_of(merged), read = block_matrices_of(back.weights);
    for (std::size_t i = 0; i < written.size(); ++i)
        CHECK(same_bits(read[i].span(), rounded(written[i].span())));
    CHECK(same_bits(back.weights.token_embedding.span(), rounded(merged.token_embedding.span())));
    CHECK(same_bits(back.weights.final_norm.span(), merged.final_norm.span()));

    // The bound. A product y_i = W_i·x with W_i stored as W_i + ΔW_i moves by |ΔW_i·x| ≤
    // ε‖W_i‖₂‖x‖₂ (Cauchy–Schwarz), ε = max_i ‖ΔW_i‖₂ / ‖W_i‖₂ the matrix's relative rounding,
    // at most u₁₆ = 2⁻¹¹ (F16 rounds to nearest; below 2⁻¹⁴, the subnormals, the absolute error
    // 2⁻²⁵ is measured into ε all the same). Relative to the ‖W_i‖‖x‖ scale of comment 3 of
    // support/tolerance.hpp, these errors add along the chain of its comment 2 to first order:
    // per block q and k (through the scores), v, wo, w1 and w3 (through the gate) and w2; then
    // the embedding the stream starts from and the classifier (the tied embedding, F16 too).
    // A logit therefore moves by at most Σε · sᵢ, sᵢ = ‖g‖_∞ √D ‖Wᵢ‖₂; the two evaluations
    // also round their sums differently, 2γ̃_N·sᵢ (logit_order_tolerance).
    const auto relative_rounding = [](t2::matrix_view<const float> stored, t2::matrix_view<const float> exact) {
        double worst = 0;
        for (std::size_t i = 0; i < exact.extent(0); ++i) {
            double error = 0, norm = 0;
            for (std::size_t j = 0; j < exact.extent(1); ++j) {
                const double e = double(stored(i, j)) - double(exact(i, j));
                error += e * e;
                norm += double(exact(i, j)) * double(exact(i, j));
            }
            worst = std::max(worst, norm > 0 ? std::sqrt(error / norm) : 0.0);
        }
        return worst;
    };
    const double u16 = 0x1p-11;
    double chain = 2 * relative_rounding(back.weights.token_embedding, merged.token_embedding);
    for (std::size_t i = 0; i < written.size(); ++i) {
        const double epsilon = relative_rounding(read[i], written[i]);
        INFO("matrix " << i << ": relative rounding " << epsilon);
        CHECK(epsilon <= u16);
        chain += epsilon;
    }
    const model_t adapted(c, merged), reread(back.config, std::move(back.weights));
    auto bound = t2_test::logit_order_tolerance(adapted, export_tokens.size());
    const double order = 2 * t2_test::summation_error_bound(t2_test::summation_chain_length(c, export_tokens.size()));
    for (float& b : bound)
        b = float(double(b) * (1 + chain / order)); // 2γ̃_N·sᵢ + Σε·sᵢ
    T2_CHECK_WITHIN(std::span<const float>(all_logits(reread)), std::span<const float>(all_logits(adapted)),
                    std::span<const float>(bound));
}

TEST_CASE("gguf export: a mixture of two experts is exported as the expert z' = Σ α_k z_k") {
    const export_base& s = export_stories();
    const auto& c = s.ck.config;
    const svf_model_t model = t2::adapt::make_svf_model(c, s.ck.weights, s.d);
    const std::vector<t2::adapt::expert> experts{export_expert(s.d, 3, false), export_expert(s.d, 4, false)};
    auto mixture = t2::adapt::make_mixture_adapter(model, s.d, experts);
    const std::vector<float> alpha{0.3f, 0.9f};
    t2::adapt::set_mixture_alpha(mixture, alpha);
    const export_executor ex;
    const auto merged = t2::adapt::merged_weights(ex, model, mixture);
    const std::string path = t2_test::temp_dir() + "/export_mixture.gguf";
    t2::io::write_gguf(path, c, merged, &s.tok);
    auto back = t2::io::read_gguf(path);

    // The mixture's z' of each matrix (svf_state::expert_vector) is α₀z₀ + α₁z₁ to within its
    // two roundings; an expert holding those z' exports the same W's, bit for bit.
    t2::adapt::expert mixed{s.d.base_model_hash, false, "mixed", "", {}};
    for (std::size_t l = 0; l < c.n_layers; ++l)
        for (std::size_t p = 0; p < t2::nn::projections_per_block; ++p) {
            const auto& state = mixture.matrix(l, p);
            if (!state.active())
                continue;
            const std::string name = t2::nn::matrix_name(l, t2::nn::all_projections[p]);
            const auto &z0 = *experts[0].find(name), &z1 = *experts[1].find(name);
            std::vector<float> z(z0.size());
            state.expert_vector(z);
            for (std::size_t j = 0; j < z.size(); ++j) {
                const double a = double(alpha[0]) * z0[j], b = double(alpha[1]) * z1[j];
                CHECK(std::abs(double(z[j]) - (a + b)) <= 2 * t2_test::unit_roundoff * (std::abs(a) + std::abs(b)));
            }
            mixed.z.emplace_back(name, std::move(z));
        }
    CHECK(mixed.z.size() == s.d.matrices.size());
    auto single = t2::adapt::make_svf_adapter(model);
    t2::adapt::apply_expert(single, s.d, mixed);
    const auto expected = t2::adapt::merged_weights(ex, model, single);
    const auto read = block_matrices_of(back.weights), want = block_matrices_of(expected);
    for (std::size_t i = 0; i < read.size(); ++i)
        CHECK(same_bits(read[i].span(), want[i].span()));

    t2::adapt::prepare(ex, model, mixture, 0, t2::adapt::svf_mode::composed);
    const model_t reread(back.config, std::move(back.weights));
    CHECK(same_bits(all_logits(reread), all_logits(model, &mixture)));
}

TEST_CASE("gguf export: a rotate-halves model is written in llama.cpp's interleaved layout") {
    // GQA, untied classifier, no vocabulary.
    t2::nn::llama_config c;
    c.dim = 16, c.hidden_dim = 12, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.vocab_size = 8;
    c.seq_len = 16, c.rope_layout = t2::ops::rope_layout::halves, c.shared_classifier = false;
    const auto w = t2::nn::random_weights(c, 5);
    const std::string path = t2_test::temp_dir() + "/export_halves.gguf";
    t2::io::write_gguf(path, c, w, nullptr);
    auto back = t2::io::read_gguf(path);
    CHECK(back.config.rope_layout == t2::ops::rope_layout::interleaved);
    CHECK_FALSE(back.config.shared_classifier);
    CHECK_FALSE(back.tokenizer);
    {
        const bytes_t bytes = read_all(path);
        const t2::io::gguf_file f(std::span<const std::byte>(bytes.data(), bytes.size()), path);
        CHECK(f.get_string("tokenizer.ggml.model") == "no_vocab");
        CHECK(f.tensors().back().name == "output.weight");
    }
    // Within each head of 8 rows, interleaved row 2i + j is halves row 4j + i (q and k only).
    const std::size_t hd = t2::nn::head_dim(c);
    for (std::size_t l = 0; l < c.n_layers; ++l)
        for (const auto p : {t2::nn::projection::wq, t2::nn::projection::wk, t2::nn::projection::wv}) {
            const auto got = t2::nn::projection_of(back.weights.blocks[l], p).weight().weight();
            const auto want = t2::nn::projection_of(w.blocks[l], p).weight().weight();
            for (std::size_t r = 0; r < got.extent(0); ++r) {
                const std::size_t head = r / hd, i = (r % hd) / 2, j = r % 2;
                const std::size_t source = p == t2::nn::projection::wv ? r : head * hd + j * hd / 2 + i;
                CHECK(same_bits(got.row(r).span(), want.row(source).span()));
            }
        }
    // The same logits, up to the order in which q·k sums the permuted head dimensions.
    const model_t original(c, w), reread(back.config, std::move(back.weights));
    const std::vector<std::int32_t> tokens{1, 5, 2, 7, 7, 0, 3, 6, 4, 1};
    auto a = original.make_state(), b = reread.make_state();
    const auto want = original.forward(export_executor{}, a, tokens, t2::nn::logits_for::all);
    const auto got = reread.forward(export_executor{}, b, tokens, t2::nn::logits_for::all);
    const auto bound = t2_test::logit_order_tolerance(original, tokens.size());
    T2_CHECK_WITHIN(got.span(), want.span(), std::span<const float>(bound));

    // The same model in F16: a fuzz seed (fuzz/corpus/gguf/) of the export's shape.
    const std::string seed = t2_test::temp_dir() + "/tiny_export_halves_f16.gguf";
    t2::io::write_gguf(seed, c, w, nullptr, {.type = t2::io::ggml_type::f16});
    const bytes_t file = read_all(seed);
    CHECK(loads(file));
    CHECK(file.size() < 12000);
    if (const char* dir = std::getenv("T2_WRITE_GGUF_CORPUS"))
        std::filesystem::copy_file(seed, std::string(dir) + "/tiny_export_halves_f16.gguf",
                                   std::filesystem::copy_options::overwrite_existing);
}

TEST_CASE("gguf export: bad input is refused and leaves the target as it was") {
    const export_base& s = export_stories();
    const auto& c = s.ck.config;
    const std::string dir = t2_test::temp_dir() + "/export_refusals";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const std::string path = dir + "/model.gguf";
    t2::io::write_gguf(path, c, s.ck.weights, &s.tok);
    const bytes_t good = read_all(path);
    const auto refused = [&](const std::function<void()>& write, const std::string& message) {
        INFO("wanted \"" << message << "\"");
        CHECK_THROWS_WITH_AS(write(), doctest::Contains(message.c_str()), t2::error);
        CHECK(read_all(path) == good);
        CHECK(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator{}) == 1);
    };

    // Weights the file cannot hold: F16 overflow, NaN; the error names the tensor and element.
    t2::matrix<float> big(c.hidden_dim, c.dim);
    std::copy(s.ck.weights.blocks[2].w3.weight().weight().span().begin(),
              s.ck.weights.blocks[2].w3.weight().weight().span().end(), big.span().begin());
    big(5, 7) = 70000.f;
    auto weights = s.ck.weights;
    weights.blocks[2].w3 = t2::nn::linear<t2::nn::dense<float>>(t2::nn::dense<float>(big.view(), nullptr));
    refused([&] { t2::io::write_gguf(path, c, weights, &s.tok, {.type = t2::io::ggml_type::f16}); },
            "blk.2.ffn_up.weight holds 70000 at [5, 7], beyond F16's largest value 65504");
    big(5, 7) = NAN;
    refused([&] { t2::io::write_gguf(path, c, weights, &s.tok); }, "blk.2.ffn_up.weight holds nan at [5, 7]");
    // Weights of another shape, a classifier the tied configuration would lose.
    auto other = c;
    other.hidden_dim = 100;
    refused([&] { t2::io::write_gguf(path, other, s.ck.weights, &s.tok); },
            "tensor blk.0.ffn_gate.weight is 172x64, the configuration's is 100x64");
    auto untied = s.ck.weights;
    untied.classifier = t2::nn::linear<t2::nn::dense<float>>(t2::nn::dense<float>(big.view(), nullptr));
    refused([&] { t2::io::write_gguf(path, c, untied, &s.tok); }, "the weights' classifier differs");
    // Options and vocabularies the GGUF readers refuse.
    refused([&] { t2::io::write_gguf(path, c, s.ck.weights, &s.tok, {.type = t2::io::ggml_type::q8_0}); },
            "written as F32 or F16, not Q8_0");
    refused([&] { t2::io::write_gguf(path, c, s.ck.weights, &s.tok, {.alignment = 12}); },
            "alignment 12 is not a power of two from 8");
    std::vector<std::string> pieces;
    std::vector<float> scores;
    for (std::int32_t i = 0; i < 512; ++i) {
        pieces.push_back(s.tok.piece(i));
        scores.push_back(s.tok.score(i));
    }
    pieces[300] = pieces[400];
    const t2::io::tokenizer repeated(pieces, scores);
    refused([&] { t2::io::write_gguf(path, c, s.ck.weights, &repeated); },
            "tokens 300 and 400 are both \"" + std::string(t2::io::detail::spm_piece(pieces[400], 400)) + "\"");
    pieces.resize(100), scores.resize(100);
    const t2::io::tokenizer small(pieces, scores);
    refused([&] { t2::io::write_gguf(path, c, s.ck.weights, &small); },
            "the tokenizer holds 100 tokens, the model's vocabulary is 512");

    // An adapter of another model, a mixture whose rescaled W' does not exist (α = 0).
    const svf_model_t model = t2::adapt::make_svf_model(c, s.ck.weights, s.d);
    t2::nn::llama_config tiny = c;
    tiny.n_layers = 1, tiny.vocab_size = 16, tiny.dim = 16, tiny.n_heads = 2, tiny.n_kv_heads = 1;
    const auto tiny_weights = t2::nn::random_weights(tiny, 7);
    const auto tiny_d = t2::adapt::decompose(t2::exec::scalar{}, tiny, tiny_weights, t2::adapt::selection::mlp());
    const svf_model_t other_model = t2::adapt::make_svf_model(tiny, tiny_weights, tiny_d);
    auto foreign = t2::adapt::make_svf_adapter(other_model);
    CHECK_THROWS_WITH_AS(t2::adapt::merged_weights(export_executor{}, model, foreign),
                         doctest::Contains("made for another model"), t2::error);
    const std::vector<t2::adapt::expert> experts{export_expert(s.d, 5, true), export_expert(s.d, 6, true)};
    auto mixture = t2::adapt::make_mixture_adapter(model, s.d, experts, {.rescale = true});
    t2::adapt::set_mixture_alpha(mixture, std::vector<float>{0.f, 0.f});
    CHECK_THROWS_WITH_AS(t2::adapt::merged_weights(export_executor{}, model, mixture),
                         doctest::Contains("rescaling by"), t2::error);
}
