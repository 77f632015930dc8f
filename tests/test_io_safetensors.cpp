// JSON, safetensors and Hugging Face checkpoints: the strict JSON parser and writer, the
// safetensors reader against corrupted and hostile files, the atomic writer (a writer killed
// mid-way leaves the old file intact), and Hugging Face model directories written here that
// load with exactly the weights written and agree with an independent forward pass.
//
// With T2_FUZZ_CORPUS_DIR set, also writes the fuzzers' seed corpora there
// (T2_FUZZ_CORPUS_DIR=fuzz/corpus ./t2_test_io_safetensors).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "support/check.hpp"
#include "support/killed_writer.hpp"
#include "support/temp_dir.hpp"
#include "t2/io/huggingface.hpp"
#include "t2/io/json.hpp"
#include "t2/io/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
namespace io = t2::io;
namespace json = t2::io::json;
using st = io::safetensors_dtype;

using t2_test::contains;
using t2_test::error_message;

#define CHECK_ERROR_MENTIONS(EXPR, ...)                                                    \
    do {                                                                                   \
        const std::string t2_msg = error_message([&] { (void)(EXPR); });                      \
        INFO("message: " << t2_msg);                                                       \
        for (const std::string& t2_part : std::initializer_list<std::string>{__VA_ARGS__}) \
            CHECK(contains(t2_msg, t2_part));                                              \
    } while (0)

