// Gradients from the wire in bfloat16 or IEEE half, widened to float32: both
// are exact (every bfloat16 is the upper half of a float32; every half is a
// float32 value). Plain loops the compiler vectorises (their measured cost is
// in docs/data-path.md).
#include "widen.h"

namespace mur {
namespace {

/** One IEEE half (binary16) as the float32 of the same value, bit for bit: every half is exact in float32. */
uint32_t HalfToFloatBits(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return sign | 0x7f800000u | (mant << 13);       // infinity, NaN (payload kept)
  if (exp != 0) return sign | ((exp + 112u) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  if (mant == 0) return sign;                                       // signed zero
  // Subnormal: mant * 2^-24. Shift until the implicit bit (bit 10) appears;
  // k shifts make it 1.f * 2^(-14-k), a float32 exponent field of 113 - k.
  uint32_t k = 0;
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    ++k;
  }
  return sign | ((113u - k) << 23) | ((mant & 0x3ffu) << 13);
}

}  // namespace

void WidenBf16(const uint8_t* in, uint32_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i)
    out[i] = (static_cast<uint32_t>(in[2 * i]) | static_cast<uint32_t>(in[2 * i + 1]) << 8) << 16;
}

void WidenF16(const uint8_t* in, uint32_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i)
    out[i] = HalfToFloatBits(static_cast<uint32_t>(in[2 * i]) | static_cast<uint32_t>(in[2 * i + 1]) << 8);
}

}  // namespace mur
