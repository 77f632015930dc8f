// Shapes (extents), owning tensors, views, slicing and reshape.
#include <doctest/doctest.h>

#include "support/check.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "t2/core/dtype.hpp"
#include "t2/core/error.hpp"
#include "t2/core/extents.hpp"
#include "t2/core/memory.hpp"
#include "t2/core/tensor.hpp"

using t2::dims;
using t2::dyn;
using t2::extents;

namespace {

bool is_aligned(const void* p) {
    return reinterpret_cast<std::uintptr_t>(p) % t2::tensor_alignment == 0;
}

template <class E>
std::string to_string(const E& e) {
    std::ostringstream out;
    out << e;
    return out.str();
}

using t2_test::error_message;

constexpr std::size_t huge = std::size_t{1} << 40;

} // namespace

// ---- extents: compile-time properties ----------------------------------------------------

static_assert(extents<>::rank() == 0 && extents<>::rank_dynamic() == 0);
static_assert(extents<4, 8>::rank() == 2 && extents<4, 8>::rank_dynamic() == 0);
static_assert(extents<dyn, 8>::rank_dynamic() == 1 && extents<dyn, 8, dyn>::rank_dynamic() == 2);
static_assert(dims<3>::rank() == 3 && dims<3>::rank_dynamic() == 3);
static_assert(std::is_same_v<dims<2>, extents<dyn, dyn>>);
static_assert(extents<dyn, 8>::static_extent(0) == dyn && extents<dyn, 8>::static_extent(1) == 8);
static_assert(extents<4, 8>::is_static && !extents<dyn, 8>::is_static && extents<>::is_static);
static_assert(extents<4, 8>::static_size == 32 && extents<4, 8>{}.size() == 32);
static_assert(extents<>{}.size() == 1);
// Only dynamic extents are stored.
static_assert(sizeof(extents<4, 8>) == 1);
static_assert(sizeof(t2::tensor_view<float, extents<dyn, 8>>) == sizeof(float*) + sizeof(std::size_t));
static_assert(sizeof(extents<dyn, 8>) == sizeof(std::size_t));
static_assert(sizeof(dims<3>) == 3 * sizeof(std::size_t));
// Usable in constant expressions.
static_assert(extents<dyn, 4>(3).size() == 12);
static_assert(extents<dyn, 4>(3, 4).extent(0) == 3);
static_assert(dims<2>(extents<3, 5>{}).extent(1) == 5);
// Static -> dynamic converts implicitly; dynamic -> static never does.
static_assert(std::is_convertible_v<extents<3, 4>, dims<2>>);
static_assert(std::is_convertible_v<extents<3, 4>, extents<dyn, 4>>);
static_assert(std::is_convertible_v<extents<dyn, 4>, dims<2>>);
static_assert(!std::is_constructible_v<extents<3, 4>, dims<2>>);
static_assert(!std::is_constructible_v<extents<dyn, 4>, extents<dyn, 5>>);
static_assert(!std::is_constructible_v<dims<2>, dims<3>>);
// Extents are given either as the dynamic ones only or as all of them.
static_assert(std::is_constructible_v<extents<dyn, 4, dyn>, int, int>);
static_assert(std::is_constructible_v<extents<dyn, 4, dyn>, int, int, int>);
static_assert(!std::is_constructible_v<extents<dyn, 4, dyn>, int>);
static_assert(!std::is_constructible_v<extents<dyn, 4, dyn>, int, int, int, int>);
static_assert(!std::is_constructible_v<dims<2>, double, double>);
static_assert(t2::extents_like<dims<2>> && !t2::extents_like<std::array<std::size_t, 2>>);

