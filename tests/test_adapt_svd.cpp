// adapt::svd: reconstruction, orthogonality, ordering and the sign convention on random,
// ill-conditioned, low-rank and edge-shaped matrices, for every method in f64 and f32 working
// precision; singular values against numpy.linalg.svd (and LAPACK's sgesdd through
// svd_lapack where the build has LAPACKE); bitwise agreement of every executor.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "t2/adapt/svd.hpp"
#if T2_HAVE_LAPACKE
#include "t2/adapt/svd_lapack.hpp"
#endif

#include "support/check.hpp"
#include "support/executors.hpp"

namespace {

using t2::matrix;
using t2::vector;
using t2::adapt::svd_method;
using t2::adapt::svd_result;
const t2::exec::scalar reference;
constexpr svd_method methods[] = {svd_method::bidiagonal, svd_method::jacobi};

const char* name(svd_method method) {
    return method == svd_method::jacobi ? "jacobi" : "bidiagonal";
}

t2::adapt::svd_options with(svd_method method) {
    t2::adapt::svd_options options;
    options.method = method;
    return options;
}

// Accuracy required of each working precision: the 1e-5 for f64 (measured: a
// few 1e-8, the f32 rounding of the results); f32 work measures up to ~2e-6 here.
template <class Real>
constexpr double tolerance = std::is_same_v<Real, double> ? 1e-5 : 2e-5;

struct svd_errors {
    double reconstruction = 0; // ‖W − UΣVᵀ‖_F / ‖W‖_F (absolute when W = 0)
    double u_orthogonality = 0; // max |UᵀU − I|
    double v_orthogonality = 0; // max |VᵀV − I|
};

double orthogonality_error(const matrix<float>& x) {
    const std::size_t rows = x.extent(0), cols = x.extent(1);
    double worst = 0;
    for (std::size_t a = 0; a < cols; ++a)
        for (std::size_t b = 0; b < cols; ++b) {
            double dot = 0;
            for (std::size_t i = 0; i < rows; ++i)
                dot += double(x(i, a)) * x(i, b);
            worst = std::max(worst, std::abs(dot - (a == b ? 1.0 : 0.0)));
        }
    return worst;
}

// Checks shapes, order, signs, and returns the errors (printed by the callers' INFO).
svd_errors check_structure(const matrix<float>& w, const svd_result& d) {
    const std::size_t n = w.extent(0), m = w.extent(1), r = std::min(n, m);
    REQUIRE(d.u.extent(0) == n);
    REQUIRE(d.u.extent(1) == r);
    REQUIRE(d.sigma.extent(0) == r);
    REQUIRE(d.v.extent(0) == m);
    REQUIRE(d.v.extent(1) == r);
    for (std::size_t k = 0; k < r; ++k) {
        CHECK(d.sigma[k] >= 0);
        if (k > 0)
            CHECK(d.sigma[k] <= d.sigma[k - 1]);
        // Sign convention: the first component of largest magnitude of each U column is > 0.
        std::size_t big = 0;
        for (std::size_t i = 1; i < n; ++i)
            if (std::abs(d.u(i, k)) > std::abs(d.u(big, k)))
                big = i;
        CHECK(d.u(big, k) > 0);
    }
    svd_errors e;
    double diff2 = 0, norm2 = 0;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) {
            double x = 0;
            for (std::size_t k = 0; k < r; ++k)
                x += double(d.u(i, k)) * d.sigma[k] * d.v(j, k);
            diff2 += (x - w(i, j)) * (x - w(i, j));
            norm2 += double(w(i, j)) * w(i, j);
        }
    e.reconstruction = norm2 > 0 ? std::sqrt(diff2 / norm2) : std::sqrt(diff2);
    e.u_orthogonality = orthogonality_error(d.u);
    e.v_orthogonality = orthogonality_error(d.v);
    return e;
}

template <class Real>
svd_result check_svd(const matrix<float>& w, const std::string& what, svd_method method) {
    const svd_result d = t2::adapt::svd<Real>(reference, w, with(method));
    const svd_errors e = check_structure(w, d);
    INFO(what, " ", w.extent(0), "x", w.extent(1), " ", name(method),
         " Real=", sizeof(Real) == 8 ? "f64" : "f32",
         ": reconstruction ", e.reconstruction, ", UtU-I ", e.u_orthogonality, ", VtV-I ",
         e.v_orthogonality);
    CHECK(e.reconstruction <= tolerance<Real>);
    CHECK(e.u_orthogonality <= tolerance<Real>);
    CHECK(e.v_orthogonality <= tolerance<Real>);
    return d;
}

