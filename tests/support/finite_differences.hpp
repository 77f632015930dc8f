#pragma once
// Gradients by central differences in double, for the backward tests: the function reads x,
// which these perturb one element at a time.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

namespace t2_test {

// dL/dx for a scalar loss(), step ±h.
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

// The gradient of L = Σ_j g_j f_j(x) for a vector-valued double forward f(), with, per
// element i of x:
//   value      D_i(h) = Σ_j g_j (f_j(x + h·e_i) − f_j(x − h·e_i)) / 2h, each output differenced
//              on its own (outputs that x_i does not reach cancel exactly, and no long double
//              sum of g ⊙ f is differenced);
//   magnitude  Σ_j |g_j (f_j⁺ − f_j⁻)| / 2h = Σ_j |g_j ∂f_j/∂x_i|, the Σ|terms| of the
//              Jacobian-vector product a one-summation backward forms;
//   error      a bound on |D_i(h) − ∂L/∂x_i|. Rounding: each f_j^± is taken within
//              c·2⁻⁵³·max|f^±| of its exact value (c = double_chain, the longest chain of
//              roundings of the double forward; the largest output that x_i reaches as the
//              scale, which covers cancellation within one output), so D_i(h) is within
//              r(h) = c·2⁻⁵³·Σ_j|g_j|·max|f^±| / h over the outputs that changed.
//              Truncation: D(h) = L' + h²L'''/6 + O(h⁴), so D(h) − D(2h) = −h²L'''/2 and
//              |trunc(h)| ≤ (|D(h) − D(2h)| + r(h) + r(2h)) / 3, measured (two more forward
//              calls per element) rather than assumed from a bound on L'''.
struct fd_gradient {
    std::vector<double> value, magnitude, error;
};

template <class F>
fd_gradient weighted_gradient(std::vector<double>& x, std::span<const double> g, F&& f, std::size_t double_chain,
                              double step = 1e-6) {
    fd_gradient out{std::vector<double>(x.size()), std::vector<double>(x.size()), std::vector<double>(x.size())};
    const double rel = double(double_chain) * 0x1p-53;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double xi = x[i];
        const auto at = [&](double dx) {
            x[i] = xi + dx;
            auto y = f();
            x[i] = xi;
            return y;
        };
        const auto up = at(step), down = at(-step), up2 = at(2 * step), down2 = at(-2 * step);
        double d1 = 0, d2 = 0, magnitude = 0, weight = 0, scale = 0;
        for (std::size_t j = 0; j < g.size(); ++j) {
            if (up[j] == down[j] && up2[j] == down2[j] && up[j] == up2[j])
                continue; // not reached by x_i: the same operations, the same result
            d1 += g[j] * (up[j] - down[j]);
            d2 += g[j] * (up2[j] - down2[j]);
            magnitude += std::abs(g[j] * (up[j] - down[j]));
            weight += std::abs(g[j]);
            scale = std::max({scale, std::abs(up[j]), std::abs(down[j]), std::abs(up2[j]), std::abs(down2[j])});
        }
        const double value = d1 / (2 * step), value2 = d2 / (4 * step);
        const double rounding = rel * weight * scale / step; // r(h); r(2h) is half of it
        out.value[i] = value;
        out.magnitude[i] = magnitude / (2 * step);
        out.error[i] = rounding + (std::abs(value - value2) + 1.5 * rounding) / 3;
    }
    return out;
}

// The same for a scalar loss(): g = 1 on its single output.
template <class Loss>
fd_gradient weighted_gradient(std::vector<double>& x, Loss&& loss, std::size_t double_chain, double step = 1e-6) {
    const double one = 1;
    return weighted_gradient(
        x, std::span<const double>(&one, 1), [&] { return std::vector<double>{loss()}; }, double_chain, step);
}

} // namespace t2_test
