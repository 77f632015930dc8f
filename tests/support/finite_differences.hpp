#pragma once
// dL/dx by central differences in double, for the backward tests: loss() reads x, which
// this perturbs one element at a time by ±step.
#include <cstddef>
#include <vector>

namespace t2_test {

template <class Loss>
std::vector<double> numeric_gradient(std::vector<double>& x, Loss&& loss, double step = 1e-6) {
    std::vector<double> grad(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double xi = x[i];
        x[i] = xi + step;
        const double up = loss();
        x[i] = xi - step;
        const double down = loss();
        x[i] = xi;
        grad[i] = (up - down) / (2 * step);
    }
    return grad;
}

} // namespace t2_test