template <class Real>
void check_methods(const matrix<float>& w, const std::string& what) {
    for (const svd_method method : methods)
        check_svd<Real>(w, what, method);
}

// Orthonormal columns: modified Gram-Schmidt (twice) in double on a Gaussian n × k matrix,
// i.e. the Q of its QR decomposition.
std::vector<double> random_orthonormal(std::size_t n, std::size_t k, std::uint64_t seed) {
    const t2::philox rng(seed);
    std::vector<double> q(n * k); // column-major
    for (std::size_t i = 0; i < n * k; ++i)
        q[i] = rng.normal(i);
    for (std::size_t j = 0; j < k; ++j)
        for (int pass = 0; pass < 2; ++pass) {
            for (std::size_t l = 0; l < j; ++l) {
                double dot = 0;
                for (std::size_t i = 0; i < n; ++i)
                    dot += q[l * n + i] * q[j * n + i];
                for (std::size_t i = 0; i < n; ++i)
                    q[j * n + i] -= dot * q[l * n + i];
            }
            double norm = 0;
            for (std::size_t i = 0; i < n; ++i)
                norm += q[j * n + i] * q[j * n + i];
            for (std::size_t i = 0; i < n; ++i)
                q[j * n + i] /= std::sqrt(norm);
        }
    return q;
}

// W = U diag(σ) Vᵀ with σ geometric from 1 down to `smallest`, rounded to f32.
matrix<float> with_singular_values(std::size_t n, std::size_t m, double smallest,
                                   std::vector<double>& sigma) {
    const std::size_t r = std::min(n, m);
    const auto u = random_orthonormal(n, r, 11), v = random_orthonormal(m, r, 12);
    sigma.resize(r);
    for (std::size_t k = 0; k < r; ++k)
        sigma[k] = r == 1 ? 1.0 : std::pow(smallest, double(k) / double(r - 1));
    matrix<float> w(n, m);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) {
            double x = 0;
            for (std::size_t k = 0; k < r; ++k)
                x += u[k * n + i] * sigma[k] * v[k * m + j];
            w(i, j) = float(x);
        }
    return w;
}

template <class F>
matrix<float> from_formula(std::size_t n, std::size_t m, F f) {
    matrix<float> w(n, m);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j)
            w(i, j) = float(f(double(i), double(j)));
    return w;
}

bool bitwise_equal(const svd_result& a, const svd_result& b) {
    auto same = [](auto x, auto y) {
        return x.size() == y.size() &&
               (x.size() == 0 || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
    };
    return same(a.u.span(), b.u.span()) && same(a.sigma.span(), b.sigma.span()) &&
           same(a.v.span(), b.v.span());
}

} // namespace

TEST_CASE_TEMPLATE("svd of random matrices: tall, wide and square", Real, double, float) {
    const std::size_t shapes[][2] = {{40, 30}, {30, 40}, {48, 48}, {17, 5}, {5, 17}, {33, 31}};
    std::uint64_t seed = 1;
    for (const auto& s : shapes)
        check_methods<Real>(t2_test::random_matrix(s[0], s[1], seed++), "random");
}

TEST_CASE_TEMPLATE("svd of an ill-conditioned matrix (condition 1e6)", Real, double, float) {
    for (const auto& s : {std::array<std::size_t, 2>{40, 30}, std::array<std::size_t, 2>{30, 40}}) {
        std::vector<double> sigma;
        const matrix<float> w = with_singular_values(s[0], s[1], 1e-6, sigma);
        for (const svd_method method : methods) {
            const svd_result d = check_svd<Real>(w, "ill-conditioned", method);
            // W itself is rounded to f32, which moves each σ by up to about ‖δW‖₂ ≈ 1e-7 (Weyl).
            for (std::size_t k = 0; k < sigma.size(); ++k) {
                INFO(name(method), " sigma[", k, "] = ", d.sigma[k], ", built with ", sigma[k]);
                CHECK(std::abs(d.sigma[k] - sigma[k]) <= tolerance<Real> * 0.1 * sigma[0]);
            }
        }
    }
}

