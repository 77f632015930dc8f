#pragma once
// Row-major tensors: tensor_view (non-owning) and tensor (owning, 64-byte aligned).
//
//   tensor<float, dims<2>> w(rows, cols);        // run-time shape, heap storage
//   tensor<float, extents<4, 8>> fixed;          // compile-time shape, inline storage
//   matrix_view<const float> v = w;              // views convert from tensors
//   auto r = v.row(3);                           // rank-1 view of one row
//   auto block = v.rows(2, 5);                   // rows [2, 5), still rank 2
//   auto flat = v.reshape(dims<1>(v.size()));    // same memory, new shape
//
// Views are always contiguous, so slicing is limited to the leading dimension; that is what
// keeps every kernel free of stride arithmetic. The memory space is part of the type.
#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <type_traits>
#include <utility>

#include "t2/core/extents.hpp"
#include "t2/core/memory.hpp"

T2_NAMESPACE_BEGIN

namespace detail {
template <class E>
struct drop_leading;
template <std::size_t First, std::size_t... Rest>
struct drop_leading<extents<First, Rest...>> {
    using type = extents<Rest...>;
};
template <class E>
struct dynamic_leading;
template <std::size_t First, std::size_t... Rest>
struct dynamic_leading<extents<First, Rest...>> {
    using type = extents<dyn, Rest...>;
};
} // namespace detail

template <class T, extents_like Extents, memory_space Space = host_memory>
class tensor_view {
public:
    using element_type = T;
    using value_type = std::remove_cv_t<T>;
    using extents_type = Extents;
    using space = Space;

    static constexpr std::size_t rank() noexcept { return Extents::rank(); }

    constexpr tensor_view() noexcept = default;
    constexpr tensor_view(T* data, const Extents& shape) noexcept : data_(data), shape_(shape) {}

    // T -> const T, and static extents -> dynamic extents.
    template <class U, class F>
        requires(std::is_convertible_v<U (*)[], T (*)[]> && std::is_constructible_v<Extents, F> &&
                 !(std::is_same_v<U, T> && std::is_same_v<F, Extents>))
    constexpr tensor_view(const tensor_view<U, F, Space>& other) noexcept
        : data_(other.data()), shape_(other.shape()) {}

    constexpr T* data() const noexcept { return data_; }
    constexpr const Extents& shape() const noexcept { return shape_; }
    constexpr std::size_t extent(std::size_t i) const noexcept { return shape_.extent(i); }
    constexpr std::size_t size() const noexcept { return shape_.size(); }
    constexpr bool empty() const noexcept { return size() == 0; }

    // Element access; bounds are checked when T2_DEBUG_CHECKS is on.
    template <class... I>
        requires(sizeof...(I) == rank() && (std::is_integral_v<I> && ...))
    constexpr T& operator()(I... index) const {
        static_assert(std::is_same_v<Space, host_memory>, "element access needs host memory");
        const std::array<std::size_t, rank()> idx{static_cast<std::size_t>(index)...};
        std::size_t offset = 0;
        for (std::size_t d = 0; d < rank(); ++d) {
            T2_ASSERT(idx[d] < extent(d), "index ", idx[d], " out of range ", extent(d),
                      " in dimension ", d);
            offset = offset * extent(d) + idx[d];
        }
        return data_[offset];
    }

    constexpr T& operator[](std::size_t i) const {
        static_assert(std::is_same_v<Space, host_memory>, "element access needs host memory");
        T2_ASSERT(i < size(), "flat index ", i, " out of range ", size());
        return data_[i];
    }

    // The elements as a flat span (host memory only).
    constexpr std::span<T> span() const noexcept
        requires std::is_same_v<Space, host_memory>
    {
        return {data_, size()};
    }

    // Number of elements between consecutive indices of the leading dimension.
    constexpr std::size_t leading_stride() const noexcept {
        return extent(0) == 0 ? 0 : size() / extent(0);
    }

