// See odr_a.cpp.
#include "all_headers.hpp"

float odr_b_sum() {
    t2::vector<float> v(2);
    v.fill(1.f);
    return v[0] + v[1];
}