std::span<const std::byte> bytes_of(std::string_view s) {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::vector<std::byte> read_all(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    if (!chars.empty())
        std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

void write_all(const std::string& path, std::span<const std::byte> bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    REQUIRE(out.good());
}

std::string fresh_dir(const std::string& name) {
    const std::string dir = t2_test::temp_dir() + "/" + name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

json::document parse(std::string_view text, const json::parse_options& options = {}) {
    return json::parse(text, "test.json", options);
}

} // namespace

// --- JSON --------------------------------------------------------------------------------------

TEST_CASE("json: literals, arrays, objects and whitespace") {
    const auto doc = parse(" \t\r\n{ \"a\" : [ true , false , null , \"s\" , [] , {} ] , \"b\" : {\"c\":1} }\n");
    const auto& v = doc.get();
    REQUIRE(v.is_object());
    CHECK(v.keys() == std::vector<std::string>{"a", "b"});
    const auto& a = v.find("a")->items();
    REQUIRE(a.size() == 6);
    CHECK(a[0].is_bool());
    CHECK(a[0].boolean());
    CHECK(!a[1].boolean());
    CHECK(a[2].is_null());
    CHECK(a[3].string() == "s");
    CHECK((a[4].is_array() && a[4].size() == 0));
    CHECK((a[5].is_object() && a[5].size() == 0));
    CHECK(doc.root()["b"]["c"].as_int() == 1);
    CHECK(parse("0").get().integer() == 0);
    CHECK(parse("\"\"").get().string().empty());
    CHECK(parse("\xef\xbb\xbf[1]").get().size() == 1); // a byte-order mark is skipped
}

TEST_CASE("json: numbers") {
    const auto num = [](std::string_view text) { return parse(text).get(); };
    CHECK(num("0").integer() == 0);
    CHECK(num("-0").integer() == 0);
    CHECK(std::signbit(num("-0").number()));
    CHECK(num("42").integer() == 42);
    CHECK(num("-17").integer() == -17);
    CHECK(num("9223372036854775807").integer() == INT64_MAX);
    CHECK(num("-9223372036854775808").integer() == INT64_MIN);
    // Beyond int64: a double only.
    CHECK(!num("9223372036854775808").integer());
    CHECK(num("9223372036854775808").number() == 9223372036854775808.0);
    // Integral doubles are integers when exact.
    CHECK(num("1.5e3").integer() == 1500);
    CHECK(num("2.0").integer() == 2);
    CHECK(!num("1.5").integer());
    CHECK(!num("1e300").integer());
    CHECK(num("1.5").number() == 1.5);
    CHECK(num("-2.5E-3").number() == -2.5e-3);
    CHECK(num("1e+2").number() == 100.0);
    CHECK(num("0.1").number() == 0.1);
    CHECK(num("1.7976931348623157e308").number() == 1.7976931348623157e308);
    CHECK(num("5e-324").number() == 5e-324);
    CHECK(num("1e-400").number() == 0.0); // underflow rounds to zero, as other parsers do
    CHECK(std::signbit(num("-1e-400").number()));
    CHECK(num("0.000000000000000000000000000000000000000000000000000000000000000000001e-300").number() == 0.0);
    CHECK_ERROR_MENTIONS(num("1e400"), "test.json", "out of the range");
    CHECK_ERROR_MENTIONS(num("-1e99999999999999999999"), "out of the range");
    CHECK_ERROR_MENTIONS(num("123456789e400"), "out of the range");
}

TEST_CASE("json: string escapes, \\u escapes and surrogate pairs become UTF-8") {
    CHECK(parse(R"("\"\\\/\b\f\n\r\t")").get().string() == "\"\\/\b\f\n\r\t");
    CHECK(parse(R"("\u0041\u00e9\u20AC")").get().string() == "A\xc3\xa9\xe2\x82\xac");
    CHECK(parse(R"("\ud83d\ude00")").get().string() == "\xf0\x9f\x98\x80"); // U+1F600
    CHECK(parse(R"("\uDBFF\uDFFF")").get().string() == "\xf4\x8f\xbf\xbf"); // U+10FFFF
    CHECK(parse(R"("\u0000")").get().string() == std::string(1, '\0'));
    CHECK(parse("\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"").get().string() ==
          "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST_CASE("json: invalid documents are errors naming the file and the position") {
    const char* invalid[] = {
        "", " ", "01", "-01", "1.", ".5", "+1", "1e", "1e+", "-", "--1", "0x10", "1.e3",
        "NaN", "Infinity", "-Infinity", "tru", "nul", "True", "[1,]", "[,1]", "[1 2]", "[",
        "]", "{", "}", "{\"a\":1,}", "{a:1}", "{\"a\" 1}", "{\"a\":}", "{,}", "{\"a\":1 \"b\":2}",
        "'x'", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"a\tb\"", "\"a\nb\"",
        "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\ud800x\"", "\"\\ud83d\\ud83d\"",
        "\"\xff\"", "\"\xc0\xaf\"", "\"\xe0\x80\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
        "\"\xc3\"", "\"\xe2\x82\"", "\"\x80\"", "[1] x", "1 2", "{} {}", "// c\n1", "/* c */ 1",
        "{\"a\":1,\"a\":2}", "\v1", "\f1"};
    for (const char* text : invalid) {
        INFO("document: " << text);
        CHECK_ERROR_MENTIONS(parse(text), "test.json", "invalid JSON");
    }
    CHECK_ERROR_MENTIONS(parse(std::string_view("[1,\0]", 5)), "invalid JSON");
    CHECK_ERROR_MENTIONS(parse("{\n  \"a\": 1,\n  \"b\": tru\n}"), "line 3, column 8");
    CHECK_ERROR_MENTIONS(parse("{\"x\":1,\"x\":2}"), "duplicate object key \"x\"");
}

TEST_CASE("json: depth, size and value-count limits bound hostile input") {
    const auto nested = [](std::size_t depth) {
        return std::string(depth, '[') + std::string(depth, ']');
    };
    CHECK_NOTHROW(parse(nested(64)));
    CHECK_ERROR_MENTIONS(parse(nested(65)), "deeper than 64");
    CHECK_ERROR_MENTIONS(parse(std::string(1'000'000, '[')), "deeper than 64");
    CHECK_ERROR_MENTIONS(parse(std::string(100'000, '{')), "invalid JSON");
    std::string objects;
    for (int i = 0; i < 70; ++i)
        objects += "{\"a\":";
    CHECK_ERROR_MENTIONS(parse(objects + "1" + std::string(70, '}')), "deeper than 64");
    json::parse_options small;
    small.max_depth = 3;
    small.max_bytes = 32;
    small.max_values = 5;
    CHECK_NOTHROW(parse("[[[1]]]", small));
    CHECK_ERROR_MENTIONS(parse("[[[[1]]]]", small), "deeper than 3");
    CHECK_ERROR_MENTIONS(parse(std::string(33, ' ') + "1", small), "exceeds the limit of 32 bytes");
    CHECK_NOTHROW(parse("[1,2,3,4]", small));
    CHECK_ERROR_MENTIONS(parse("[1,2,3,4,5]", small), "too many values");
}

TEST_CASE("json: lookups name the file and the key path when missing or of the wrong type") {
    const auto doc = json::parse(std::string_view(R"({"n": 3, "neg": -1, "f": 2.5, "s": "x", "a": [1, "two"],
        "o": {"inner": {"deep": null}}, "model.norm.weight": {"shape": [true]}})"),
                                 "dir/config.json");
    const auto root = doc.root();
    CHECK(root["n"].as_size() == 3);
    CHECK(root["f"].as_double() == 2.5);
    CHECK(root["n"].as_double() == 3.0);
    CHECK(root["s"].as_string() == "x");
    CHECK(root["a"].size() == 2);
    CHECK(root["a"][0].as_int() == 1);
    CHECK(root["o"]["inner"]["deep"].is_null());
    CHECK(!root.find("missing"));
    CHECK(root.find("n"));
    CHECK(!root["o"]["inner"].find_non_null("deep"));
    CHECK(root["n"].as_int(0, 3) == 3);
    CHECK(root.key(0) == "n");
    CHECK(root.member(0).as_int() == 3);

    CHECK_ERROR_MENTIONS(root["hidden_size"], "dir/config.json: missing key \"hidden_size\"");
    CHECK_ERROR_MENTIONS(root["o"]["inner"]["x"], "dir/config.json: o.inner: missing key \"x\"");
    CHECK_ERROR_MENTIONS(root["s"].as_int(), "dir/config.json: s: expected a number, found a string");
    CHECK_ERROR_MENTIONS(root["f"].as_int(), "dir/config.json: f: expected an integer, found 2.5");
    CHECK_ERROR_MENTIONS(root["neg"].as_size(), "neg: expected a non-negative integer, found -1");
    CHECK_ERROR_MENTIONS(root["n"].as_int(0, 2), "n: 3 is outside [0, 2]");
    CHECK_ERROR_MENTIONS(root["a"][1].as_int(), "dir/config.json: a[1]: expected a number, found a string");
    CHECK_ERROR_MENTIONS(root["a"][2], "a: index 2 out of range");
    CHECK_ERROR_MENTIONS(root["a"]["k"], "a: expected an object, found an array");
    CHECK_ERROR_MENTIONS(root["n"].size(), "n: expected an array or an object, found a number");
    CHECK_ERROR_MENTIONS(root["model.norm.weight"]["shape"][0].as_size(),
                         "dir/config.json: [\"model.norm.weight\"].shape[0]: expected a number, found a boolean");
    CHECK_ERROR_MENTIONS(root["o"].as_bool(), "o: expected a boolean, found an object");
    // A node keeps its document alive.
    const auto orphan = json::parse(std::string_view("{\"k\": [\"v\"]}"), "x").root()["k"][0];
    CHECK(orphan.as_string() == "v");
}

TEST_CASE("json: the writer escapes strings and round-trips every value exactly") {
    CHECK(json::to_string(json::value("a\"b\\c\n\t\x01\x1f/\xc3\xa9")) == "\"a\\\"b\\\\c\\n\\t\\u0001\\u001f/\xc3\xa9\"");
    json::value v = json::value::object();
    v.set("null", nullptr);
    v.set("t", true);
    v.set("f", false);
    v.set("i", std::int64_t{-9223372036854775807LL - 1});
    v.set("u", std::uint64_t{18446744073709551615ULL} >> 1);
    v.set("d", 0.1);
    v.set("tiny", 5e-324);
    v.set("big", 1.7976931348623157e308);
    v.set("negzero", -0.0);
    v.set("2^60+1", std::int64_t{(1LL << 60) + 1});
    v.set("s", std::string("\x7f\xf0\x9f\x98\x80 \\u"));
    json::value arr = json::value::array();
    arr.push_back(1);
    arr.push_back(json::value::array());
    arr.push_back(json::value::object());
    v.set("a", std::move(arr));
    v.set("t", false); // replaces
    const std::string text = json::to_string(v);
    const auto back = json::parse(text, "written");
    CHECK(back.get() == v);
    CHECK(back.root()["t"].as_bool() == false);
    CHECK(back.root()["2^60+1"].as_int() == (1LL << 60) + 1);
    CHECK(std::signbit(back.root()["negzero"].as_double()));
    CHECK(back.root()["tiny"].as_double() == 5e-324);
    CHECK(json::to_string(back.get()) == text);

    CHECK_THROWS_AS(json::to_string(json::value(std::string("\xff"))), t2::error);
    CHECK_THROWS_AS((void)json::value(std::nan("")), t2::error);
    CHECK_THROWS_AS((void)json::value(INFINITY), t2::error);
    CHECK_THROWS_AS((void)json::value(std::uint64_t{1} << 63), t2::error);
    CHECK_THROWS_AS(json::value(1).push_back(2), t2::error);
}

// --- safetensors -------------------------------------------------------------------------------

namespace {

// A file with the given header text and data bytes (the data is a byte ramp).
std::vector<std::byte> craft(std::string_view header, std::size_t data_bytes) {
    std::vector<std::byte> out(8 + header.size() + data_bytes);
    const std::uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    for (std::size_t i = 0; i < data_bytes; ++i)
        out[8 + header.size() + i] = std::byte(i * 7 + 3);
    return out;
}

io::safetensors_file open_bytes(std::span<const std::byte> bytes) {
    return io::safetensors_file(bytes, "test.safetensors");
}

// Tensors of several dtypes and shapes, in an order that is not the writer's.
struct sample_tensors {
    std::vector<float> f32 = std::vector<float>(15);
    std::vector<t2::bf16> bf16_values = std::vector<t2::bf16>(7);
    std::vector<t2::f16> f16_values = std::vector<t2::f16>(6);
    std::vector<std::int32_t> i32{-1, 2, 3};
    std::vector<std::uint8_t> u8{1, 2, 3, 4, 5};
    std::vector<float> scalar{3.25f};
    std::vector<float> empty;

    sample_tensors() {
        t2_test::fill_uniform(f32, 1);
        std::vector<float> tmp(7);
        t2_test::fill_uniform(tmp, 2, -100.f, 100.f);
        for (std::size_t i = 0; i < tmp.size(); ++i)
            bf16_values[i] = t2::from_f32<t2::bf16>(tmp[i]);
        t2_test::fill_uniform(tmp, 3, -3.f, 3.f);
        for (std::size_t i = 0; i < f16_values.size(); ++i)
            f16_values[i] = t2::from_f32<t2::f16>(tmp[i]);
    }

    std::vector<io::safetensors_entry> entries() const {
        return {
            io::make_safetensors_entry<t2::bf16>("b.bf16", bf16_values, {7}),
            io::make_safetensors_entry<std::uint8_t>("u8", u8, {5, 1}),
            io::make_safetensors_entry<float>("a.f32", f32, {3, 5}),
            io::make_safetensors_entry<t2::f16>("model.layers.0.f16", f16_values, {2, 1, 3}),
            io::make_safetensors_entry<std::int32_t>("i32", i32, {3}),
            io::make_safetensors_entry<float>("scalar", scalar, {}),
            io::make_safetensors_entry<float>("empty", empty, {0, 4}),
        };
    }
};

} // namespace

namespace {

// The bytes of a file: u64 length, header, data.
std::vector<std::byte> file_bytes(std::uint64_t n, std::string_view header, std::span<const std::byte> data) {
    std::vector<std::byte> out(8);
    std::memcpy(out.data(), &n, 8);
    const auto h = bytes_of(header);
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

} // namespace

TEST_CASE("safetensors: the writer gives the reference implementation's bytes") {
    // Known answers from the format's reference (Rust) serializer's own tests.
    CHECK(io::serialize_safetensors({}) == file_bytes(8, "{}      ", {}));
    const io::safetensors_metadata framework{{"framework", "pt"}};
    CHECK(io::serialize_safetensors({}, framework) ==
          file_bytes(40, R"({"__metadata__":{"framework":"pt"}}     )", {}));
    const std::vector<float> values{0.f, 1.f, 2.f, 3.f, 4.f, 5.f};
    const auto attn0 = io::serialize_safetensors({io::make_safetensors_entry<float>("attn0", values, {1, 1, 2, 3})});
    CHECK(attn0 == file_bytes(72, R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       )",
                              std::as_bytes(std::span(values))));
    // Its order: dtype descending, then name, whatever order the tensors come in.
    const std::vector<std::uint8_t> u8{1, 2, 3};
    const std::vector<t2::bf16> b16(3);
    const std::vector<double> f64{1.0};
    const std::vector<io::safetensors_entry> mixed{
        io::make_safetensors_entry<std::uint8_t>("a", u8, {3}), io::make_safetensors_entry<float>("z", values, {6}),
        io::make_safetensors_entry<t2::bf16>("b", b16, {3}), io::make_safetensors_entry<float>("c", values, {2, 3}),
        io::make_safetensors_entry<double>("y", f64, {1})};
    const auto bytes = io::serialize_safetensors(mixed);
    const io::safetensors_file f(bytes, "mixed");
    const std::pair<const char*, std::size_t> expected[] = {{"y", 0}, {"c", 8}, {"z", 32}, {"b", 56}, {"a", 62}};
    for (const auto& e : expected) {
        INFO(e.first);
        CHECK(f.at(e.first).offset - 8 - f.header_size() == e.second);
    }
    std::vector<io::safetensors_entry> reversed(mixed.rbegin(), mixed.rend());
    CHECK(io::serialize_safetensors(reversed) == bytes);
}

TEST_CASE("safetensors: F32, F16, BF16 and integer tensors and metadata round-trip through a file") {
    const sample_tensors s;
    const io::safetensors_metadata metadata{
        {"format", "pt"}, {"base_model_sha256", std::string(64, 'a')}, {"quote\"\\", "line\nbreak \xc3\xa9"},
        {"empty", ""}};
    const std::string path = fresh_dir("roundtrip") + "/t.safetensors";
    std::vector<std::pair<std::size_t, std::size_t>> progress;
    io::safetensors_write_options options;
    options.chunk_bytes = 16;
    options.progress = [&](std::size_t written, std::size_t total) { progress.emplace_back(written, total); };
    io::write_safetensors(path, s.entries(), metadata, options);

    const auto bytes = read_all(path);
    CHECK(bytes == io::serialize_safetensors(s.entries(), metadata));
    REQUIRE(!progress.empty());
    CHECK(progress.back().first == bytes.size());
    CHECK(progress.back().second == bytes.size());

    const io::safetensors_file f(path);
    CHECK(f.name() == path);
    CHECK((8 + f.header_size()) % 8 == 0);
    CHECK(f.metadata() == metadata);
    REQUIRE(f.tensors().size() == 7);
    for (const auto& t : f.tensors()) {
        INFO(t.name);
        // Largest elements first: every tensor is aligned to its element size.
        CHECK(t.offset % std::max<std::size_t>(io::size_of(t.dtype), 1) == 0);
    }
    const auto& a = f.at("a.f32");
    CHECK(a.dtype == st::f32);
    CHECK(a.dtype_name == "F32");
    CHECK(a.shape == std::vector<std::size_t>{3, 5});
    CHECK(a.numel == 15);
    CHECK(std::ranges::equal(f.view<float>(a), s.f32));
    CHECK(f.to_f32(a) == s.f32);

    const auto& b = f.at("b.bf16");
    CHECK(b.dtype == st::bf16);
    CHECK(b.shape == std::vector<std::size_t>{7});
    CHECK(std::ranges::equal(f.view<t2::bf16>(b), s.bf16_values));
    const auto bf = f.to_f32(b);
    for (std::size_t i = 0; i < bf.size(); ++i)
        CHECK(bf[i] == t2::to_f32(s.bf16_values[i]));

    const auto& h = f.at("model.layers.0.f16");
    CHECK(h.dtype == st::f16);
    CHECK(h.shape == std::vector<std::size_t>{2, 1, 3});
    const auto hf = f.to_f32(h);
    for (std::size_t i = 0; i < hf.size(); ++i)
        CHECK(hf[i] == t2::to_f32(s.f16_values[i]));

    CHECK(std::ranges::equal(f.view<std::int32_t>(f.at("i32")), s.i32));
    CHECK(std::ranges::equal(f.view<std::uint8_t>(f.at("u8")), s.u8));
    CHECK(f.at("u8").shape == std::vector<std::size_t>{5, 1});
    CHECK(f.at("scalar").shape.empty());
    CHECK(f.at("scalar").numel == 1);
    CHECK(f.to_f32(f.at("scalar")) == std::vector<float>{3.25f});
    CHECK(f.at("empty").numel == 0);
    CHECK(f.at("empty").data.empty());
    CHECK(f.to_f32(f.at("empty")).empty());
    CHECK(f.find("missing") == nullptr);
    CHECK_ERROR_MENTIONS(f.at("missing"), path, "no tensor named \"missing\"");
    CHECK_ERROR_MENTIONS(f.to_f32(f.at("i32")), path, "\"i32\"", "dtype I32");
    CHECK_ERROR_MENTIONS(f.view<float>(f.at("i32")), "\"i32\" has dtype I32, not F32");
    std::vector<float> wrong(3);
    CHECK_ERROR_MENTIONS(f.to_f32(a, wrong), "15 elements");

    // Known half-precision bit patterns decode to their values.
    const std::uint16_t halves[] = {0x3c00, 0xc000, 0x0001, 0x7bff};
    const std::uint16_t brains[] = {0x3f80, 0xc000, 0x0001, 0x7f7f};
    const auto hb = io::serialize_safetensors(
        {{"h", st::f16, {4}, std::as_bytes(std::span(halves))}, {"b", st::bf16, {4}, std::as_bytes(std::span(brains))}});
    const auto hfile = open_bytes(hb);
    CHECK(hfile.to_f32(hfile.at("h")) == std::vector<float>{1.f, -2.f, 0x1p-24f, 65504.f});
    CHECK(hfile.to_f32(hfile.at("b")) == std::vector<float>{1.f, -2.f, std::bit_cast<float>(0x00010000u), 0x1.fep127f});

    // A file of no tensors is valid.
    const auto none = io::serialize_safetensors({});
    CHECK(open_bytes(none).tensors().empty());
    // From a tensor view: the shape comes along.
    const auto m = t2_test::random_matrix(4, 3, 9);
    const auto e = io::make_safetensors_entry("m", m.view());
    CHECK(e.shape == std::vector<std::size_t>{4, 3});
    CHECK(e.dtype == st::f32);
    CHECK(e.data.size() == 48);
}

TEST_CASE("safetensors: the writer refuses what it cannot write") {
    const std::vector<float> x(6);
    const std::string dir = fresh_dir("write_errors");
    const auto entry = [&](std::string name, std::vector<std::size_t> shape) {
        return io::make_safetensors_entry<float>(std::move(name), x, std::move(shape));
    };
    CHECK_ERROR_MENTIONS(io::write_safetensors(dir + "/a", {entry("x", {2, 4})}), dir + "/a", "\"x\"", "needs 32 bytes, given 24");
    CHECK_ERROR_MENTIONS(io::write_safetensors(dir + "/a", {entry("x", {2, 3}), entry("x", {6})}), "two tensors are named \"x\"");
    CHECK_ERROR_MENTIONS(io::write_safetensors(dir + "/a", {entry("__metadata__", {6})}), "cannot name a tensor");
    CHECK_ERROR_MENTIONS(io::write_safetensors(dir + "/a", {entry("", {6})}), "cannot name a tensor");
    CHECK_ERROR_MENTIONS(io::write_safetensors(dir + "/a", {entry("x", {SIZE_MAX / 2, 4})}), "overflows");
    CHECK_ERROR_MENTIONS(io::write_safetensors(dir + "/a", {entry("\xff", {6})}), "invalid UTF-8");
    CHECK_ERROR_MENTIONS(io::write_safetensors(dir + "/no/such/dir/a", {entry("x", {6})}), dir + "/no/such/dir/a",
                         "cannot create the temporary file");
    CHECK(fs::is_empty(dir));
}

TEST_CASE("safetensors: corrupted and hostile files are errors that name the file and tensor") {
    const auto open = [](std::string_view header, std::size_t data) {
        const auto bytes = craft(header, data);
        return io::safetensors_file(bytes, "bad.safetensors");
    };
    const auto tensor = [](std::string_view dtype, std::string_view shape, std::string_view offsets) {
        return "{\"w\":{\"dtype\":\"" + std::string(dtype) + "\",\"shape\":" + std::string(shape) +
               ",\"data_offsets\":" + std::string(offsets) + "}}";
    };
    CHECK_NOTHROW(open(tensor("F32", "[2,3]", "[0,24]"), 24));

    // Lengths and framing.
    for (std::size_t size = 0; size < 8; ++size) {
        const std::vector<std::byte> tiny(size, std::byte{'{'});
        CHECK_ERROR_MENTIONS(io::safetensors_file(tiny, "bad.safetensors"), "bad.safetensors", "too short");
    }
    for (const std::uint64_t n : {std::uint64_t{100'000'001}, std::uint64_t{1} << 63, ~std::uint64_t{0}}) {
        auto bytes = craft("{}", 0);
        std::memcpy(bytes.data(), &n, 8);
        CHECK_ERROR_MENTIONS(io::safetensors_file(bytes, "bad.safetensors"), "bad.safetensors", "header length");
    }
    {
        auto bytes = craft("{}      ", 0);
        const std::uint64_t n = 9;
        std::memcpy(bytes.data(), &n, 8);
        CHECK_ERROR_MENTIONS(io::safetensors_file(bytes, "bad.safetensors"), "truncated", "needs 9 bytes");
    }
    CHECK_ERROR_MENTIONS(open("", 0), "does not begin with '{'");
    CHECK_ERROR_MENTIONS(open(" {}", 0), "does not begin with '{'");
    CHECK_ERROR_MENTIONS(open("[]", 0), "does not begin with '{'");
    CHECK_ERROR_MENTIONS(open("{\"w\":", 0), "bad.safetensors", "invalid JSON");
    CHECK_ERROR_MENTIONS(open(std::string_view("{}\0\0\0\0\0\0", 8), 0), "invalid JSON");
    CHECK_NOTHROW(open("{}          ", 0));

    // Tensor entries.
    CHECK_ERROR_MENTIONS(open("{\"w\":1}", 0), "bad.safetensors: tensor \"w\"", "expected an object");
    CHECK_ERROR_MENTIONS(open("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "tensor \"w\"", "missing key \"dtype\"");
    CHECK_ERROR_MENTIONS(open("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4), "missing key \"shape\"");
    CHECK_ERROR_MENTIONS(open("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), "missing key \"data_offsets\"");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[0,4]").replace(14, 5, "32"), 4), "tensor \"w\".dtype", "expected a string");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[-1]", "[0,4]"), 4), "tensor \"w\".shape[0]", "non-negative");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[2.5]", "[0,10]"), 10), "tensor \"w\".shape[0]", "expected an integer");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "2", "[0,8]"), 8), "tensor \"w\".shape", "expected an array");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[\"2\"]", "[0,8]"), 8), "tensor \"w\".shape[0]", "found a string");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[4294967296,4294967296,4294967296]", "[0,8]"), 8), "overflows");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[4611686018427387904]", "[0,8]"), 8), "overflows");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[0]"), 4), "data_offsets", "expected [begin, end]");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[0,4,8]"), 8), "expected [begin, end]");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "{}"), 4), "data_offsets");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[0,-4]"), 4), "non-negative");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[4,0]"), 4), "tensor \"w\".data_offsets", "not inside the 4-byte data section");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[0,8]"), 4), "not inside the 4-byte data section");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[0,18446744073709551615]"), 4), "expected an integer");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[0,1e30]"), 4), "expected an integer");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[2,3]", "[0,20]"), 20), "tensor \"w\"", "needs 24 bytes, the offsets span 20");
    CHECK_ERROR_MENTIONS(open(tensor("BF16", "[2,3]", "[0,24]"), 24), "dtype BF16 needs 12 bytes");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[]", "[0,8]"), 8), "needs 4 bytes");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[0]", "[0,4]"), 4), "needs 0 bytes");
    // Tiling: gaps, overlaps, trailing bytes.
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[4,8]"), 8), "data bytes 0..4 belong to no tensor");
    CHECK_ERROR_MENTIONS(open(tensor("F32", "[1]", "[0,4]"), 5), "1 bytes after the last tensor");
    CHECK_ERROR_MENTIONS(open("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12),
                         "bad.safetensors", "\"b\"", "overlaps tensor \"a\"");
    CHECK_ERROR_MENTIONS(open("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8),
                         "overlaps");
    CHECK_ERROR_MENTIONS(open("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                              "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8),
                         "overlaps");
    CHECK_NOTHROW(open("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}", 8));
    CHECK_ERROR_MENTIONS(open("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                              "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
                         "duplicate object key \"a\"");
    // Metadata.
    CHECK_ERROR_MENTIONS(open("{\"__metadata__\":{\"k\":1}}", 0), "bad.safetensors: __metadata__.k", "expected a string");
    CHECK_ERROR_MENTIONS(open("{\"__metadata__\":[]}", 0), "__metadata__", "expected an object");
    CHECK(open("{\"__metadata__\":null}", 0).metadata().empty());
    // Unknown dtypes are accepted while parsing and refused when decoded.
    const auto unknown = craft(tensor("F4", "[8]", "[0,4]"), 4);
    const io::safetensors_file f(unknown, "new.safetensors");
    CHECK(f.at("w").dtype == st::unknown);
    CHECK(f.at("w").dtype_name == "F4");
    CHECK_ERROR_MENTIONS(f.to_f32(f.at("w")), "new.safetensors", "\"w\"", "dtype F4");
    CHECK_ERROR_MENTIONS(f.view<float>(f.at("w")), "dtype F4");
    // Files that are not regular files, or missing.
    const std::string dir = fresh_dir("not_files");
    CHECK_ERROR_MENTIONS(io::safetensors_file(dir), dir, "not a regular file");
    CHECK_ERROR_MENTIONS(io::safetensors_file(dir + "/missing"), dir + "/missing", "cannot open");
    write_all(dir + "/empty", {});
    CHECK_ERROR_MENTIONS(io::safetensors_file(dir + "/empty"), dir + "/empty", "too short");
}

TEST_CASE("safetensors: every truncation and many byte changes give an error, never a crash") {
    const sample_tensors s;
    const auto good = io::serialize_safetensors(s.entries(), {{"k", "v"}});
    CHECK_NOTHROW(open_bytes(good));
    for (std::size_t size = 0; size < good.size(); ++size) {
        // A separate allocation of exactly `size` bytes, so the sanitizers see any overread.
        const std::vector<std::byte> cut(good.begin(), good.begin() + std::ptrdiff_t(size));
        INFO("truncated to " << size << " bytes");
        CHECK_THROWS_AS(open_bytes(cut), t2::error);
    }
    std::uint64_t header = 0;
    std::memcpy(&header, good.data(), 8);
    std::size_t loaded = 0, rejected = 0;
    for (std::size_t i = 0; i < 8 + header; ++i)
        for (const int value : {0x00, 0x20, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x7b, 0x7d, 0x80, 0xff}) {
            auto bytes = good;
            bytes[i] = std::byte(value);
            try {
                const auto f = open_bytes(bytes);
                for (const auto& t : f.tensors())
                    if (t.dtype == st::f32 || t.dtype == st::f16 || t.dtype == st::bf16)
                        (void)f.to_f32(t);
                ++loaded;
            } catch (const t2::error&) {
                ++rejected;
            }
        }
    CHECK(rejected > 0);
    MESSAGE(loaded, " changed files loaded, ", rejected, " rejected");
}

TEST_CASE("safetensors: a writer killed mid-way leaves the old file intact") {
    const std::string dir = fresh_dir("atomic");
    const std::string path = dir + "/model.safetensors";
    const sample_tensors s;
    io::write_safetensors(path, s.entries(), {{"version", "old"}});
    const auto old_bytes = read_all(path);

    const std::vector<float> big(std::size_t{16} << 18, 1.5f); // 16 MiB
    const std::vector<io::safetensors_entry> replacement{io::make_safetensors_entry<float>("big", big, {big.size()})};
    // A quarter written, the child blocks; its temporary file is what it left.
    std::vector<fs::path> temps;
    t2_test::kill_writer_midway(
        [&](const io::safetensors_write_options& options) {
            io::write_safetensors(path, replacement, {{"version", "new"}}, options);
        },
        std::size_t{4} << 20,
        [&] {
            for (const auto& e : fs::directory_iterator(dir))
                if (e.path().filename().string().starts_with(".model.safetensors.tmp."))
                    temps.push_back(e.path());
        });
    REQUIRE(temps.size() == 1);
    CHECK(fs::file_size(temps[0]) >= (std::size_t{4} << 20));
    CHECK(fs::file_size(temps[0]) < 8 + 128 + big.size() * 4);

    CHECK(read_all(path) == old_bytes);
    const io::safetensors_file f(path);
    CHECK(f.metadata().at("version") == "old");
    CHECK(f.to_f32(f.at("a.f32")) == s.f32);
    // What the killed writer left is a truncated file, rejected as such.
    CHECK_ERROR_MENTIONS(io::safetensors_file(temps[0].string()), "not inside");
    fs::remove(temps[0]);

    // A writer that fails in-process removes its temporary file; the target is untouched.
    io::safetensors_write_options failing;
    failing.chunk_bytes = std::size_t{1} << 20;
    failing.progress = [](std::size_t written, std::size_t) {
        if (written > (std::size_t{2} << 20))
            throw t2::error("interrupted");
    };
    CHECK_THROWS_WITH(io::write_safetensors(path, replacement, {}, failing), "interrupted");
    CHECK(read_all(path) == old_bytes);
    CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);

    // A finished write replaces the file and leaves nothing else behind.
    io::write_safetensors(path, replacement, {{"version", "new"}});
    const io::safetensors_file g(path);
    CHECK(g.metadata().at("version") == "new");
    CHECK(g.to_f32(g.at("big")) == big);
    CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);
}