    // Slice i of the leading dimension, one rank lower.
    constexpr auto row(std::size_t i) const
        requires(rank() >= 2)
    {
        using sub = typename detail::drop_leading<Extents>::type;
        T2_ASSERT(i < extent(0), "row ", i, " out of range ", extent(0));
        std::array<std::size_t, rank() - 1> sub_shape{};
        for (std::size_t d = 1; d < rank(); ++d)
            sub_shape[d - 1] = extent(d);
        return tensor_view<T, sub, Space>(data_ + i * leading_stride(), sub{sub_shape});
    }

    // Slices [begin, end) of the leading dimension, same rank.
    constexpr auto rows(std::size_t begin, std::size_t end) const {
        using sub = typename detail::dynamic_leading<Extents>::type;
        T2_CHECK(begin <= end && end <= extent(0), "rows [", begin, ", ", end,
                 ") out of range ", extent(0));
        auto all = shape_.all();
        all[0] = end - begin;
        return tensor_view<T, sub, Space>(data_ + begin * leading_stride(), sub{all});
    }

    // The same memory under another shape with the same number of elements.
    template <extents_like F>
    constexpr tensor_view<T, F, Space> reshape(const F& shape) const {
        T2_CHECK(detail::checked_product(shape.all()) == size(), "cannot reshape ", shape_,
                 " (", size(), " elements) to ", shape);
        return {data_, shape};
    }

    constexpr tensor_view<T, dims<1>, Space> flat() const noexcept {
        return {data_, dims<1>(size())};
    }

private:
    T* data_ = nullptr;
    [[no_unique_address]] Extents shape_{};
};

namespace detail {
// A static shape is stored in the type alone, so the tensor is exactly its elements.
template <class T, class Extents>
struct static_storage {
    alignas(tensor_alignment) std::array<T, Extents::static_size> elements{};
    static_storage() = default;
    explicit static_storage(const Extents&) {}
    static_storage(const Extents&, uninitialized_t) {}
    T* data() noexcept { return elements.data(); }
    const T* data() const noexcept { return elements.data(); }
    static constexpr Extents shape() noexcept { return {}; }
};
template <class T, class Extents>
struct dynamic_storage {
    aligned_buffer<T> buffer;
    Extents shape_{};
    dynamic_storage() = default; // empty: every dynamic extent 0
    explicit dynamic_storage(const Extents& shape)
        : buffer(checked_product(shape.all())), shape_(shape) {}
    dynamic_storage(const Extents& shape, uninitialized_t)
        : buffer(checked_product(shape.all()), uninitialized), shape_(shape) {}
    dynamic_storage(const dynamic_storage&) = default;
    dynamic_storage& operator=(const dynamic_storage&) = default;
    // A moved-from tensor is empty (its dynamic extents become 0), never a shape without
    // storage behind it.
    dynamic_storage(dynamic_storage&& other) noexcept
        : buffer(std::move(other.buffer)), shape_(std::exchange(other.shape_, Extents{})) {}
    dynamic_storage& operator=(dynamic_storage&& other) noexcept {
        buffer = std::move(other.buffer);
        shape_ = std::exchange(other.shape_, Extents{});
        return *this;
    }
    T* data() noexcept { return buffer.data(); }
    const T* data() const noexcept { return buffer.data(); }
    const Extents& shape() const noexcept { return shape_; }
};
} // namespace detail

// Owning row-major host tensor, zero-initialised. Static shapes store their elements
// inline; dynamic shapes allocate once. Copy is deep, move is cheap for dynamic shapes.
// (Device tensors come with the CUDA executor; their storage is allocated by it.)
template <class T, extents_like Extents, memory_space Space = host_memory>
class tensor {
    static_assert(std::is_same_v<Space, host_memory>,
                  "owning device tensors are allocated by the CUDA executor");
    static_assert(!std::is_const_v<T>, "tensor owns mutable elements");

public:
    using element_type = T;
    using value_type = T;
    using extents_type = Extents;
    using space = Space;
    using view_type = tensor_view<T, Extents, Space>;
    using const_view_type = tensor_view<const T, Extents, Space>;