TEST_CASE("extents: static and dynamic mixes") {
    const extents<dyn, 64> a(5);
    CHECK(a.extent(0) == 5);
    CHECK(a.extent(1) == 64);
    CHECK(a.size() == 320);
    CHECK(a.all() == std::array<std::size_t, 2>{5, 64});

    const extents<3, dyn, 7, dyn> b(4, 5);
    CHECK(b.all() == std::array<std::size_t, 4>{3, 4, 7, 5});
    CHECK(b.size() == 3 * 4 * 7 * 5);

    const dims<3> c(2u, std::size_t{3}, 4L); // any integral types
    CHECK(c.all() == std::array<std::size_t, 3>{2, 3, 4});
    CHECK(c.size() == 24);

    const dims<2> zero(0, 9);
    CHECK(zero.size() == 0);

    const dims<2> defaulted;
    CHECK(defaulted.all() == std::array<std::size_t, 2>{0, 0});
    CHECK(extents<4, 8>{}.all() == std::array<std::size_t, 2>{4, 8});
}

TEST_CASE("extents: the all-extents constructor checks the static ones") {
    CHECK(extents<dyn, 64>(5, 64).all() == std::array<std::size_t, 2>{5, 64});
    CHECK(extents<4, 8>(4, 8).size() == 32);
    CHECK_THROWS_AS((extents<dyn, 64>(5, 63)), t2::error);
    CHECK_THROWS_AS((extents<4, 8>(4, 9)), t2::error);
    CHECK_THROWS_AS((extents<4, 8>(8, 4)), t2::error);
    const std::string msg = error_message([] { (void)extents<dyn, 64>(5, 63); });
    CHECK(msg.find("63") != std::string::npos);
    CHECK(msg.find("64") != std::string::npos);

    // From an array of all extents (as read from a file).
    CHECK(extents<dyn, 4>(std::array<std::size_t, 2>{3, 4}).extent(0) == 3);
    CHECK(dims<2>(std::array<std::size_t, 2>{3, 5}).extent(1) == 5);
    CHECK_THROWS_AS((extents<dyn, 4>(std::array<std::size_t, 2>{3, 5})), t2::error);
}

TEST_CASE("extents: negative extents are a t2::error") {
    CHECK_THROWS_AS((dims<1>(-1)), t2::error);
    CHECK_THROWS_AS((dims<2>(3, -2)), t2::error);
    CHECK_THROWS_AS((extents<dyn, 4>(-3)), t2::error);
    CHECK_THROWS_AS((extents<dyn, 4>(-3, 4)), t2::error);
    CHECK_THROWS_AS((extents<dyn, 4>(3, -4)), t2::error);
    CHECK_THROWS_AS((dims<1>(std::numeric_limits<long long>::min())), t2::error);
    CHECK(error_message([] { (void)dims<2>(3, -2); }).find("-2") != std::string::npos);
    CHECK_NOTHROW((void)dims<2>(0, 0));
}

TEST_CASE("extents: static to dynamic conversion, equality, streaming") {
    const extents<3, 4> s;
    const dims<2> d = s;
    CHECK(d.all() == std::array<std::size_t, 2>{3, 4});
    const extents<dyn, 4> half = s;
    CHECK(half.extent(0) == 3);
    const dims<2> d2 = half;
    CHECK(d2 == d);

    CHECK(s == d);
    CHECK(d == s);
    CHECK(half == s);
    CHECK(s == dims<2>(3, 4));
    CHECK(s != dims<2>(4, 3));
    CHECK(d != dims<2>(3, 5));
    CHECK_FALSE(s == extents<12>{}); // different rank, same size
    CHECK_FALSE(dims<1>(12) == d);
    CHECK(extents<>{} == extents<>{});

    CHECK(to_string(s) == "[3, 4]");
    CHECK(to_string(dims<3>(2, 0, 7)) == "[2, 0, 7]");
    CHECK(to_string(extents<dyn>(5)) == "[5]");
    CHECK(to_string(extents<>{}) == "[]");
}

// ---- tensors: compile-time properties ----------------------------------------------------