// --- Hugging Face checkpoints ------------------------------------------------------------------

namespace {

struct hf_spec {
    std::size_t dim, hidden, layers, heads, kv_heads, vocab, seq;
    bool tied;
    st dtype;
    float eps = 1e-5f, theta = 10000.f;
};

// A tensor to write, and the f32 values a reader must produce from it.
struct hf_tensor {
    std::string name;
    st dtype;
    std::vector<std::size_t> shape;
    std::vector<std::byte> bytes;
    std::vector<float> values;
};

hf_tensor make_hf_tensor(std::string name, std::vector<std::size_t> shape, st dtype, std::uint64_t seed,
                         float lo = -0.5f, float hi = 0.5f) {
    std::size_t n = 1;
    for (const auto d : shape)
        n *= d;
    hf_tensor t{std::move(name), dtype, std::move(shape), {}, std::vector<float>(n)};
    t2_test::fill_uniform(t.values, seed, lo, hi);
    t.bytes.resize(n * io::size_of(dtype));
    for (std::size_t i = 0; i < n; ++i) {
        if (dtype == st::f32) {
            std::memcpy(t.bytes.data() + 4 * i, &t.values[i], 4);
        } else {
            const std::uint16_t bits = dtype == st::bf16 ? t2::from_f32<t2::bf16>(t.values[i]).bits
                                                         : t2::from_f32<t2::f16>(t.values[i]).bits;
            std::memcpy(t.bytes.data() + 2 * i, &bits, 2);
            t.values[i] = dtype == st::bf16 ? t2::to_f32(t2::bf16{bits}) : t2::to_f32(t2::f16{bits});
        }
    }
    return t;
}

std::vector<hf_tensor> hf_tensors(const hf_spec& s, std::uint64_t seed) {
    std::vector<hf_tensor> out;
    const std::size_t hd = s.dim / s.heads, kv = hd * s.kv_heads;
    const auto add = [&](std::string name, std::vector<std::size_t> shape, bool norm = false) {
        out.push_back(make_hf_tensor(std::move(name), std::move(shape), s.dtype, seed + out.size(),
                                     norm ? 0.5f : -0.5f, norm ? 1.5f : 0.5f));
    };
    add("model.embed_tokens.weight", {s.vocab, s.dim});
    for (std::size_t l = 0; l < s.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        add(p + "input_layernorm.weight", {s.dim}, true);
        add(p + "self_attn.q_proj.weight", {s.dim, s.dim});
        add(p + "self_attn.k_proj.weight", {kv, s.dim});
        add(p + "self_attn.v_proj.weight", {kv, s.dim});
        add(p + "self_attn.o_proj.weight", {s.dim, s.dim});
        add(p + "post_attention_layernorm.weight", {s.dim}, true);
        add(p + "mlp.gate_proj.weight", {s.hidden, s.dim});
        add(p + "mlp.up_proj.weight", {s.hidden, s.dim});
        add(p + "mlp.down_proj.weight", {s.dim, s.hidden});
    }
    add("model.norm.weight", {s.dim}, true);
    if (!s.tied)
        add("lm_head.weight", {s.vocab, s.dim});
    return out;
}

json::value hf_config(const hf_spec& s) {
    json::value c = json::value::object();
    c.set("architectures", json::value::array());
    c.set("model_type", "llama");
    c.set("hidden_size", s.dim);
    c.set("intermediate_size", s.hidden);
    c.set("num_hidden_layers", s.layers);
    c.set("num_attention_heads", s.heads);
    c.set("num_key_value_heads", s.kv_heads);
    c.set("vocab_size", s.vocab);
    c.set("max_position_embeddings", s.seq);
    c.set("rms_norm_eps", double(s.eps));
    c.set("rope_theta", double(s.theta));
    c.set("tie_word_embeddings", s.tied);
    c.set("hidden_act", "silu");
    c.set("rope_scaling", nullptr);
    c.set("attention_bias", false);
    c.set("torch_dtype", s.dtype == st::f32 ? "float32" : "bfloat16");
    c.set("bos_token_id", 1);
    return c;
}

std::vector<io::safetensors_entry> entries_of(const std::vector<const hf_tensor*>& tensors) {
    std::vector<io::safetensors_entry> out;
    for (const auto* t : tensors)
        out.push_back({t->name, t->dtype, t->shape, t->bytes});
    return out;
}

// Writes config.json and the tensors, in one file or split over `shards` files with an index.
void write_hf(const std::string& dir, const json::value& config, const std::vector<hf_tensor>& tensors,
              std::size_t shards = 1) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string text = json::to_string(config);
    io::write_file_atomically(dir + "/config.json", bytes_of(text));
    if (shards == 1) {
        std::vector<const hf_tensor*> all;
        for (const auto& t : tensors)
            all.push_back(&t);
        io::write_safetensors(dir + "/model.safetensors", entries_of(all), {{"format", "pt"}});
        return;
    }
    json::value map = json::value::object();
    for (std::size_t k = 0; k < shards; ++k) {
        const std::string file = "model-0000" + std::to_string(k + 1) + "-of-0000" + std::to_string(shards) + ".safetensors";
        std::vector<const hf_tensor*> part;
        for (std::size_t i = k; i < tensors.size(); i += shards) {
            part.push_back(&tensors[i]);
            map.set(tensors[i].name, file);
        }
        io::write_safetensors(dir + "/" + file, entries_of(part), {{"format", "pt"}});
    }
    json::value index = json::value::object();
    json::value meta = json::value::object();
    meta.set("total_size", 1234);
    index.set("metadata", std::move(meta));
    index.set("weight_map", std::move(map));
    const std::string index_text = json::to_string(index);
    io::write_file_atomically(dir + "/model.safetensors.index.json", bytes_of(index_text));
}

