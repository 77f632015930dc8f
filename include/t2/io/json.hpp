#pragma once
// A small, strict JSON reader and writer (RFC 8259), for the headers of safetensors files and
// Hugging Face's config.json and shard indexes.
//
//   auto doc = io::json::parse_file("config.json");
//   std::size_t dim = doc.root()["hidden_size"].as_size();      // missing / wrong type:
//   double eps = doc.root()["rms_norm_eps"].as_double();         //   t2::error naming the
//   auto heads = doc.root().find("num_key_value_heads");         //   file and the key path
//
// Strict: UTF-8 only (a leading byte-order mark is skipped, as RFC 8259 allows), no trailing
// commas, comments, NaN or leading zeros, no control characters inside strings, lone
// surrogates in \u escapes rejected, duplicate object keys rejected (which one wins differs
// between parsers, so a file that has them means different things to different readers).
// Hostile input is bounded: nesting depth, input size and value count have limits (the
// parser recurses once per nesting level, so the depth limit also bounds its stack).
//
// Numbers are kept as a double and, when the value is integral and exactly representable,
// also as an int64 (so sizes up to 2^63 - 1 written as integer literals are exact).
#include <algorithm>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/io/mapped_file.hpp"

T2_NAMESPACE_BEGIN
namespace io::json {

enum class kind : std::uint8_t { null, boolean, number, string, array, object };

constexpr std::string_view name_of(kind k) noexcept {
    switch (k) {
    case kind::null: return "null";
    case kind::boolean: return "a boolean";
    case kind::number: return "a number";
    case kind::string: return "a string";
    case kind::array: return "an array";
    case kind::object: return "an object";
    }
    return "?";
}

// A JSON value. Objects keep their members in document order (keys and values in two
// parallel vectors), which is what a writer wants and costs lookups nothing at these sizes.
class value {
public:
    value() noexcept = default; // null
    value(std::nullptr_t) noexcept {}
    value(bool b) noexcept : kind_(kind::boolean), bool_(b) {}
    value(double d) : kind_(kind::number), number_(d) {
        T2_CHECK(std::isfinite(d), "json: ", d, " is not representable in JSON");
        set_integer_if_exact();
    }
    template <std::integral I>
        requires(!std::same_as<I, bool>)
    value(I i) : kind_(kind::number), has_int_(true) {
        if constexpr (std::is_unsigned_v<I> && sizeof(I) >= sizeof(std::int64_t))
            T2_CHECK(i <= static_cast<std::make_unsigned_t<std::int64_t>>(
                              std::numeric_limits<std::int64_t>::max()),
                     "json: the integer ", i, " does not fit in int64");
        int_ = static_cast<std::int64_t>(i);
        number_ = static_cast<double>(i);
    }
    value(std::string s) noexcept : kind_(kind::string), string_(std::move(s)) {}
    value(std::string_view s) : kind_(kind::string), string_(s) {}
    value(const char* s) : kind_(kind::string), string_(s) {}

    static value array() {
        value v;
        v.kind_ = kind::array;
        return v;
    }
    static value object() {
        value v;
        v.kind_ = kind::object;
        return v;
    }

    kind type() const noexcept { return kind_; }
    bool is_null() const noexcept { return kind_ == kind::null; }
    bool is_bool() const noexcept { return kind_ == kind::boolean; }
    bool is_number() const noexcept { return kind_ == kind::number; }
    bool is_string() const noexcept { return kind_ == kind::string; }
    bool is_array() const noexcept { return kind_ == kind::array; }
    bool is_object() const noexcept { return kind_ == kind::object; }

    // Unchecked accessors: the caller has looked at type(). node (below) checks and reports.
    bool boolean() const noexcept { return bool_; }
    double number() const noexcept { return number_; }
    std::optional<std::int64_t> integer() const noexcept {
        return has_int_ ? std::optional<std::int64_t>(int_) : std::nullopt;
    }
    const std::string& string() const noexcept { return string_; }
    // Elements of an array, or the member values of an object.
    const std::vector<value>& items() const noexcept { return items_; }
    // Member names of an object, parallel to items().
    const std::vector<std::string>& keys() const noexcept { return keys_; }
    std::size_t size() const noexcept { return items_.size(); }