using static_mat = t2::tensor<float, extents<4, 16>>;
// A static tensor is exactly its elements (here 256 bytes, a multiple of the alignment).
static_assert(sizeof(static_mat) == 4 * 16 * sizeof(float));
static_assert(sizeof(t2::tensor<double, extents<2, 8>>) == 2 * 8 * sizeof(double));
static_assert(alignof(static_mat) == t2::tensor_alignment);
// Smaller ones are padded to one alignment unit, never more.
static_assert(sizeof(t2::tensor<float, extents<3>>) == t2::tensor_alignment);
static_assert(sizeof(t2::tensor<float, extents<17>>) == 2 * t2::tensor_alignment);
static_assert(std::is_default_constructible_v<static_mat>);
static_assert(std::is_default_constructible_v<t2::matrix<float>>); // empty, extents 0
static_assert(std::is_nothrow_move_constructible_v<t2::matrix<float>>);
static_assert(std::is_nothrow_move_assignable_v<t2::matrix<float>>);
// Views convert T -> const T and static -> dynamic, never the other way.
static_assert(std::is_convertible_v<t2::matrix_view<float>, t2::matrix_view<const float>>);
static_assert(!std::is_convertible_v<t2::matrix_view<const float>, t2::matrix_view<float>>);
static_assert(std::is_convertible_v<t2::tensor_view<float, extents<4, 8>>,
                                    t2::tensor_view<const float, dims<2>>>);
static_assert(!std::is_constructible_v<t2::tensor_view<float, extents<4, 8>>,
                                       t2::tensor_view<float, dims<2>>>);
static_assert(!std::is_constructible_v<t2::matrix_view<float>, t2::vector_view<float>>);
static_assert(!std::is_constructible_v<t2::tensor_view<double, dims<1>>, t2::vector_view<float>>);
// Tensors convert to views of their own elements; a const tensor only to const views.
static_assert(std::is_convertible_v<t2::matrix<float>&, t2::matrix_view<float>>);
static_assert(std::is_convertible_v<t2::matrix<float>&, t2::matrix_view<const float>>);
static_assert(std::is_convertible_v<const t2::matrix<float>&, t2::matrix_view<const float>>);
static_assert(!std::is_convertible_v<const t2::matrix<float>&, t2::matrix_view<float>>);
static_assert(std::is_convertible_v<static_mat&, t2::matrix_view<float>>);
static_assert(std::is_convertible_v<const static_mat&, t2::matrix_view<const float>>);
static_assert(!std::is_convertible_v<t2::matrix<float>&, t2::tensor_view<float, extents<4, 16>>>);
// Memory spaces do not mix.
static_assert(!std::is_constructible_v<t2::vector_view<float>, t2::vector_view<float, t2::cuda_memory>>);
static_assert(!std::is_constructible_v<t2::vector_view<float, t2::cuda_memory>, t2::vector_view<float>>);
// Slices keep what is static.
static_assert(std::is_same_v<decltype(std::declval<static_mat&>().row(0)),
                             t2::tensor_view<float, extents<16>>>);
static_assert(std::is_same_v<decltype(std::declval<const static_mat&>().row(0)),
                             t2::tensor_view<const float, extents<16>>>);
static_assert(std::is_same_v<decltype(std::declval<static_mat&>().rows(0, 1)),
                             t2::tensor_view<float, extents<dyn, 16>>>);
static_assert(std::is_same_v<decltype(std::declval<t2::tensor<float, dims<3>>&>().row(0)),
                             t2::matrix_view<float>>);

TEST_CASE("tensor: zero-initialised, dynamic and static") {
    // Dirty the heap first so that a fresh allocation would likely reuse non-zero memory.
    for (int round = 0; round < 3; ++round) {
        {
            t2::matrix<float> dirty(37, 41);
            dirty.fill(123.0f);
        }
        const t2::matrix<float> m(37, 41);
        CHECK(m.size() == 37 * 41);
        bool all_zero = true;
        for (float v : m.span())
            all_zero = all_zero && v == 0.0f;
        CHECK(all_zero);
    }
    const static_mat s;
    bool all_zero = true;
    for (float v : s.span())
        all_zero = all_zero && v == 0.0f;
    CHECK(all_zero);
    const t2::vector<t2::bf16> b(9);
    for (std::size_t i = 0; i < b.size(); ++i)
        CHECK(b[i].bits == 0);
}