// An independent forward pass written from transformers' LlamaForCausalLM (in double):
// rotate-halves RoPE, causal softmax attention with grouped KV heads, SwiGLU. Returns the
// logits of every position.
std::vector<std::vector<double>> reference_logits(const hf_spec& s, const std::vector<hf_tensor>& tensors,
                                                  const std::vector<std::int32_t>& tokens) {
    std::map<std::string, const std::vector<float>*> w;
    for (const auto& t : tensors)
        w[t.name] = &t.values;
    const auto W = [&](const std::string& name) -> const std::vector<float>& {
        REQUIRE(w.count(name));
        return *w[name];
    };
    const std::size_t D = s.dim, hd = D / s.heads, T = tokens.size();
    using vec = std::vector<double>;
    const auto linear = [](const std::vector<float>& m, const vec& x, std::size_t out) {
        vec y(out, 0.0);
        for (std::size_t o = 0; o < out; ++o)
            for (std::size_t i = 0; i < x.size(); ++i)
                y[o] += double(m[o * x.size() + i]) * x[i];
        return y;
    };
    const auto rmsnorm = [&](const vec& x, const std::vector<float>& g) {
        double ss = 0;
        for (const double v : x)
            ss += v * v;
        const double r = 1.0 / std::sqrt(ss / double(x.size()) + double(s.eps));
        vec y(x.size());
        for (std::size_t i = 0; i < x.size(); ++i)
            y[i] = x[i] * r * double(g[i]);
        return y;
    };
    const auto rope = [&](vec& x, std::size_t pos) {
        for (std::size_t h = 0; h < x.size() / hd; ++h)
            for (std::size_t i = 0; i < hd / 2; ++i) {
                const double freq = std::pow(double(s.theta), -2.0 * double(i) / double(hd));
                const double c = std::cos(double(pos) * freq), sn = std::sin(double(pos) * freq);
                double& a = x[h * hd + i];
                double& b = x[h * hd + i + hd / 2];
                const double a0 = a, b0 = b;
                a = a0 * c - b0 * sn;
                b = b0 * c + a0 * sn;
            }
    };
    std::vector<vec> x(T);
    for (std::size_t t = 0; t < T; ++t) {
        const auto& emb = W("model.embed_tokens.weight");
        x[t].assign(emb.begin() + std::ptrdiff_t(tokens[t] * D), emb.begin() + std::ptrdiff_t((tokens[t] + 1) * D));
    }
    const std::size_t kv = hd * s.kv_heads;
    for (std::size_t l = 0; l < s.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        std::vector<vec> q(T), k(T), v(T);
        for (std::size_t t = 0; t < T; ++t) {
            const vec h = rmsnorm(x[t], W(p + "input_layernorm.weight"));
            q[t] = linear(W(p + "self_attn.q_proj.weight"), h, D);
            k[t] = linear(W(p + "self_attn.k_proj.weight"), h, kv);
            v[t] = linear(W(p + "self_attn.v_proj.weight"), h, kv);
            rope(q[t], t);
            rope(k[t], t);
        }
        for (std::size_t t = 0; t < T; ++t) {
            vec att(D, 0.0);
            for (std::size_t h = 0; h < s.heads; ++h) {
                const std::size_t g = h / (s.heads / s.kv_heads);
                vec scores(t + 1);
                double top = -1e300;
                for (std::size_t u = 0; u <= t; ++u) {
                    double dot = 0;
                    for (std::size_t i = 0; i < hd; ++i)
                        dot += q[t][h * hd + i] * k[u][g * hd + i];
                    scores[u] = dot / std::sqrt(double(hd));
                    top = std::max(top, scores[u]);
                }
                double sum = 0;
                for (auto& sc : scores)
                    sum += sc = std::exp(sc - top);
                for (std::size_t u = 0; u <= t; ++u)
                    for (std::size_t i = 0; i < hd; ++i)
                        att[h * hd + i] += scores[u] / sum * v[u][g * hd + i];
            }
            const vec o = linear(W(p + "self_attn.o_proj.weight"), att, D);
            for (std::size_t i = 0; i < D; ++i)
                x[t][i] += o[i];
            const vec h = rmsnorm(x[t], W(p + "post_attention_layernorm.weight"));
            vec gate = linear(W(p + "mlp.gate_proj.weight"), h, s.hidden);
            const vec up = linear(W(p + "mlp.up_proj.weight"), h, s.hidden);
            for (std::size_t i = 0; i < s.hidden; ++i)
                gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
            const vec down = linear(W(p + "mlp.down_proj.weight"), gate, D);
            for (std::size_t i = 0; i < D; ++i)
                x[t][i] += down[i];
        }
    }
    std::vector<vec> logits(T);
    for (std::size_t t = 0; t < T; ++t)
        logits[t] = linear(W(s.tied ? "model.embed_tokens.weight" : "lm_head.weight"),
                           rmsnorm(x[t], W("model.norm.weight")), s.vocab);
    return logits;
}

