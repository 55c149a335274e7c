// The limit kernel (limit.cc): Adam's memory traffic with no optimizer maths.
#pragma once
#include <cstddef>

namespace mur {
/** m += g; v += g; p -= g over n elements, on the pool like a fused step. */
void Limit(float* p, const float* g, float* m, float* v, size_t n);
}  // namespace mur