TEST_CASE("tensor: data() is 64-byte aligned") {
    for (std::size_t n : {1, 3, 15, 16, 17, 63, 64, 65, 1000, 4097}) {
        const t2::vector<float> v(n);
        CHECK(is_aligned(v.data()));
        const t2::vector<t2::f16> h(n);
        CHECK(is_aligned(h.data()));
        const t2::tensor<double, dims<3>> d(n, 2, 3);
        CHECK(is_aligned(d.data()));
    }
    static_mat on_stack;
    CHECK(is_aligned(on_stack.data()));
    struct holder {
        char c;
        t2::tensor<float, extents<3>> t;
    };
    holder h{};
    CHECK(is_aligned(h.t.data()));
    auto on_heap = std::make_unique<t2::tensor<float, extents<5, 3>>>();
    CHECK(is_aligned(on_heap->data()));
    std::vector<t2::tensor<float, extents<7>>> many(5);
    for (auto& t : many)
        CHECK(is_aligned(t.data()));
    // The buffer itself.
    const t2::aligned_buffer<char> bytes(1);
    CHECK(is_aligned(bytes.data()));
    const t2::aligned_buffer<float> none(0);
    CHECK(none.size() == 0);
    CHECK(none.data() == nullptr);
}

TEST_CASE("tensor: shapes from constructor arguments") {
    const t2::tensor<float, extents<dyn, 8>> a(5);
    CHECK(a.shape().all() == std::array<std::size_t, 2>{5, 8});
    const t2::tensor<float, extents<dyn, 8>> b(5, 8);
    CHECK(b.size() == 40);
    CHECK_THROWS_AS((t2::tensor<float, extents<dyn, 8>>(5, 9)), t2::error);
    const static_mat s(4, 16);
    CHECK(s.size() == 64);
    CHECK_THROWS_AS((static_mat(4, 15)), t2::error);
    CHECK_THROWS_AS((t2::matrix<float>(3, -1)), t2::error);
    const t2::matrix<float> from_shape(dims<2>(2, 3));
    CHECK(from_shape.extent(0) == 2);
    CHECK(from_shape.extent(1) == 3);
    CHECK(from_shape.rank() == 2);
    const t2::matrix<float> empty(0, 5);
    CHECK(empty.empty());
    CHECK(empty.span().empty());
    CHECK(empty.view().leading_stride() == 0);
}

TEST_CASE("tensor: shapes that overflow are a t2::error, not a crash") {
    CHECK_THROWS_AS((t2::matrix<float>(huge, huge)), t2::error);
    CHECK_THROWS_AS((t2::tensor<float, dims<3>>(std::size_t{1} << 22, std::size_t{1} << 22,
                                                std::size_t{1} << 22)),
                    t2::error);
    CHECK_THROWS_AS((t2::tensor<float, extents<dyn, 1024>>(std::numeric_limits<std::size_t>::max() / 512)),
                    t2::error);
    // The element count fits but the byte count does not.
    CHECK_THROWS_AS(t2::vector<float>(std::numeric_limits<std::size_t>::max() / 2), t2::error);
    CHECK_THROWS_AS((t2::vector<double>(std::numeric_limits<std::size_t>::max() / 4)), t2::error);
    CHECK_THROWS_AS((t2::aligned_buffer<float>(std::numeric_limits<std::size_t>::max())), t2::error);
    CHECK(error_message([] { t2::matrix<float> m(huge, huge); }).find("overflow") !=
          std::string::npos);
}