void check_loaded(const io::checkpoint& ck, const hf_spec& s, const std::vector<hf_tensor>& tensors) {
    const auto& c = ck.config;
    CHECK(c.dim == s.dim);
    CHECK(c.hidden_dim == s.hidden);
    CHECK(c.n_layers == s.layers);
    CHECK(c.n_heads == s.heads);
    CHECK(c.n_kv_heads == s.kv_heads);
    CHECK(c.vocab_size == s.vocab);
    CHECK(c.seq_len == s.seq);
    CHECK(c.norm_eps == s.eps);
    CHECK(c.rope_theta == s.theta);
    CHECK(c.rope_layout == t2::ops::rope_layout::halves);
    CHECK(c.shared_classifier == s.tied);
    CHECK(!ck.tokenizer);
    CHECK(ck.tensors.size() == tensors.size());

    // Every weight is exactly what was written.
    std::map<std::string, const hf_tensor*> by_name;
    for (const auto& t : tensors)
        by_name[t.name] = &t;
    const auto same = [&](const std::string& name, std::span<const float> got) {
        INFO(name);
        REQUIRE(by_name.count(name));
        CHECK(std::ranges::equal(got, by_name[name]->values));
    };
    const auto& w = ck.weights;
    same("model.embed_tokens.weight", w.token_embedding.span());
    same("model.norm.weight", w.final_norm.span());
    for (std::size_t l = 0; l < s.layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        const auto& b = w.blocks[l];
        same(p + "input_layernorm.weight", b.attention_norm.span());
        same(p + "post_attention_layernorm.weight", b.mlp_norm.span());
        same(p + "self_attn.q_proj.weight", b.wq.weight().weight().span());
        same(p + "self_attn.k_proj.weight", b.wk.weight().weight().span());
        same(p + "self_attn.v_proj.weight", b.wv.weight().weight().span());
        same(p + "self_attn.o_proj.weight", b.wo.weight().weight().span());
        same(p + "mlp.gate_proj.weight", b.w1.weight().weight().span());
        same(p + "mlp.down_proj.weight", b.w2.weight().weight().span());
        same(p + "mlp.up_proj.weight", b.w3.weight().weight().span());
    }
    if (s.tied)
        CHECK(w.classifier.weight().weight().data() == w.token_embedding.data());
    else
        same("lm_head.weight", w.classifier.weight().weight().span());
    for (const auto& r : ck.tensors) {
        INFO(r.name);
        CHECK(r.dtype == (s.dtype == st::f32 ? "f32" : s.dtype == st::bf16 ? "bf16" : "f16"));
        CHECK(r.shape == by_name[r.name]->shape);
    }

    // It runs, and agrees with the independent forward pass.
    t2::nn::llama<t2::nn::llama_config> model(ck.config, ck.weights);
    auto state = model.make_state();
    const std::vector<std::int32_t> tokens{1, std::int32_t(s.vocab - 1), 2, 7, 0, 3};
    const auto logits = model.forward(t2::exec::scalar{}, state, tokens, t2::nn::logits_for::all);
    REQUIRE(logits.extent(0) == tokens.size());
    REQUIRE(logits.extent(1) == s.vocab);
    const auto want = reference_logits(s, tensors, tokens);
    for (std::size_t t = 0; t < tokens.size(); ++t) {
        INFO("position " << t);
        const std::vector<float> expected(want[t].begin(), want[t].end());
        T2_CHECK_CLOSE(logits.row(t).span(), std::span<const float>(expected), 1e-4, 1e-4);
    }
}

} // namespace

