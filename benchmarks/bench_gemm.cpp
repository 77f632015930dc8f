// gemm and gemv: t2's executors next to OpenBLAS (when installed) at the same shapes, in
// the same binary, so one run gives the ratios. benchmarks/compare.py turns the JSON output
// into the table of benchmarks/README.md.
//
// Names: <kernel>/<impl>/<threads>/<M>/<N>/<K>, impl ∈ {t2, openblas, scalar}. The skinny
// shapes are x·Wᵀ with W stored [N×K], as a transformer's linear layers store it.
#include <benchmark/benchmark.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "support.hpp"
#include "t2/t2.hpp"

#if T2_HAVE_OPENBLAS
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

using t2_bench::pool;
using t2_bench::random_matrix;

enum class impl { t2, openblas, scalar };

void report_gemm(benchmark::State& state, std::size_t m, std::size_t n, std::size_t k) {
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(m) * double(n) * double(k),
                                                   benchmark::Counter::kIsIterationInvariantRate,
                                                   benchmark::Counter::kIs1000);
}

void gemm(benchmark::State& state, impl which, int threads, std::size_t m, std::size_t n,
          std::size_t k, bool transpose_b) {
    const auto a = random_matrix(m, k, 1);
    const auto b = transpose_b ? random_matrix(n, k, 2) : random_matrix(k, n, 2);
    auto c = random_matrix(m, n, 3);
    const t2::ops::gemm_options options{.transpose_b = transpose_b};
    const t2::exec::threads<t2::exec::simd<>> ex(pool(threads));
    for (auto _ : state) {
        switch (which) {
        case impl::t2: t2::ops::gemm(ex, a, b, c, options); break;
        case impl::scalar: t2::ops::gemm(t2::exec::scalar{}, a, b, c, options); break;
        case impl::openblas:
#if T2_HAVE_OPENBLAS
            openblas_set_num_threads(threads);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans,
                        int(m), int(n), int(k), 1.f, a.data(), int(k), b.data(),
                        int(transpose_b ? k : n), 0.f, c.data(), int(n));
#endif
            break;
        }
        benchmark::DoNotOptimize(c.data());
        benchmark::ClobberMemory();
    }
    report_gemm(state, m, n, k);
}

// y[N] = W[N×K] · x: the weight streams from memory once per call, so bytes/s against the
// machine's read bandwidth is the figure of merit. Several weights larger than the
// last-level cache rotate so that every call reads from DRAM.
void gemv(benchmark::State& state, impl which, int threads, std::size_t n, std::size_t k) {
    const std::size_t copies = std::max<std::size_t>(1, (256u << 20) / (n * k * sizeof(float)));
    std::vector<t2::matrix<float>> weights;
    for (std::size_t i = 0; i < copies; ++i)
        weights.push_back(random_matrix(n, k, 10 + i));
    auto x = random_matrix(1, k, 4);
    auto y = random_matrix(1, n, 5);
    const t2::exec::threads<t2::exec::simd<>> ex(pool(threads));
    std::size_t next = 0;
    for (auto _ : state) {
        const auto& w = weights[next++ % copies];
        switch (which) {
        case impl::t2: t2::ops::gemv(ex, w, x.row(0), y.row(0)); break;
        case impl::scalar: t2::ops::gemv(t2::exec::scalar{}, w, x.row(0), y.row(0)); break;
        case impl::openblas:
#if T2_HAVE_OPENBLAS
            openblas_set_num_threads(threads);
            cblas_sgemv(CblasRowMajor, CblasNoTrans, int(n), int(k), 1.f, w.data(), int(k),
                        x.data(), 1, 0.f, y.data(), 1);
#endif
            break;
        }
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(n * k * sizeof(float)));
    report_gemm(state, 1, n, k);
}

// The read bandwidth gemv is measured against: a plain sum over 256 MiB, threads splitting
// the buffer.
void read_bandwidth(benchmark::State& state, int threads) {
    const std::size_t n = (256u << 20) / sizeof(float);
    t2::vector<float> buffer(n);
    buffer.fill(1.f);
    const t2::exec::threads<t2::exec::simd<>> ex(pool(threads));
    std::vector<float> partial(64);
    for (auto _ : state) {
        ex.parallel_for(n, n / 64, [&](std::size_t begin, std::size_t end) {
            using batch = xsimd::batch<float>;
            batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
            std::size_t i = begin;
            for (; i + 4 * batch::size <= end; i += 4 * batch::size) {
                s0 += batch::load_unaligned(buffer.data() + i);
                s1 += batch::load_unaligned(buffer.data() + i + batch::size);
                s2 += batch::load_unaligned(buffer.data() + i + 2 * batch::size);
                s3 += batch::load_unaligned(buffer.data() + i + 3 * batch::size);
            }
            float s = t2::detail::reduce_add(s0 + s1 + s2 + s3);
            for (; i < end; ++i)
                s += buffer[i];
            partial[begin / (n / 64)] = s;
        });
        benchmark::DoNotOptimize(partial.data());
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(n * sizeof(float)));
}

std::string name(const char* kernel, impl which, int threads, std::size_t m, std::size_t n, std::size_t k) {
    const char* impl_name = which == impl::t2 ? "t2" : which == impl::openblas ? "openblas" : "scalar";
    return std::string(kernel) + "/" + impl_name + "/" + std::to_string(threads) + "/" +
           std::to_string(m) + "/" + std::to_string(n) + "/" + std::to_string(k);
}

void register_all() {
    std::vector<impl> impls{impl::t2};
#if T2_HAVE_OPENBLAS
    impls.push_back(impl::openblas);
#endif
    for (int threads : {1, 2}) {
        benchmark::RegisterBenchmark(("read_bandwidth/" + std::to_string(threads)).c_str(),
                                     read_bandwidth, threads)
            ->UseRealTime();
        for (impl which : impls) {
            for (std::size_t s : {64, 128, 256, 512, 1024, 2048})
                benchmark::RegisterBenchmark(name("gemm", which, threads, s, s, s).c_str(), gemm,
                                             which, threads, s, s, s, false)
                    ->UseRealTime();
            for (std::size_t m : {1, 16, 128})
                for (std::size_t k : {288, 768, 2048, 4096})
                    for (std::size_t n : {288, 768, 2048, 4096})
                        benchmark::RegisterBenchmark(name("gemm_xwt", which, threads, m, n, k).c_str(),
                                                     gemm, which, threads, m, n, k, true)
                            ->UseRealTime();
            for (std::size_t n : {768, 2048, 4096})
                for (std::size_t k : {768, 2048, 4096})
                    benchmark::RegisterBenchmark(name("gemv", which, threads, 1, n, k).c_str(), gemv,
                                                 which, threads, n, k)
                        ->UseRealTime();
        }
    }
    // The reference, at a size where it finishes quickly: the speed-up of the optimised paths.
    benchmark::RegisterBenchmark(name("gemm", impl::scalar, 1, 256, 256, 256).c_str(), gemm,
                                 impl::scalar, 1, 256, 256, 256, false);
    benchmark::RegisterBenchmark(name("gemv", impl::scalar, 1, 1, 2048, 2048).c_str(), gemv,
                                 impl::scalar, 1, 2048, 2048);
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
