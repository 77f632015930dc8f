#pragma once
// t2::error, the one exception type of the library, and the checking macros.
//
// T2_CHECK(cond, parts...) throws t2::error in every build; use it where the condition
// depends on users or files (shapes, sizes, arguments). T2_ASSERT(cond) checks internal
// invariants in hot paths and compiles away unless T2_DEBUG_CHECKS is set; it also throws
// (rather than aborting) so tests can observe it.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "t2/config.hpp"

T2_NAMESPACE_BEGIN

class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Parts>
[[noreturn]] inline void throw_error(Parts&&... parts) {
    std::ostringstream out;
    if constexpr (sizeof...(Parts) > 0)
        (out << ... << std::forward<Parts>(parts));
    throw error(out.str());
}

// T2_CHECK(cond) without a message reports the condition instead of an empty message.
template <class... Parts>
[[noreturn]] inline void throw_check_failed(const char* expr, Parts&&... parts) {
    if constexpr (sizeof...(Parts) > 0)
        throw_error(std::forward<Parts>(parts)...);
    else
        throw_error("check failed: ", expr);
}

template <class... Parts>
[[noreturn]] inline void throw_assert(const char* expr, const char* file, int line,
                                      Parts&&... parts) {
    std::ostringstream out;
    out << file << ":" << line << ": internal check failed: " << expr;
    if constexpr (sizeof...(Parts) > 0) {
        out << " (";
        (out << ... << std::forward<Parts>(parts));
        out << ")";
    }
    throw error(out.str());
}

} // namespace detail

T2_NAMESPACE_END

#define T2_CHECK(cond, ...)                                                                \
    do {                                                                                   \
        if (!(cond)) [[unlikely]]                                                          \
            ::t2::detail::throw_check_failed(#cond __VA_OPT__(, ) __VA_ARGS__);            \
    } while (0)

#if T2_DEBUG_CHECKS
#define T2_ASSERT(cond, ...)                                                               \
    do {                                                                                   \
        if (!(cond)) [[unlikely]]                                                          \
            ::t2::detail::throw_assert(#cond, __FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__); \
    } while (0)
#else
#define T2_ASSERT(cond, ...) ((void)0)
#endif