TEST_CASE_TEMPLATE("svd of a rank-3 40x30 matrix", Real, double, float) {
    const matrix<float> a = t2_test::random_matrix(40, 3, 21), b = t2_test::random_matrix(3, 30, 22);
    matrix<float> w(40, 30);
    for (std::size_t i = 0; i < 40; ++i)
        for (std::size_t j = 0; j < 30; ++j)
            w(i, j) = a(i, 0) * b(0, j) + a(i, 1) * b(1, j) + a(i, 2) * b(2, j);
    for (const bool transpose : {false, true}) {
        matrix<float> x = transpose ? matrix<float>(30, 40) : w;
        if (transpose)
            for (std::size_t i = 0; i < 40; ++i)
                for (std::size_t j = 0; j < 30; ++j)
                    x(j, i) = w(i, j);
        for (const svd_method method : methods) {
            const svd_result d = check_svd<Real>(x, transpose ? "rank 3 (wide)" : "rank 3", method);
            CHECK(d.sigma[2] > 0.1 * d.sigma[0]);
            for (std::size_t k = 3; k < 30; ++k) {
                INFO(name(method), " sigma[", k, "] = ", d.sigma[k]);
                CHECK(d.sigma[k] <= 1e-6 * d.sigma[0]); // only the f32 rounding of W
            }
        }
    }
}

TEST_CASE_TEMPLATE("svd of edge shapes", Real, double, float) {
    check_methods<Real>(t2_test::random_matrix(1, 9, 31), "1xn");
    check_methods<Real>(t2_test::random_matrix(9, 1, 32), "nx1");
    check_methods<Real>(t2_test::random_matrix(1, 1, 33), "1x1");
    for (const svd_method method : methods) {
        CAPTURE(name(method));
        {
            matrix<float> w(1, 1);
            w(0, 0) = -2.5f;
            const svd_result d = check_svd<Real>(w, "negative 1x1", method);
            CHECK(d.sigma[0] == 2.5f);
            CHECK(d.u(0, 0) == 1.0f);
            CHECK(d.v(0, 0) == -1.0f);
        }
        for (const auto& s : {std::array<std::size_t, 2>{5, 3}, std::array<std::size_t, 2>{3, 5},
                              std::array<std::size_t, 2>{4, 4}, std::array<std::size_t, 2>{1, 6}}) {
            const matrix<float> zero(s[0], s[1]);
            const svd_result d = check_svd<Real>(zero, "all-zero", method);
            for (std::size_t k = 0; k < d.sigma.size(); ++k)
                CHECK(d.sigma[k] == 0.0f);
        }
        {
            // One zero column among nonzero ones: a completed, orthogonal U column whose σ is
            // exactly 0 from Jacobi and rounding noise from the bidiagonal method.
            matrix<float> w = t2_test::random_matrix(6, 4, 34);
            for (std::size_t i = 0; i < 6; ++i)
                w(i, 1) = 0;
            const svd_result d = check_svd<Real>(w, "zero column", method);
            if (method == svd_method::jacobi)
                CHECK(d.sigma[3] == 0.0f);
            CHECK(d.sigma[3] <= 1e-6f * d.sigma[0]);
            CHECK(d.sigma[2] > 0.0f);
        }
        {
            // Equal singular values: any orthonormal basis is right; the checks are the
            // reconstruction, orthogonality and the sign convention.
            matrix<float> rot(2, 2);
            rot(0, 0) = 1.2f, rot(0, 1) = -1.6f, rot(1, 0) = 1.6f, rot(1, 1) = 1.2f; // 2·rotation
            const svd_result d = check_svd<Real>(rot, "2x2 equal sigma", method);
            CHECK(std::abs(d.sigma[0] - 2.0f) <= 1e-6f);
            CHECK(std::abs(d.sigma[1] - 2.0f) <= 1e-6f);
            matrix<float> eye(2, 2);
            eye(0, 0) = eye(1, 1) = 1;
            const svd_result e = check_svd<Real>(eye, "identity", method);
            CHECK(e.sigma[0] == 1.0f);
            CHECK(e.sigma[1] == 1.0f);
        }
    }
    {
        // Magnitudes far from 1 in both directions: the power-of-two prescaling.
        matrix<float> big = t2_test::random_matrix(7, 5, 35), tiny = big;
        for (std::size_t i = 0; i < big.size(); ++i) {
            big[i] *= 1e30f;
            tiny[i] *= 1e-30f;
        }
        check_methods<Real>(big, "huge entries");
        check_methods<Real>(tiny, "tiny entries");
    }
    for (const auto& s : {std::array<std::size_t, 2>{0, 5}, std::array<std::size_t, 2>{5, 0},
                          std::array<std::size_t, 2>{0, 0}})
        for (const svd_method method : methods) {
            const svd_result d = t2::adapt::svd<Real>(reference, matrix<float>(s[0], s[1]), with(method));
            CHECK(d.u.extent(0) == s[0]);
            CHECK(d.v.extent(0) == s[1]);
            CHECK(d.u.extent(1) == 0);
            CHECK(d.v.extent(1) == 0);
            CHECK(d.sigma.size() == 0);
        }
}

