// The rule kernels' exp and tanh over arrays (transcendental.cc), for tests.
#pragma once
#include <cstddef>

namespace mur {
void ExpArray(const float* x, float* out, size_t n);
void TanhArray(const float* x, float* out, size_t n);
}  // namespace mur