TEST_CASE("huggingface: model directories load with exactly the weights written and run") {
    const hf_spec specs[] = {
        // GQA, odd hidden size, untied classifier, F32 (views into the mapped file).
        {.dim = 24, .hidden = 37, .layers = 2, .heads = 6, .kv_heads = 2, .vocab = 53, .seq = 32,
         .tied = false, .dtype = st::f32, .eps = 1e-6f, .theta = 500000.f},
        // MQA, tied classifier, BF16 (converted copies).
        {.dim = 16, .hidden = 20, .layers = 3, .heads = 4, .kv_heads = 1, .vocab = 31, .seq = 16,
         .tied = true, .dtype = st::bf16},
        // Multi-head, F16, untied.
        {.dim = 12, .hidden = 7, .layers = 1, .heads = 3, .kv_heads = 3, .vocab = 11, .seq = 8,
         .tied = false, .dtype = st::f16},
    };
    int n = 0;
    for (const auto& s : specs) {
        const std::string dir = t2_test::temp_dir() + "/hf_model_" + std::to_string(n++);
        const auto tensors = hf_tensors(s, 100 * std::uint64_t(n));
        INFO(dir);
        for (const std::size_t shards : {1, 2, 3}) {
            INFO(shards << " shard(s)");
            write_hf(dir, hf_config(s), tensors, shards);
            // Read into memory (the default) and mapped: the same weights.
            for (const auto mode : {io::load_mode::read, io::load_mode::map}) {
                INFO((mode == io::load_mode::read ? "read" : "mapped"));
                const auto ck = io::read_huggingface(dir, {.mode = mode});
                CHECK(ck.format == (shards == 1 ? "safetensors" : "safetensors (" + std::to_string(shards) + " shards)"));
                check_loaded(ck, s, tensors);
            }
            if (shards == 1) {
                // Read, the data section (and so the first tensor) starts 64-byte aligned.
                const io::safetensors_file f(dir + "/model.safetensors", {.mode = io::load_mode::read});
                const auto first = std::ranges::min_element(f.tensors(), {}, &io::safetensors_tensor::offset);
                CHECK(first->offset == 8 + f.header_size());
                CHECK(reinterpret_cast<std::uintptr_t>(first->data.data()) % 64 == 0);
            }
            // The same model from any of its files.
            CHECK(io::read_huggingface(dir + "/config.json").config.dim == s.dim);
            const std::string weights = dir + (shards == 1 ? "/model.safetensors" : "/model.safetensors.index.json");
            CHECK(io::read_huggingface(weights).tensors.size() == tensors.size());
        }
    }
}