TEST_CASE("svd singular values match numpy.linalg.svd") {
    // numpy 1.x (Debian python3-numpy), float64 SVD of the same f32 matrices:
    //   w = np.array([[f(i, j) ...]]).astype(np.float32).astype(np.float64)
    //   np.linalg.svd(w, compute_uv=False)
    struct reference_case {
        std::size_t n, m;
        double (*f)(double, double);
        std::vector<double> sigma;
    };
    const reference_case cases[] = {
        {7, 5, [](double i, double j) { return std::sin(i * 7 + j * 3) + 0.1 * i; },
         {3.837351562279e+00, 2.105523633274e+00, 6.794194124642e-01, 5.097453888936e-08,
          3.061708601849e-08}},
        {4, 9, [](double i, double j) { return std::cos(i * 2 + j * 5) * (1 + 0.25 * j); },
         {7.161497332375e+00, 5.293691551116e+00, 1.080421968189e-07, 3.024686715702e-08}},
        {12, 12, [](double i, double j) { return std::sin(i * j + 1.0) / (1 + i + j); },
         {1.197951484162e+00, 4.221522206217e-01, 3.918053574943e-01, 3.603644708504e-01,
          2.013531377408e-01, 1.952318095121e-01, 1.767806146048e-01, 1.708739137865e-01,
          1.513278348161e-01, 1.434653750127e-01, 3.385687782775e-02, 2.705049074326e-02}},
        {6, 6, [](double i, double j) { return (i + 1) * (j + 2) * 0.01 + (i == j ? 1e-3 : 0.0); },
         {1.125673587761e+00, 1.000007887508e-03, 1.000003914535e-03, 1.000000252996e-03,
          9.999881419149e-04, 9.958482491484e-04}},
    };
    for (const auto& c : cases)
        for (const svd_method method : methods) {
            const matrix<float> w = from_formula(c.n, c.m, c.f);
            const svd_result d = check_svd<double>(w, "numpy case", method);
            const svd_result df = check_svd<float>(w, "numpy case", method);
            for (std::size_t k = 0; k < c.sigma.size(); ++k) {
                // Relative to σ itself, or to σ_max for values near the rounding level of W.
                const double scale = std::max(c.sigma[k], 1e-2 * c.sigma[0]);
                INFO(c.n, "x", c.m, " ", name(method), " sigma[", k, "] = ", d.sigma[k],
                     " (f32 work: ", df.sigma[k], "), numpy ", c.sigma[k]);
                CHECK(std::abs(d.sigma[k] - c.sigma[k]) <= 1e-5 * scale);
                CHECK(std::abs(df.sigma[k] - c.sigma[k]) <= 1e-5 * scale);
            }
        }
}

