// t2::error, T2_CHECK / T2_ASSERT, version macros and the versioned ABI namespace.
#include <doctest/doctest.h>

#include "support/check.hpp"

#include <stdexcept>
#include <sstream>
#include <string>
#include <type_traits>
#include <typeinfo>

#include "t2/config.hpp"
#include "t2/core/error.hpp"
#include "t2/version.hpp"

namespace {

#define T2_TEST_STR_(x) #x
#define T2_TEST_STR(x) T2_TEST_STR_(x)

using t2_test::contains;
using t2_test::error_message;

} // namespace

static_assert(std::is_base_of_v<std::runtime_error, t2::error>);
static_assert(std::is_convertible_v<t2::error*, std::exception*>);
static_assert(std::is_nothrow_copy_constructible_v<t2::error>);

TEST_CASE("t2::error is a std::runtime_error") {
    CHECK_THROWS_AS(throw t2::error("x"), std::runtime_error);
    CHECK_THROWS_AS(throw t2::error("x"), std::exception);
    try {
        throw t2::error("bad shape");
    } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()) == "bad shape");
        CHECK(dynamic_cast<const t2::error*>(&e) != nullptr);
    }
}

TEST_CASE("T2_CHECK formats its message parts and throws in every build") {
    CHECK_NOTHROW(T2_CHECK(1 + 1 == 2, "never"));
    CHECK_THROWS_AS(T2_CHECK(1 + 1 == 3, "arithmetic"), t2::error);
    const std::size_t rows = 3;
    CHECK(error_message([&] { T2_CHECK(rows == 4, "rows is ", rows, ", want ", 4, " (", 2.5, ")"); }) ==
          "rows is 3, want 4 (2.5)");
    CHECK(error_message([] { T2_CHECK(false, std::string("a string"), ' ', 'c'); }) == "a string c");
    // Without a message the condition is reported.
    const int n = -1;
    CHECK(error_message([&] { T2_CHECK(n >= 0); }) == "check failed: n >= 0");
    // The condition is evaluated once; the message only when the check fails.
    int evaluated = 0, formatted = 0;
    auto cond = [&] { return ++evaluated > 0; };
    auto part = [&] { return ++formatted; };
    T2_CHECK(cond(), "part ", part());
    CHECK(evaluated == 1);
    CHECK(formatted == 0);
    (void)error_message([&] { T2_CHECK(!cond(), "part ", part()); });
    CHECK(evaluated == 2);
    CHECK(formatted == 1);
    // Usable as a single statement in an unbraced if/else.
    if (n < 0)
        T2_CHECK(true, "x");
    else
        T2_CHECK(true, "y");
}

TEST_CASE("T2_ASSERT: internal checks in debug builds") {
#if T2_DEBUG_CHECKS
    const int i = 5, size = 3;
    const std::string msg = error_message([&] { T2_ASSERT(i < size, "index ", i, " of ", size); });
    CHECK(contains(msg, "test_errors.cpp:"));
    CHECK(contains(msg, "internal check failed: i < size"));
    CHECK(contains(msg, "(index 5 of 3)"));
    CHECK(contains(error_message([&] { T2_ASSERT(i < size); }), "internal check failed: i < size"));
    CHECK_NOTHROW(T2_ASSERT(size < i));
#else
    int evaluated = 0;
    T2_ASSERT(++evaluated < 0, "never");
    CHECK(evaluated == 0); // compiled away
#endif
}

TEST_CASE("version macros and string") {
    static_assert(T2_VERSION_MAJOR >= 0 && T2_VERSION_MINOR >= 0 && T2_VERSION_PATCH >= 0);
    const std::string want = std::to_string(T2_VERSION_MAJOR) + "." + std::to_string(T2_VERSION_MINOR) +
                             "." + std::to_string(T2_VERSION_PATCH);
    CHECK(std::string(T2_VERSION_STRING) == want);
    CHECK(want == "0.1.0"); // update together with version.hpp
}

TEST_CASE("the inline ABI namespace names the version and the features") {
    const std::string abi = T2_TEST_STR(T2_ABI_NAMESPACE);
    // (ostringstream rather than operator+ on strings: GCC 12 -O3 warns -Wrestrict on the
    // latter, a false positive, GCC bug 105329.)
    std::ostringstream version_stream;
    version_stream << 'v' << T2_VERSION_MAJOR << '_' << T2_VERSION_MINOR << '_' << T2_VERSION_PATCH;
    const std::string version = version_stream.str();
    CHECK(abi.rfind(version + "_", 0) == 0);
    CHECK(contains(abi, "_s" + std::to_string(T2_ENABLE_SIMD)));
    CHECK(contains(abi, "_c" + std::to_string(T2_ENABLE_CUDA)));
    // t2::error really lives in it (so it is part of every t2 symbol) ...
    static_assert(std::is_same_v<t2::error, t2::T2_ABI_NAMESPACE::error>);
    // ... and the mangled name carries it (Itanium ABI: GCC and Clang).
#if defined(__GNUC__)
    CHECK(contains(typeid(t2::error).name(), abi));
#endif
}
