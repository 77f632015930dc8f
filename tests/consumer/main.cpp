// A program that uses t2 the way another project would. The packaging tests build it against
// the installed package (find_package, pkg-config, Meson) and through add_subdirectory.
#include <t2/t2.hpp>

#include <cstdio>

int main() {
    // [1 2 3; 4 5 6] · [1 0; 0 1; 1 1] = [4 5; 10 11]
    t2::matrix<float> a(2, 3), b(3, 2), c(2, 2);
    const float a_values[] = {1, 2, 3, 4, 5, 6};
    const float b_values[] = {1, 0, 0, 1, 1, 1};
    for (std::size_t i = 0; i < a.size(); ++i)
        a[i] = a_values[i];
    for (std::size_t i = 0; i < b.size(); ++i)
        b[i] = b_values[i];
    t2::ops::gemm(t2::exec::scalar{}, a, b, c);

    const bool ok = c(0, 0) == 4 && c(0, 1) == 5 && c(1, 0) == 10 && c(1, 1) == 11;
    std::printf("t2 %s, SIMD %s: %s\n", T2_VERSION_STRING, T2_ENABLE_SIMD ? "on" : "off",
                ok ? "ok" : "WRONG RESULT");
    return ok ? 0 : 1;
}
