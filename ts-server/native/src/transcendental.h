// The rule kernels' exp and tanh over arrays (transcendental.cc), for tests.
#pragma once
#include <cstddef>

namespace mur {
void ExpArray(const float* x, float* out, size_t n);
void ExpBoundedArray(const float* x, float* out, size_t n);  // |x| <= 86 only
void TanhArray(const float* x, float* out, size_t n);
}  // namespace mur