TEST_CASE("huggingface: config defaults, ignored extras, mixed dtypes, and a misaligned F32 tensor") {
    hf_spec s{.dim = 8, .hidden = 12, .layers = 1, .heads = 2, .kv_heads = 2, .vocab = 9, .seq = 4,
              .tied = false, .dtype = st::f32};
    auto tensors = hf_tensors(s, 7);
    // Some BF16 among F32; an extra buffer transformers once saved, ignored.
    tensors[2] = make_hf_tensor(tensors[2].name, tensors[2].shape, st::bf16, 77);
    tensors.push_back(make_hf_tensor("model.layers.0.self_attn.rotary_emb.inv_freq", {2}, st::f32, 78));
    json::value config = hf_config(s);
    json::value trimmed = json::value::object();
    // Without num_key_value_heads, rope_theta, tie_word_embeddings, rms_norm_eps: the defaults.
    for (std::size_t i = 0; i < config.size(); ++i) {
        const std::string& key = config.keys()[i];
        if (key != "num_key_value_heads" && key != "rope_theta" && key != "tie_word_embeddings" &&
            key != "rms_norm_eps" && key != "model_type")
            trimmed.set(key, config.items()[i]);
    }
    json::value archs = json::value::array();
    archs.push_back("LlamaForCausalLM");
    trimmed.set("architectures", std::move(archs));
    const std::string dir = t2_test::temp_dir() + "/hf_defaults";
    write_hf(dir, trimmed, tensors);
    const auto ck = io::read_huggingface(dir);
    CHECK(ck.config.n_kv_heads == 2);
    CHECK(ck.config.rope_theta == 10000.f);
    CHECK(ck.config.norm_eps == 1e-6f);
    CHECK(!ck.config.shared_classifier);
    CHECK(ck.tensors.size() == tensors.size() - 1);
    CHECK(std::ranges::equal(ck.weights.blocks[0].attention_norm.span(), tensors[1].values));
    CHECK(std::ranges::equal(ck.weights.blocks[0].wq.weight().weight().span(), tensors[2].values));

    // An untied config without lm_head.weight shares the embedding.
    std::vector<hf_tensor> no_head(tensors.begin(), tensors.end());
    std::erase_if(no_head, [](const hf_tensor& t) { return t.name == "lm_head.weight"; });
    write_hf(dir, config, no_head);
    const auto shared = io::read_huggingface(dir);
    CHECK(shared.config.shared_classifier);
    CHECK(shared.weights.classifier.weight().weight().data() == shared.weights.token_embedding.data());

    // A tied config with an lm_head.weight in the file uses the embedding, as transformers does.
    json::value tied = config;
    tied.set("tie_word_embeddings", true);
    write_hf(dir, tied, tensors);
    const auto t = io::read_huggingface(dir);
    CHECK(t.weights.classifier.weight().weight().data() == t.weights.token_embedding.data());

    // An F32 tensor at an offset that is not a multiple of 4 (another writer's layout) is copied.
    // t2's writer puts F32 first; lay the file out by hand: U8, then F32 at data offset 1.
    const std::vector<float> values{0.25f, -1.f, 3.f, 0.f, 1e-3f, 7.f, -2.5f, 65.f};
    const std::string header = R"({"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"F32","shape":[8],"data_offsets":[1,33]}})";
    auto bytes = craft(header + std::string((8 - header.size() % 8) % 8, ' '), 0);
    bytes.push_back(std::byte{7});
    const auto fb = std::as_bytes(std::span(values));
    bytes.insert(bytes.end(), fb.begin(), fb.end());
    const io::safetensors_file f(bytes, "odd.safetensors");
    CHECK(!io::safetensors_file::aligned<float>(f.at("x")));
    CHECK(f.to_f32(f.at("x")) == values);
    CHECK_ERROR_MENTIONS(f.view<float>(f.at("x")), "not aligned");
}