    const value* find(std::string_view key) const noexcept {
        for (std::size_t i = 0; i < keys_.size(); ++i)
            if (keys_[i] == key)
                return &items_[i];
        return nullptr;
    }

    // Building values for the writer.
    value& push_back(value v) {
        T2_CHECK(is_array(), "json: push_back on ", name_of(kind_), ", not an array");
        items_.push_back(std::move(v));
        return items_.back();
    }
    // Adds a member, or replaces the value of an existing one.
    value& set(std::string key, value v) {
        T2_CHECK(is_object(), "json: set(\"", key, "\") on ", name_of(kind_), ", not an object");
        for (std::size_t i = 0; i < keys_.size(); ++i)
            if (keys_[i] == key)
                return items_[i] = std::move(v);
        keys_.push_back(std::move(key));
        items_.push_back(std::move(v));
        return items_.back();
    }

    // Adds a member without looking for an existing one (set() does, in linear time): for
    // writers that build large objects whose keys they know to be distinct.
    value& append(std::string key, value v) {
        T2_CHECK(is_object(), "json: append(\"", key, "\") on ", name_of(kind_), ", not an object");
        keys_.push_back(std::move(key));
        items_.push_back(std::move(v));
        return items_.back();
    }

    // Structural equality; numbers compare as integers when both are, else as doubles.
    friend bool operator==(const value& a, const value& b) noexcept {
        if (a.kind_ != b.kind_)
            return false;
        switch (a.kind_) {
        case kind::null: return true;
        case kind::boolean: return a.bool_ == b.bool_;
        case kind::number:
            return a.has_int_ && b.has_int_ ? a.int_ == b.int_ : a.number_ == b.number_;
        case kind::string: return a.string_ == b.string_;
        case kind::array: return a.items_ == b.items_;
        case kind::object: return a.keys_ == b.keys_ && a.items_ == b.items_;
        }
        return false;
    }

private:
    friend class parser;

    void set_integer_if_exact() noexcept {
        // Beyond 2^53 a double no longer identifies one integer; such a value stays a double.
        constexpr double exact = 9007199254740992.0;
        if (std::trunc(number_) == number_ && std::abs(number_) <= exact) {
            has_int_ = true;
            int_ = static_cast<std::int64_t>(number_);
        }
    }

    kind kind_ = kind::null;
    bool bool_ = false;
    bool has_int_ = false;
    double number_ = 0;
    std::int64_t int_ = 0;
    std::string string_;
    std::vector<value> items_;
    std::vector<std::string> keys_;
};

struct parse_options {
    std::size_t max_depth = 64;                 // arrays and objects nested in each other
    std::size_t max_bytes = 100'000'000;        // the safetensors reference's header limit
    std::size_t max_values = std::size_t{1} << 22; // bounds memory: a value takes ~100 bytes
};

namespace detail {

// Length of the valid UTF-8 sequence at s[i] (1..4), or 0 if it is not valid: overlong
// forms, UTF-16 surrogates and code points above U+10FFFF are invalid (RFC 3629).
inline std::size_t utf8_sequence(std::string_view s, std::size_t i) noexcept {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = byte(i);
    if (c < 0x80)
        return 1;
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xbf; // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else
        return 0;
    if (s.size() - i < n)
        return 0;
    if (byte(i + 1) < lo || byte(i + 1) > hi)
        return 0;
    for (std::size_t k = 2; k < n; ++k)
        if (byte(i + k) < 0x80 || byte(i + k) > 0xbf)
            return 0;
    return n;
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xc0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xe0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
        out += static_cast<char>(0xf0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    }
}

// A key for a message: quoted, shortened, without raw control bytes.
inline std::string quoted(std::string_view key) {
    std::string out = "\"";
    for (const char c : key.substr(0, 200))
        out += static_cast<unsigned char>(c) < 0x20 ? '?' : c;
    if (key.size() > 200)
        out += "...";
    return out + "\"";
}

} // namespace detail

class parser {
public:
    parser(std::string_view text, const std::string& name, const parse_options& options)
        : text_(text), name_(name), options_(options) {}

