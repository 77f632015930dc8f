// With odr_b.cpp: two translation units that include every public header, linked into one
// program. A function or variable defined in a header without `inline` is then defined
// twice, and the link fails.
#include "all_headers.hpp"

#include <cstdio>

float odr_b_sum();

int main() {
    t2::matrix<float> m(2, 2);
    m.fill(1.f);
    const float sum = m[0] + m[3] + odr_b_sum();
    std::printf("%s\n", sum == 4.f ? "ok" : "wrong sum");
    return sum == 4.f ? 0 : 1;
}
