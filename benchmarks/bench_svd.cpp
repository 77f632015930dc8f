// adapt::svd next to LAPACK's sgesdd (OpenBLAS's LAPACKE, when installed) at the same shapes,
// in the same binary, and the decomposition of every weight of the stories110M shape.
//
// Names: svd/<impl>/<threads>/<N>/<M>, impl ∈ {t2_f64, dgesdd, t2_f32, sgesdd, t2_jacobi}: t2
// with Real = double or float (method bidiagonal) on threads<simd<>> over a pool of <threads>,
// LAPACKE_dgesdd / LAPACKE_sgesdd with OpenBLAS on <threads> (dgesdd on W widened to f64: the
// like of t2_f64, as sgesdd is of t2_f32), and t2's one-sided Jacobi (Real = double). Each
// t2 variant is registered next to its LAPACK counterpart; run with
// --benchmark_enable_random_interleaving=true so that repetitions of all of them alternate and
// share the machine's load.
// svd_stories110m/<impl>/<threads>: all 84 matrices of stories110M (12 layers × wq, wk, wv,
// wo [768 × 768], w1, w3 [2048 × 768], w2 [768 × 2048]), one after the other.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"
#include "t2/adapt/svd.hpp"
#include "t2/t2.hpp"

#if T2_HAVE_LAPACKE
#include "t2/adapt/svd_lapack.hpp"
#endif
#if T2_HAVE_OPENBLAS
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

using t2_bench::pool;
using t2_bench::random_matrix;

enum class impl { t2_f64, dgesdd, t2_f32, sgesdd, t2_jacobi };

const char* impl_name(impl which) {
    switch (which) {
    case impl::t2_f64: return "t2_f64";
    case impl::t2_f32: return "t2_f32";
    case impl::t2_jacobi: return "t2_jacobi";
    case impl::sgesdd: return "sgesdd";
    case impl::dgesdd: return "dgesdd";
    }
    return "";
}

t2::adapt::svd_result decompose(impl which, int threads, const t2::matrix<float>& w) {
    const t2::exec::threads<t2::exec::simd<>> ex(pool(std::size_t(threads)));
    switch (which) {
    case impl::t2_f64: return t2::adapt::svd<double>(ex, w);
    case impl::t2_f32: return t2::adapt::svd<float>(ex, w);
    case impl::t2_jacobi:
        return t2::adapt::svd<double>(ex, w, {.method = t2::adapt::svd_method::jacobi});
    case impl::sgesdd:
    case impl::dgesdd:
#if T2_HAVE_LAPACKE
#if T2_HAVE_OPENBLAS
        openblas_set_num_threads(threads);
#endif
        return which == impl::sgesdd ? t2::adapt::svd_lapack<float>(w) : t2::adapt::svd_lapack<double>(w);
#else
        break;
#endif
    }
    return {};
}

void svd(benchmark::State& state, impl which, int threads, std::size_t n, std::size_t m) {
    const auto w = random_matrix(n, m, 1);
    for (auto _ : state) {
        auto d = decompose(which, threads, w);
        benchmark::DoNotOptimize(d.sigma.data());
    }
}

void svd_stories110m(benchmark::State& state, impl which, int threads) {
    std::vector<std::pair<std::size_t, std::size_t>> shapes;
    for (int layer = 0; layer < 12; ++layer) {
        for (int i = 0; i < 4; ++i)
            shapes.emplace_back(768, 768); // wq, wk, wv, wo
        shapes.emplace_back(2048, 768);    // w1
        shapes.emplace_back(2048, 768);    // w3
        shapes.emplace_back(768, 2048);    // w2
    }
    for (auto _ : state)
        for (std::size_t i = 0; i < shapes.size(); ++i) {
            // One matrix at a time, as a decomposition tool would load them.
            const auto w = random_matrix(shapes[i].first, shapes[i].second, 100 + i);
            auto d = decompose(which, threads, w);
            benchmark::DoNotOptimize(d.sigma.data());
        }
}

void register_all() {
#if T2_HAVE_LAPACKE
    const std::vector<impl> impls{impl::t2_f64, impl::dgesdd, impl::t2_f32, impl::sgesdd};
#else
    const std::vector<impl> impls{impl::t2_f64, impl::t2_f32};
#endif
    const std::pair<std::size_t, std::size_t> shapes[] = {
        {256, 256}, {512, 512}, {1024, 1024}, {2048, 2048}, {768, 2048}, {2048, 768}};
    for (int threads : {1, 2})
        for (const auto& [n, m] : shapes)
            for (impl which : impls) {
                const std::string name = std::string("svd/") + impl_name(which) + "/" +
                                         std::to_string(threads) + "/" + std::to_string(n) + "/" +
                                         std::to_string(m);
                benchmark::RegisterBenchmark(name.c_str(), svd, which, threads, n, m)
                    ->Unit(benchmark::kMillisecond)
                    ->UseRealTime();
            }
    // The method the bidiagonal one replaced, at one size.
    benchmark::RegisterBenchmark("svd/t2_jacobi/1/512/512", svd, impl::t2_jacobi, 1, 512, 512)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    for (int threads : {1, 2})
        for (impl which : impls)
            benchmark::RegisterBenchmark(
                (std::string("svd_stories110m/") + impl_name(which) + "/" + std::to_string(threads)).c_str(),
                svd_stories110m, which, threads)
                ->Unit(benchmark::kSecond)
                ->UseRealTime()
                ->Iterations(1);
}

} // namespace

int main(int argc, char** argv) {
    register_all();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