    value parse() {
        if (text_.size() > options_.max_bytes)
            t2::detail::throw_error(name_, ": JSON document of ", text_.size(),
                                    " bytes exceeds the limit of ", options_.max_bytes, " bytes");
        if (text_.starts_with("\xef\xbb\xbf"))
            pos_ = 3;
        value v = parse_value(0);
        skip_space();
        if (pos_ != text_.size())
            fail("unexpected data after the top-level value");
        return v;
    }

private:
    [[noreturn]] void fail(std::string_view what) const {
        std::size_t line = 1, column = 1;
        for (std::size_t i = 0; i < pos_ && i < text_.size(); ++i) {
            if (text_[i] == '\n') {
                ++line;
                column = 1;
            } else {
                ++column;
            }
        }
        t2::detail::throw_error(name_, ": invalid JSON at line ", line, ", column ", column, ": ",
                                what);
    }

    void skip_space() noexcept {
        while (pos_ < text_.size() &&
               (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
            ++pos_;
    }

    bool consume(char c) noexcept {
        if (pos_ < text_.size() && text_[pos_] == c) {
            ++pos_;
            return true;
        }
        return false;
    }

    void expect_literal(std::string_view word) {
        if (text_.substr(pos_, word.size()) != word)
            fail("unexpected character");
        pos_ += word.size();
    }

    value parse_value(std::size_t depth) {
        if (++count_ > options_.max_values)
            fail("too many values (the limit is " + std::to_string(options_.max_values) + ")");
        skip_space();
        if (pos_ >= text_.size())
            fail("unexpected end of input, expected a value");
        switch (text_[pos_]) {
        case '{': return parse_object(depth + 1);
        case '[': return parse_array(depth + 1);
        case '"': return value(parse_string());
        case 't': expect_literal("true"); return value(true);
        case 'f': expect_literal("false"); return value(false);
        case 'n': expect_literal("null"); return value();
        default:
            if (text_[pos_] == '-' || (text_[pos_] >= '0' && text_[pos_] <= '9'))
                return parse_number();
            fail("unexpected character, expected a value");
        }
    }

    void check_depth(std::size_t depth) const {
        if (depth > options_.max_depth)
            fail("nested deeper than " + std::to_string(options_.max_depth) + " levels");
    }

    value parse_array(std::size_t depth) {
        check_depth(depth);
        ++pos_; // '['
        value out = value::array();
        skip_space();
        if (consume(']'))
            return out;
        for (;;) {
            out.items_.push_back(parse_value(depth));
            skip_space();
            if (consume(']'))
                return out;
            if (!consume(','))
                fail("expected ',' or ']' in an array");
        }
    }

    value parse_object(std::size_t depth) {
        check_depth(depth);
        ++pos_; // '{'
        value out = value::object();
        skip_space();
        if (consume('}'))
            return out;
        for (;;) {
            skip_space();
            if (pos_ >= text_.size() || text_[pos_] != '"')
                fail("expected a string as an object key");
            out.keys_.push_back(parse_string());
            skip_space();
            if (!consume(':'))
                fail("expected ':' after an object key");
            out.items_.push_back(parse_value(depth));
            skip_space();
            if (consume('}'))
                break;
            if (!consume(','))
                fail("expected ',' or '}' in an object");
        }
        check_unique_keys(out.keys_);
        return out;
    }

    void check_unique_keys(const std::vector<std::string>& keys) {
        std::vector<std::string_view> sorted(keys.begin(), keys.end());
        std::sort(sorted.begin(), sorted.end());
        const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
        if (dup != sorted.end()) {
            fail("duplicate object key " + detail::quoted(*dup));
        }
    }


    std::uint32_t parse_hex4() {
        if (text_.size() - pos_ < 4)
            fail("truncated \\u escape");
        std::uint32_t v = 0;
        for (int i = 0; i < 4; ++i) {
            const char c = text_[pos_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= std::uint32_t(c - '0');
            else if (c >= 'a' && c <= 'f') v |= std::uint32_t(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= std::uint32_t(c - 'A' + 10);
            else fail("invalid hex digit in a \\u escape");
        }
        return v;
    }

    std::string parse_string() {
        ++pos_; // opening quote
        std::string out;
        for (;;) {
            if (pos_ >= text_.size())
                fail("unterminated string");
            const char c = text_[pos_];
            const auto u = static_cast<unsigned char>(c);
            if (c == '"') {
                ++pos_;
                return out;
            }
            if (u < 0x20)
                fail("control character in a string (it must be escaped)");
            if (u >= 0x80) {
                const std::size_t n = detail::utf8_sequence(text_, pos_);
                if (n == 0)
                    fail("invalid UTF-8 in a string");
                out.append(text_.substr(pos_, n));
                pos_ += n;
                continue;
            }
            ++pos_;
            if (c != '\\') {
                out += c;
                continue;
            }
            if (pos_ >= text_.size())
                fail("unterminated escape");
            switch (text_[pos_++]) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                std::uint32_t cp = parse_hex4();
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    fail("lone low surrogate in a \\u escape");
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (text_.substr(pos_, 2) != "\\u")
                        fail("high surrogate not followed by a \\u low surrogate");
                    pos_ += 2;
                    const std::uint32_t low = parse_hex4();
                    if (low < 0xdc00 || low > 0xdfff)
                        fail("high surrogate not followed by a low surrogate");
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                }
                detail::append_utf8(out, cp);
                break;
            }
            default: fail("invalid escape in a string");
            }
        }
    }

    value parse_number() {
        const std::size_t start = pos_;
        const auto digit = [&] { return pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9'; };
        consume('-');
        if (!digit())
            fail("expected a digit");
        if (text_[pos_] == '0') {
            ++pos_;
            if (digit())
                fail("leading zeros are not allowed in numbers");
        } else {
            while (digit()) ++pos_;
        }
        bool integral_syntax = true;
        if (consume('.')) {
            integral_syntax = false;
            if (!digit())
                fail("expected a digit after the decimal point");
            while (digit()) ++pos_;
        }
        if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
            integral_syntax = false;
            ++pos_;
            if (!consume('+'))
                consume('-');
            if (!digit())
                fail("expected a digit in the exponent");
            while (digit()) ++pos_;
        }
        const std::string_view literal = text_.substr(start, pos_ - start);
        value out;
        out.kind_ = kind::number;
        if (integral_syntax) {
            std::int64_t i = 0;
            const auto r = std::from_chars(literal.data(), literal.data() + literal.size(), i);
            if (r.ec == std::errc() && r.ptr == literal.data() + literal.size()) {
                out.has_int_ = true;
                out.int_ = i;
            }
        }
        double d = 0;
        const auto r = std::from_chars(literal.data(), literal.data() + literal.size(), d);
        if (r.ec == std::errc::result_out_of_range) {
            if (decimal_magnitude(literal) > 0)
                fail("number out of the range of a double");
            d = literal.starts_with('-') ? -0.0 : 0.0; // underflow: as every common parser does
        } else if (r.ec != std::errc() || r.ptr != literal.data() + literal.size()) {
            fail("malformed number");
        }
        out.number_ = d;
        if (!out.has_int_)
            out.set_integer_if_exact();
        return out;
    }

    // Roughly the decimal exponent of a number literal: > 0 when it is large, <= 0 when tiny.
    static long long decimal_magnitude(std::string_view literal) {
        std::size_t i = literal.starts_with('-') ? 1 : 0;
        long long magnitude = 0;
        bool seen_nonzero = false;
        for (; i < literal.size() && literal[i] != '.' && literal[i] != 'e' && literal[i] != 'E'; ++i)
            if (seen_nonzero || literal[i] != '0') {
                seen_nonzero = true;
                ++magnitude;
            }
        if (i < literal.size() && literal[i] == '.')
            for (++i; i < literal.size() && literal[i] != 'e' && literal[i] != 'E'; ++i) {
                if (seen_nonzero)
                    continue;
                if (literal[i] != '0')
                    seen_nonzero = true;
                else
                    --magnitude;
            }
        if (i < literal.size()) { // exponent; clamp so that absurd exponents cannot overflow
            long long e = 0;
            const bool negative = literal[i + 1] == '-';
            for (++i; i < literal.size(); ++i)
                if (literal[i] >= '0' && literal[i] <= '9')
                    e = std::min<long long>(e * 10 + (literal[i] - '0'), 1'000'000'000);
            magnitude += negative ? -e : e;
        }
        return magnitude;
    }

    std::string_view text_;
    const std::string& name_;
    const parse_options& options_;
    std::size_t pos_ = 0;
    std::size_t count_ = 0;
};

// A value inside a parsed document, with where it came from: lookups and conversions that
// fail throw t2::error naming the file and the key path ("config.json: num_hidden_layers:
// expected an integer, found a string"). It shares ownership of the document, so it stays
// valid on its own.
class node {
public:
    node(std::shared_ptr<const value> v, std::shared_ptr<const std::string> file, std::string path)
        : value_(std::move(v)), file_(std::move(file)), path_(std::move(path)) {}

    const value& get() const noexcept { return *value_; }
    kind type() const noexcept { return value_->type(); }
    bool is_null() const noexcept { return value_->is_null(); }
    const std::string& file() const noexcept { return *file_; }
    // "hidden_size", "weight_map[\"model.norm.weight\"]", "a.b[3]"; empty at the top level.
    const std::string& path() const noexcept { return path_; }
    // "file: path" for messages about this value.
    std::string where() const { return path_.empty() ? *file_ : *file_ + ": " + path_; }

    [[noreturn]] void fail(std::string_view what) const { t2::detail::throw_error(where(), ": ", what); }

    // The same value under another name, for messages in the caller's terms
    // ("tensor \"w\"" rather than a key path).
    node renamed(std::string path) const { return node(value_, file_, std::move(path)); }

    // A required member.
    node operator[](std::string_view key) const {
        auto found = find(key);
        if (!found)
            fail("missing key " + detail::quoted(key));
        return *found;
    }
    // An optional member: nullopt when absent (null is present: check is_null()).
    std::optional<node> find(std::string_view key) const {
        expect(kind::object);
        const value* v = value_->find(key);
        if (!v)
            return std::nullopt;
        return node(std::shared_ptr<const value>(value_, v), file_, child_path(key));
    }
    // An optional member that is neither absent nor null.
    std::optional<node> find_non_null(std::string_view key) const {
        auto found = find(key);
        if (found && found->is_null())
            return std::nullopt;
        return found;
    }
    node operator[](std::size_t index) const {
        expect(kind::array);
        if (index >= value_->size())
            fail("index " + std::to_string(index) + " out of range (the array has " +
                 std::to_string(value_->size()) + " elements)");
        return element(index);
    }
    std::size_t size() const {
        if (!value_->is_array() && !value_->is_object())
            fail("expected an array or an object, found " + std::string(name_of(type())));
        return value_->size();
    }
    // The i-th member's key and value of an object, in document order.
    const std::string& key(std::size_t i) const {
        expect(kind::object);
        return value_->keys().at(i);
    }
    node member(std::size_t i) const {
        expect(kind::object);
        return node(std::shared_ptr<const value>(value_, &value_->items().at(i)), file_,
                    child_path(value_->keys().at(i)));
    }
    node element(std::size_t i) const {
        expect(kind::array);
        return node(std::shared_ptr<const value>(value_, &value_->items().at(i)), file_,
                    path_ + "[" + std::to_string(i) + "]");
    }

    bool as_bool() const {
        expect(kind::boolean);
        return value_->boolean();
    }
    const std::string& as_string() const {
        expect(kind::string);
        return value_->string();
    }
    double as_double() const {
        expect(kind::number);
        return value_->number();
    }
    std::int64_t as_int() const {
        expect(kind::number);
        const auto i = value_->integer();
        if (!i)
            fail("expected an integer, found " + number_text());
        return *i;
    }
    // An integer in [lo, hi].
    std::int64_t as_int(std::int64_t lo, std::int64_t hi) const {
        const std::int64_t i = as_int();
        if (i < lo || i > hi)
            fail(std::to_string(i) + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
        return i;
    }
    // A non-negative integer, as a size.
    std::size_t as_size() const {
        const std::int64_t i = as_int();
        if (i < 0)
            fail("expected a non-negative integer, found " + std::to_string(i));
        return static_cast<std::size_t>(i);
    }

private:
    void expect(kind k) const {
        if (type() != k)
            fail("expected " + std::string(name_of(k)) + ", found " + std::string(name_of(type())));
    }

    std::string number_text() const {
        char buf[32];
        const auto r = std::to_chars(buf, buf + sizeof buf, value_->number());
        return std::string(buf, r.ptr);
    }

    // Keys that look like identifiers are written .key, others ["key"] (tensor names contain
    // dots, which would make a dotted path ambiguous).
    std::string child_path(std::string_view key) const {
        const bool plain = !key.empty() && key.size() <= 64 &&
                           std::all_of(key.begin(), key.end(), [](char c) {
                               return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                      (c >= '0' && c <= '9') || c == '_';
                           });
        if (plain)
            return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
        return path_ + "[" + detail::quoted(key) + "]";
    }


    std::shared_ptr<const value> value_;
    std::shared_ptr<const std::string> file_;
    std::string path_;
};

// A parsed document: the root value and the name used in error messages.
class document {
public:
    document(value root, std::string name)
        : root_(std::make_shared<const value>(std::move(root))),
          name_(std::make_shared<const std::string>(std::move(name))) {}

    node root() const { return node(root_, name_, ""); }
    const value& get() const noexcept { return *root_; }
    const std::string& name() const noexcept { return *name_; }

private:
    std::shared_ptr<const value> root_;
    std::shared_ptr<const std::string> name_;
};

// `name` (a file name, or anything that tells the user where the text came from) prefixes
// every error message.
inline document parse(std::string_view text, std::string name, const parse_options& options = {}) {
    value root = parser(text, name, options).parse();
    return document(std::move(root), std::move(name));
}

inline document parse(std::span<const std::byte> bytes, std::string name,
                      const parse_options& options = {}) {
    return parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                 std::move(name), options);
}

inline document parse_file(const std::string& path, const parse_options& options = {}) {
    const mapped_file file(path);
    return parse(file.bytes(), path, options);
}

// --- writer ------------------------------------------------------------------------------------

// Appends s as a JSON string literal. Throws on invalid UTF-8: the result must parse again.
inline void write_string(std::string& out, std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x80) {
            const std::size_t n = detail::utf8_sequence(s, i);
            T2_CHECK(n != 0, "json: string with invalid UTF-8 at byte ", i, " cannot be written");
            out.append(s.substr(i, n));
            i += n;
            continue;
        }
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20) {
                out += "\\u00";
                out += hex[c >> 4];
                out += hex[c & 15];
            } else {
                out += static_cast<char>(c);
            }
        }
        ++i;
    }
    out += '"';
}

// Compact JSON (no whitespace); numbers round-trip exactly (integers as integers, doubles in
// their shortest exact form).
inline void write(std::string& out, const value& v) {
    switch (v.type()) {
    case kind::null: out += "null"; return;
    case kind::boolean: out += v.boolean() ? "true" : "false"; return;
    case kind::number: {
        char buf[32];
        const auto i = v.integer();
        // -0.0 is integral but "0" would lose its sign.
        const auto r = i && !(*i == 0 && std::signbit(v.number()))
                           ? std::to_chars(buf, buf + sizeof buf, *i)
                           : std::to_chars(buf, buf + sizeof buf, v.number());
        out.append(buf, r.ptr);
        return;
    }
    case kind::string: write_string(out, v.string()); return;
    case kind::array:
        out += '[';
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (i) out += ',';
            write(out, v.items()[i]);
        }
        out += ']';
        return;
    case kind::object:
        out += '{';
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (i) out += ',';
            write_string(out, v.keys()[i]);
            out += ':';
            write(out, v.items()[i]);
        }
        out += '}';
        return;
    }
}

inline std::string to_string(const value& v) {
    std::string out;
    write(out, v);
    return out;
}

} // namespace io::json
T2_NAMESPACE_END