TEST_CASE("huggingface: bad configs and mismatched tensors are errors naming the file and what is wrong") {
    const hf_spec s{.dim = 8, .hidden = 12, .layers = 2, .heads = 2, .kv_heads = 1, .vocab = 9, .seq = 4,
                    .tied = false, .dtype = st::f32};
    const auto tensors = hf_tensors(s, 11);
    const std::string dir = t2_test::temp_dir() + "/hf_bad";
    const auto with_config = [&](const std::function<void(json::value&)>& edit) {
        json::value c = hf_config(s);
        edit(c);
        write_hf(dir, c, tensors);
        return io::read_huggingface(dir);
    };
    const std::string config = dir + "/config.json";
    CHECK_NOTHROW(with_config([](json::value&) {}));
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) {
        json::value scaling = json::value::object();
        scaling.set("rope_type", "llama3");
        scaling.set("factor", 8.0);
        c.set("rope_scaling", std::move(scaling));
    }), config, "rope_scaling", "not supported");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("model_type", "qwen2"); }), config,
                         "model_type", "\"qwen2\" is not supported");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("hidden_act", "gelu"); }), "hidden_act", "gelu");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("attention_bias", true); }), "attention_bias", "biases");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("head_dim", 8); }), "head_dim", "differs");
    CHECK_NOTHROW(with_config([](json::value& c) { c.set("head_dim", 4); }));
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("hidden_size", "8"); }), config,
                         "hidden_size: expected a number, found a string");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("num_hidden_layers", -2); }), config,
                         "num_hidden_layers: expected a non-negative integer");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("num_key_value_heads", 3); }), config,
                         "n_kv_heads 3 does not divide n_heads 2");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("vocab_size", 0); }), config, "positive");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c.set("tie_word_embeddings", 1); }),
                         "tie_word_embeddings: expected a boolean");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) {
        json::value trimmed = json::value::object();
        for (std::size_t i = 0; i < c.size(); ++i)
            if (c.keys()[i] != "intermediate_size")
                trimmed.set(c.keys()[i], c.items()[i]);
        c = std::move(trimmed);
    }), config, "missing key \"intermediate_size\"");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) {
        json::value trimmed = json::value::object();
        for (std::size_t i = 0; i < c.size(); ++i)
            if (c.keys()[i] != "model_type")
                trimmed.set(c.keys()[i], c.items()[i]);
        c = std::move(trimmed);
    }), "not a Llama checkpoint");
    CHECK_ERROR_MENTIONS(with_config([](json::value& c) { c = json::value::array(); }), config, "expected a JSON object");

    const auto with_tensors = [&](const std::function<void(std::vector<hf_tensor>&)>& edit, std::size_t shards = 1) {
        auto t = tensors;
        edit(t);
        write_hf(dir, hf_config(s), t, shards);
        return io::read_huggingface(dir);
    };
    const std::string weights = dir + "/model.safetensors";
    CHECK_ERROR_MENTIONS(with_tensors([](auto& t) {
        std::erase_if(t, [](const hf_tensor& x) { return x.name == "model.layers.1.mlp.up_proj.weight"; });
    }), weights, "missing tensor \"model.layers.1.mlp.up_proj.weight\"");
    CHECK_ERROR_MENTIONS(with_tensors([&](auto& t) {
        for (auto& x : t)
            if (x.name == "model.layers.0.self_attn.k_proj.weight")
                x = make_hf_tensor(x.name, {8, 8}, st::f32, 5);
    }), weights, "\"model.layers.0.self_attn.k_proj.weight\" has shape [8, 8]", "implies [4, 8]");
    CHECK_ERROR_MENTIONS(with_tensors([&](auto& t) {
        for (auto& x : t)
            if (x.name == "model.norm.weight")
                x = make_hf_tensor(x.name, {1, 8}, st::f32, 5);
    }), "has shape [1, 8]", "implies [8]");
    CHECK_ERROR_MENTIONS(with_tensors([&](auto& t) {
        t.push_back(make_hf_tensor("model.layers.2.input_layernorm.weight", {8}, st::f32, 5));
    }), weights, "belongs to layer 2", "num_hidden_layers = 2");
    CHECK_ERROR_MENTIONS(with_tensors([&](auto& t) {
        t.push_back(make_hf_tensor("model.layers.0.self_attn.q_proj.bias", {8}, st::f32, 5));
    }), weights, "q_proj.bias", "is a bias");
    CHECK_ERROR_MENTIONS(with_tensors([&](auto& t) {
        for (auto& x : t)
            if (x.name == "model.embed_tokens.weight") {
                x.dtype = st::i32;
                x.values.clear();
            }
    }), weights, "\"model.embed_tokens.weight\" has dtype I32");
    CHECK_ERROR_MENTIONS(with_tensors([&](auto& t) {
        t.push_back(t.back());
    }, 2), "is also in");

    // Sharded indexes.
    write_hf(dir, hf_config(s), tensors, 2);
    const std::string index = dir + "/model.safetensors.index.json";
    const auto rewrite_index = [&](const std::string& text) {
        io::write_file_atomically(index, bytes_of(text));
        return io::read_huggingface(dir);
    };
    CHECK_ERROR_MENTIONS(rewrite_index("{\"weight_map\": {\"model.norm.weight\": \"../config.json\"}}"), index,
                         "weight_map[\"model.norm.weight\"]", "not a file name");
    CHECK_ERROR_MENTIONS(rewrite_index("{\"weight_map\": {\"model.norm.weight\": \"/etc/passwd\"}}"), "not a file name");
    CHECK_ERROR_MENTIONS(rewrite_index("{\"weight_map\": {\"model.norm.weight\": \"config.json\"}}"),
                         dir + "/config.json", "header length"); // not safetensors: its "length" is text
    CHECK_ERROR_MENTIONS(rewrite_index("{\"weight_map\": {\"model.norm.weight\": \"missing.safetensors\"}}"),
                         "missing.safetensors", "cannot open");
    CHECK_ERROR_MENTIONS(rewrite_index("{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}"),
                         index, "does not contain it");
    CHECK_ERROR_MENTIONS(rewrite_index("{\"weight_map\": {}}"), "names no tensors");
    CHECK_ERROR_MENTIONS(rewrite_index("{\"weight_map\": []}"), "weight_map", "expected an object");
    CHECK_ERROR_MENTIONS(rewrite_index("{\"metadata\": {}}"), index, "missing key \"weight_map\"");
    CHECK_ERROR_MENTIONS(rewrite_index("{\"weight_map\": {\"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}"),
                         "missing tensor");

    // Directories and files that are not models.
    const std::string empty = fresh_dir("hf_empty");
    CHECK_ERROR_MENTIONS(io::read_huggingface(empty), empty + "/config.json", "missing");
    io::write_file_atomically(empty + "/config.json", bytes_of(json::to_string(hf_config(s))));
    CHECK_ERROR_MENTIONS(io::read_huggingface(empty), empty, "neither model.safetensors nor");
    CHECK_ERROR_MENTIONS(io::read_huggingface(empty + "/nothing"), "no such file or directory");
    io::write_file_atomically(empty + "/weights.bin", bytes_of("x"));
    CHECK_ERROR_MENTIONS(io::read_huggingface(empty + "/weights.bin"), "not a Hugging Face model");
    io::write_file_atomically(empty + "/config.json", bytes_of("{\"hidden_size\": 8,}"));
    write_all(empty + "/model.safetensors", io::serialize_safetensors({}));
    CHECK_ERROR_MENTIONS(io::read_huggingface(empty), empty + "/config.json", "invalid JSON");
}

// --- fuzz seed corpora ---------------------------------------------------------------------------

TEST_CASE("fuzz corpora (written when T2_FUZZ_CORPUS_DIR is set)") {
    const char* env = std::getenv("T2_FUZZ_CORPUS_DIR");
    if (!env)
        return;
    const std::string root = env;
    fs::create_directories(root + "/json");
    fs::create_directories(root + "/safetensors");
    const std::pair<const char*, std::string> json_seeds[] = {
        {"literals", "[true,false,null,0,-0,1.5e-3,\"\"]"},
        {"escapes", R"({"s":"\"\\\/\b\f\n\r\t\u0041\u00e9\ud83d\ude00","k\u0000":"h\u00e9 €"})"},
        {"numbers", "[9223372036854775807,-9223372036854775808,9223372036854775808,1e308,5e-324,1e-400,0.1]"},
        {"nested", "{\"a\":[{\"b\":[[{}]]}],\"c\":{\"d\":{\"e\":null}}}"},
        {"config", json::to_string(hf_config({.dim = 8, .hidden = 12, .layers = 2, .heads = 2, .kv_heads = 1,
                                              .vocab = 9, .seq = 4, .tied = false, .dtype = st::bf16}))},
        {"index", R"({"metadata":{"total_size":16},"weight_map":{"model.norm.weight":"model-00001-of-00002.safetensors"}})"},
        {"whitespace", " \t\r\n{ \"a\" : [ 1 , 2 ] }\n"},
    };
    for (const auto& [name, text] : json_seeds)
        write_all(root + "/json/" + name + ".json", bytes_of(text));

    const sample_tensors s;
    write_all(root + "/safetensors/dtypes.safetensors", io::serialize_safetensors(s.entries(), {{"format", "pt"}}));
    write_all(root + "/safetensors/empty.safetensors", io::serialize_safetensors({}));
    const std::vector<float> zeros(4, 0.f);
    write_all(root + "/safetensors/reference.safetensors",
              io::serialize_safetensors({io::make_safetensors_entry<float>("test", zeros, {2, 2})}));
    write_all(root + "/safetensors/unknown_dtype.safetensors",
              craft(R"({"w":{"dtype":"F4","shape":[8],"data_offsets":[0,4]}})", 4));
    // The tiny model the safetensors fuzzer also assembles (its config is fixed in the fuzzer).
    for (const st dtype : {st::f32, st::bf16}) {
        const hf_spec spec{.dim = 4, .hidden = 6, .layers = 1, .heads = 2, .kv_heads = 1, .vocab = 5, .seq = 4,
                           .tied = dtype == st::bf16, .dtype = dtype};
        const auto tensors = hf_tensors(spec, 1);
        std::vector<const hf_tensor*> all;
        for (const auto& t : tensors)
            all.push_back(&t);
        write_all(root + "/safetensors/llama_" + std::string(io::name_of(dtype)) + ".safetensors",
                  io::serialize_safetensors(entries_of(all)));
    }
    MESSAGE("fuzz corpora written to ", root);
}