    static constexpr std::size_t rank() noexcept { return Extents::rank(); }

    // Static shapes: zero-filled elements; dynamic shapes: an empty tensor (extents 0).
    tensor() = default;

    explicit tensor(const Extents& shape) : storage_(shape) {}
    // Elements left unset, for outputs the caller writes in full before reading (skips the
    // zero fill; static shapes are zeroed anyway).
    tensor(const Extents& shape, uninitialized_t) : storage_(shape, uninitialized) {}

    template <class... I>
        requires((std::is_integral_v<I> && ...) && sizeof...(I) > 0)
    explicit tensor(I... extents_values) : tensor(Extents(extents_values...)) {}

    T* data() noexcept { return storage_.data(); }
    const T* data() const noexcept { return storage_.data(); }
    decltype(auto) shape() const noexcept { return storage_.shape(); }
    std::size_t extent(std::size_t i) const noexcept { return shape().extent(i); }
    std::size_t size() const noexcept { return shape().size(); }
    bool empty() const noexcept { return size() == 0; }

    view_type view() noexcept { return {data(), shape()}; }
    const_view_type view() const noexcept { return {data(), shape()}; }
    operator view_type() noexcept { return view(); }
    operator const_view_type() const noexcept { return view(); }
    template <class U, class F>
        requires(std::is_constructible_v<tensor_view<U, F, Space>, view_type>)
    operator tensor_view<U, F, Space>() noexcept {
        return view();
    }
    template <class U, class F>
        requires(std::is_constructible_v<tensor_view<U, F, Space>, const_view_type>)
    operator tensor_view<U, F, Space>() const noexcept {
        return view();
    }

    template <class... I>
    T& operator()(I... index) {
        return view()(index...);
    }
    template <class... I>
    const T& operator()(I... index) const {
        return view()(index...);
    }
    T& operator[](std::size_t i) { return view()[i]; }
    const T& operator[](std::size_t i) const { return view()[i]; }
    std::span<T> span() noexcept { return {data(), size()}; }
    std::span<const T> span() const noexcept { return {data(), size()}; }

    auto row(std::size_t i) { return view().row(i); }
    auto row(std::size_t i) const { return view().row(i); }
    auto rows(std::size_t b, std::size_t e) { return view().rows(b, e); }
    auto rows(std::size_t b, std::size_t e) const { return view().rows(b, e); }
    template <extents_like F>
    auto reshape(const F& shape) {
        return view().reshape(shape);
    }
    template <extents_like F>
    auto reshape(const F& shape) const {
        return view().reshape(shape);
    }
    auto flat() noexcept { return view().flat(); }
    auto flat() const noexcept { return view().flat(); }

    void fill(const T& value) { std::fill_n(data(), size(), value); }

private:
    std::conditional_t<Extents::is_static, detail::static_storage<T, Extents>,
                       detail::dynamic_storage<T, Extents>>
        storage_{};
};

template <class T, memory_space S = host_memory>
using vector_view = tensor_view<T, dims<1>, S>;
template <class T, memory_space S = host_memory>
using matrix_view = tensor_view<T, dims<2>, S>;
template <class T>
using vector = tensor<T, dims<1>>;
template <class T>
using matrix = tensor<T, dims<2>>;

// A view over memory the caller owns (e.g. a memory-mapped checkpoint).
template <class T, class... I>
    requires(std::is_integral_v<I> && ...)
constexpr tensor_view<T, dims<sizeof...(I)>> view_of(T* data, I... extents_values) {
    const dims<sizeof...(I)> shape(extents_values...);
    (void)detail::checked_product(shape.all()); // shapes from files must not wrap around
    return {data, shape};
}

template <class T, class E, class S, class U, class F>
bool same_shape(const tensor_view<T, E, S>& a, const tensor_view<U, F, S>& b) noexcept {
    return a.shape() == b.shape();
}

T2_NAMESPACE_END