TEST_CASE("tensor: copy is deep, move transfers the storage") {
    t2::matrix<float> a(3, 4);
    for (std::size_t i = 0; i < a.size(); ++i)
        a[i] = static_cast<float>(i);

    t2::matrix<float> b = a;
    CHECK(b.data() != a.data());
    CHECK(b.shape() == a.shape());
    CHECK(is_aligned(b.data()));
    a(0, 0) = -1.0f;
    CHECK(b(0, 0) == 0.0f);
    CHECK(b(2, 3) == 11.0f);

    t2::matrix<float> c(1, 1);
    c = a;
    CHECK(c.shape() == a.shape());
    CHECK(c(0, 0) == -1.0f);
    const t2::matrix<float>& alias = c;
    c = alias; // self-assignment keeps the contents
    CHECK(c(2, 3) == 11.0f);

    const float* storage = a.data();
    t2::matrix<float> d = std::move(a);
    CHECK(d.data() == storage);
    CHECK(d.shape() == dims<2>(3, 4));
    CHECK(d(0, 0) == -1.0f);
    // A moved-from tensor is empty (not a shape without storage) and can be reused.
    CHECK(a.size() == 0);
    CHECK(a.span().empty());
    a.fill(1.0f); // touches nothing
    a = b;
    CHECK(a(2, 3) == 11.0f);

    t2::matrix<float> e(1, 1);
    e = std::move(d);
    CHECK(e.data() == storage);
    CHECK(e.size() == 12);
    CHECK(d.empty());

    // Static tensors copy (and "move") by value.
    static_mat s;
    s(1, 2) = 7.0f;
    static_mat s2 = s;
    s(1, 2) = 8.0f;
    CHECK(s2(1, 2) == 7.0f);
    s2 = s;
    CHECK(s2(1, 2) == 8.0f);
    const static_mat s3 = std::move(s2);
    CHECK(s3(1, 2) == 8.0f);
}

TEST_CASE("tensor: element access is row-major") {
    t2::tensor<int, dims<3>> t(2, 3, 4);
    for (std::size_t i = 0; i < 2; ++i)
        for (std::size_t j = 0; j < 3; ++j)
            for (std::size_t k = 0; k < 4; ++k)
                t(i, j, k) = static_cast<int>(100 * i + 10 * j + k);
    CHECK(t.data()[0] == 0);
    CHECK(t.data()[1] == 1);
    CHECK(t.data()[4] == 10);
    CHECK(t.data()[12] == 100);
    CHECK(t.data()[23] == 123);
    CHECK(t[23] == 123);
    CHECK(t(1u, 2L, std::uint8_t{3}) == 123); // mixed integral index types
    const auto& ct = t;
    CHECK(ct(1, 1, 1) == 111);
    static_assert(std::is_same_v<decltype(ct(0, 0, 0)), const int&>);
    static_assert(std::is_same_v<decltype(ct[0]), const int&>);
    CHECK(ct.span().size() == 24);

    static_mat s;
    s(3, 15) = 2.0f;
    CHECK(s[63] == 2.0f);
    CHECK(s.view()(3, 15) == 2.0f);
}

TEST_CASE("tensor: row and rows slice the leading dimension") {
    t2::matrix<float> m(5, 3);
    for (std::size_t i = 0; i < m.size(); ++i)
        m[i] = static_cast<float>(i);

    auto r = m.row(2);
    static_assert(decltype(r)::rank() == 1);
    CHECK(r.size() == 3);
    CHECK(r.data() == m.data() + 6);
    CHECK(r(0) == 6.0f);
    r(1) = -7.0f;
    CHECK(m(2, 1) == -7.0f);

    auto block = m.rows(1, 4);
    CHECK(block.shape() == dims<2>(3, 3));
    CHECK(block.data() == m.data() + 3);
    CHECK(block(0, 0) == 3.0f);
    CHECK(block.row(1).data() == m.row(2).data());
    CHECK(m.rows(0, 5).size() == 15);
    CHECK(m.rows(5, 5).empty());
    CHECK(m.rows(2, 2).size() == 0);
    CHECK_THROWS_AS((void)m.rows(3, 2), t2::error);
    CHECK_THROWS_AS((void)m.rows(0, 6), t2::error);
    CHECK_THROWS_AS((void)m.rows(6, 6), t2::error);
    CHECK(error_message([&] { (void)m.rows(0, 6); }).find("out of range") != std::string::npos);

    t2::tensor<float, dims<3>> t(4, 2, 3);
    auto plane = t.row(3);
    CHECK(plane.shape() == dims<2>(2, 3));
    CHECK(plane.data() == t.data() + 18);
    CHECK(plane.row(1).data() == t.data() + 21);
    CHECK(t.rows(1, 3).shape() == dims<3>(2, 2, 3));
    CHECK(t.view().leading_stride() == 6);

    static_mat s;
    auto srow = s.row(3);
    CHECK(srow.data() == s.data() + 48);
    auto srows = s.rows(1, 3);
    CHECK(srows.extent(0) == 2);
    CHECK(srows.extent(1) == 16);

    const t2::vector<float> v(10);
    CHECK(v.rows(2, 5).size() == 3);
    CHECK(v.rows(2, 5).data() == v.data() + 2);
}