TEST_CASE_TEMPLATE("svd gives bitwise equal results on every executor", Real, double, float) {
    const std::size_t shapes[][2] = {{37, 23}, {23, 37}, {24, 24}, {3, 2}};
    std::uint64_t seed = 41;
    for (const auto& s : shapes) {
        const matrix<float> w = t2_test::random_matrix(s[0], s[1], seed++);
        for (const svd_method method : methods) {
            const svd_result want = t2::adapt::svd<Real>(reference, w, with(method));
            t2_test::for_each_executor([&](const auto& ex, const std::string& executor) {
                INFO(executor, " ", name(method), " on ", s[0], "x", s[1]);
                CHECK(bitwise_equal(t2::adapt::svd<Real>(ex, w, with(method)), want));
            });
        }
    }
    // Big enough that the work is split over the pool (small matrices run as one task):
    // threads<scalar> on 2 and 3 threads (3 splits unevenly).
    for (const auto& s : {std::array<std::size_t, 2>{96, 70}, std::array<std::size_t, 2>{70, 96}}) {
        const matrix<float> w = t2_test::random_matrix(s[0], s[1], seed++);
        for (const svd_method method : methods) {
            const svd_result want = t2::adapt::svd<Real>(reference, w, with(method));
            for (const std::size_t threads : {2, 3}) {
                INFO(threads, " threads, ", name(method), " on ", s[0], "x", s[1]);
                const t2::exec::threads<t2::exec::scalar> ex(t2_test::test_pool(threads));
                CHECK(bitwise_equal(t2::adapt::svd<Real>(ex, w, with(method)), want));
            }
        }
    }
    // The bidiagonal method splits columns and 256-row chunks, which needs a few hundred of
    // each before a task is worth it.
    for (const auto& s : {std::array<std::size_t, 2>{300, 200}, std::array<std::size_t, 2>{200, 300}}) {
        const matrix<float> w = t2_test::random_matrix(s[0], s[1], seed++);
        const svd_result want = t2::adapt::svd<Real>(reference, w);
        for (const std::size_t threads : {2, 3}) {
            INFO(threads, " threads, bidiagonal on ", s[0], "x", s[1]);
            const t2::exec::threads<t2::exec::scalar> ex(t2_test::test_pool(threads));
            CHECK(bitwise_equal(t2::adapt::svd<Real>(ex, w), want));
        }
    }
}

TEST_CASE("svd rejects bad input and reports non-convergence") {
    matrix<float> w = t2_test::random_matrix(4, 3, 51);
    w(2, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(t2::adapt::svd(reference, w), t2::error);
    w(2, 1) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(t2::adapt::svd(reference, w), t2::error);

    const matrix<float> x = t2_test::random_matrix(30, 30, 52);
    t2::adapt::svd_options one_sweep = with(svd_method::jacobi);
    one_sweep.max_sweeps = 1;
    CHECK_THROWS_AS(t2::adapt::svd(reference, x, one_sweep), t2::error);
    t2::adapt::svd_options bad;
    bad.max_sweeps = 0;
    CHECK_THROWS_AS(t2::adapt::svd(reference, x, bad), t2::error);
    bad.max_sweeps = 10;
    bad.tolerance = -1;
    CHECK_THROWS_AS(t2::adapt::svd(reference, x, bad), t2::error);
}

#if T2_HAVE_LAPACKE
TEST_CASE("svd agrees with LAPACK's sgesdd (svd_lapack)") {
    const std::size_t shapes[][2] = {{64, 48}, {48, 64}, {50, 50}, {1, 7}};
    std::uint64_t seed = 61;
    for (const auto& s : shapes) {
        const matrix<float> w = t2_test::random_matrix(s[0], s[1], seed++);
        const svd_result lapack = t2::adapt::svd_lapack(w);
        const svd_errors e = check_structure(w, lapack);
        INFO("sgesdd ", s[0], "x", s[1], ": reconstruction ", e.reconstruction, ", UtU-I ",
             e.u_orthogonality, ", VtV-I ", e.v_orthogonality);
        CHECK(e.reconstruction <= 1e-5);
        CHECK(e.u_orthogonality <= 1e-5);
        CHECK(e.v_orthogonality <= 1e-5);
        for (const svd_method method : methods) {
            const svd_result d = t2::adapt::svd(reference, w, with(method));
            for (std::size_t k = 0; k < d.sigma.size(); ++k) {
                INFO(name(method), " ", s[0], "x", s[1], " sigma[", k, "] = ", d.sigma[k],
                     ", sgesdd ", lapack.sigma[k]);
                CHECK(std::abs(d.sigma[k] - lapack.sigma[k]) <= 1e-5 * lapack.sigma[0]);
            }
        }
    }
    matrix<float> bad = t2_test::random_matrix(3, 3, 69);
    bad(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(t2::adapt::svd_lapack(bad), t2::error);
    CHECK(t2::adapt::svd_lapack(matrix<float>(0, 4)).sigma.size() == 0);
}
#endif
