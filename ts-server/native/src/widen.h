// Gradients that arrive as bfloat16 or IEEE half, widened to float32 exactly (widen.cc).
#pragma once
#include <cstddef>
#include <cstdint>

namespace mur {
/** n little-endian bfloat16 values at `in` (any alignment) as float32 bit patterns. */
void WidenBf16(const uint8_t* in, uint32_t* out, size_t n);
/** n little-endian IEEE binary16 values at `in` (any alignment) as float32 bit patterns. */
void WidenF16(const uint8_t* in, uint32_t* out, size_t n);
}  // namespace mur