TEST_CASE("tensor: reshape without copy, mismatches are a t2::error") {
    t2::matrix<float> m(2, 6);
    for (std::size_t i = 0; i < m.size(); ++i)
        m[i] = static_cast<float>(i);
    auto r = m.reshape(dims<2>(3, 4));
    CHECK(r.data() == m.data());
    CHECK(r(2, 3) == 11.0f);
    CHECK(r(1, 0) == 4.0f);
    auto s = m.reshape(extents<12>{});
    static_assert(std::is_same_v<decltype(s), t2::tensor_view<float, extents<12>>>);
    CHECK(s(7) == 7.0f);
    CHECK(m.reshape(dims<3>(2, 2, 3)).size() == 12);
    CHECK(m.flat().size() == 12);
    CHECK(m.flat().data() == m.data());
    const auto& cm = m;
    auto cr = cm.reshape(dims<1>(12));
    static_assert(std::is_same_v<decltype(cr)::element_type, const float>);

    CHECK_THROWS_AS((void)m.reshape(dims<2>(5, 2)), t2::error);
    CHECK_THROWS_AS((void)m.reshape(extents<13>{}), t2::error);
    CHECK_THROWS_AS((void)m.reshape(dims<2>(0, 12)), t2::error);
    CHECK(error_message([&] { (void)m.reshape(dims<2>(5, 2)); }).find("[2, 6]") !=
          std::string::npos);
    // A shape whose element count overflows (and would wrap to a "matching" one) is caught.
    const std::size_t half = std::size_t{1} << 63;
    CHECK_THROWS_AS((void)m.reshape(dims<3>(half, 2, 12)), t2::error);
    CHECK_THROWS_AS((void)m.reshape(dims<2>(huge, huge)), t2::error);

    const t2::matrix<float> empty(0, 4);
    CHECK(empty.reshape(dims<3>(4, 0, 7)).size() == 0);
}

TEST_CASE("tensor: views convert T -> const T and static -> dynamic") {
    static_mat s;
    s(1, 1) = 3.0f;
    const t2::tensor_view<float, extents<4, 16>> sv = s;
    const t2::matrix_view<float> dv = sv;
    const t2::matrix_view<const float> cv = dv;
    const t2::tensor_view<const float, extents<dyn, 16>> half = s.view();
    CHECK(dv.data() == s.data());
    CHECK(cv.shape() == dims<2>(4, 16));
    CHECK(cv(1, 1) == 3.0f);
    CHECK(half.extent(0) == 4);

    // Passing tensors where views are expected.
    auto total = [](t2::matrix_view<const float> v) {
        float sum = 0;
        for (float x : v.span())
            sum += x;
        return sum;
    };
    CHECK(total(s) == 3.0f);
    t2::matrix<float> m(2, 2);
    m.fill(1.0f);
    CHECK(total(m) == 4.0f);
    const t2::matrix<float>& cm = m;
    CHECK(total(cm) == 4.0f);
    auto scale = [](t2::matrix_view<float> v, float k) {
        for (float& x : v.span())
            x *= k;
    };
    scale(m, 3.0f);
    CHECK(m(1, 1) == 3.0f);
    scale(s, 2.0f);
    CHECK(s(1, 1) == 6.0f);

    CHECK(t2::same_shape(t2::matrix_view<const float>(s), sv));
    CHECK_FALSE(t2::same_shape(m.view(), sv));
    const t2::matrix_view<float> default_view;
    CHECK(default_view.data() == nullptr);
    CHECK(default_view.empty());
}

TEST_CASE("view_of: a view over memory the caller owns") {
    std::array<float, 12> buffer{};
    auto v = t2::view_of(buffer.data(), 3, 4);
    static_assert(std::is_same_v<decltype(v), t2::matrix_view<float>>);
    v(1, 2) = 5.0f;
    CHECK(buffer[6] == 5.0f);
    CHECK(v.row(2).data() == buffer.data() + 8);

    const std::array<float, 12>& cbuffer = buffer;
    auto cv = t2::view_of(cbuffer.data(), 12);
    static_assert(std::is_same_v<decltype(cv), t2::vector_view<const float>>);
    CHECK(cv[6] == 5.0f);
    CHECK(cv.span().data() == buffer.data());

    CHECK_THROWS_AS((void)t2::view_of(buffer.data(), -3, 4), t2::error);
    // A shape read from a corrupt file whose element count wraps around size_t.
    CHECK_THROWS_AS((void)t2::view_of(buffer.data(), huge, huge), t2::error);
    CHECK_THROWS_AS((void)t2::view_of(buffer.data(), std::size_t{1} << 63, 2, 12), t2::error);
}

TEST_CASE("tensor: rank 0 holds one element") {
    t2::tensor<float, extents<>> scalar;
    static_assert(decltype(scalar)::rank() == 0);
    CHECK(scalar.size() == 1);
    CHECK(scalar() == 0.0f);
    scalar() = 3.0f;
    CHECK(scalar[0] == 3.0f);
    CHECK(scalar.view()() == 3.0f);
    CHECK(scalar.flat().size() == 1);
    CHECK(scalar.reshape(extents<1, 1>{})(0, 0) == 3.0f);
    CHECK(is_aligned(scalar.data()));
}

TEST_CASE("tensor: fill") {
    t2::matrix<float> m(3, 7);
    m.fill(2.5f);
    for (float x : m.span())
        CHECK(x == 2.5f);
    static_mat s;
    s.fill(-1.0f);
    CHECK(s(3, 15) == -1.0f);
    CHECK(s(0, 0) == -1.0f);
    t2::vector<t2::bf16> b(5);
    b.fill(t2::from_f32<t2::bf16>(1.0f));
    CHECK(b[4].bits == 0x3f80);
    t2::matrix<float> empty(0, 3);
    empty.fill(1.0f);
    CHECK(empty.empty());
}

#if T2_DEBUG_CHECKS
TEST_CASE("tensor: out-of-bounds access is caught by T2_ASSERT in debug builds") {
    t2::matrix<float> m(3, 4);
    CHECK_NOTHROW((void)m(2, 3));
    CHECK_THROWS_AS((void)m(3, 0), t2::error);
    // In bounds as a flat offset, out of bounds in its dimension.
    CHECK_THROWS_AS((void)m(0, 4), t2::error);
    CHECK_THROWS_AS((void)m(1, -1), t2::error);
    CHECK_THROWS_AS(((void)m[12]), t2::error);
    CHECK_THROWS_AS((void)m.row(3), t2::error);
    const auto& cm = m;
    CHECK_THROWS_AS((void)cm(5, 5), t2::error);
    auto v = m.view();
    CHECK_THROWS_AS((void)v(3, 3), t2::error);
    CHECK_THROWS_AS((void)v.row(7), t2::error);
    CHECK_THROWS_AS((void)v.row(0)(4), t2::error);
    static_mat s;
    CHECK_THROWS_AS((void)s(4, 0), t2::error);
    CHECK_THROWS_AS(((void)s[64]), t2::error);
    const std::string msg = error_message([&] { (void)m(0, 4); });
    CHECK(msg.find("out of range") != std::string::npos);
    CHECK(msg.find("internal check failed") != std::string::npos);
}
#endif
